"""`sati reproduce`: its seeds, the text-only variant, bad input, and (slow) a 2-variant × 2-seed
reproduction on real Ray and MLflow whose tables are checked against its child runs and their stored
test predictions, its resume, then an exact re-run of one of those trials and the refusal of a changed
data file. The statistics themselves are in tests/test_statistics.py."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from sati.batch import Batch
from sati.cli import main
from sati.config import AblationConfig, LossConfig, ModelConfig
from sati.data.h5format import content_checksum, list_splits, read_info, read_split, split_checksum
from sati.losses import total_loss
from sati.model import SATI
from sati.reproduce import reproduction_seeds
from sati.testing.pipelines import small_pipeline
from sati.testing.processes import run_sati

# --------------------------------------------------------------------------------------------
# Seeds


def test_seeds_leave_out_the_sources_own_seed():
    seeds = reproduction_seeds(7, 5)
    assert len(set(seeds)) == 5 and 7 not in seeds
    assert reproduction_seeds(7, 3) == seeds[:3]  # more seeds extend the list, the first stay
    assert reproduction_seeds(336, 1) != [336]


# --------------------------------------------------------------------------------------------
# The text-only variant


def _batch(b: int = 3, t: int = 6) -> Batch:
    """Audio/video steps within the text (av_mask ⊆ text_mask), as in a text-only or aligned dataset."""
    text_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3]).bool()
    av_mask = torch.tensor([[1] * 5 + [0], [1] * 2 + [0] * 4, [1] + [0] * 5]).bool()
    gen = torch.Generator().manual_seed(0)
    return Batch(
        audio=torch.randn(b, t, 74, generator=gen) * av_mask[..., None],
        video=torch.randn(b, t, 47, generator=gen) * av_mask[..., None],
        av_mask=av_mask,
        text_mask=text_mask,
        mask=text_mask | av_mask,
        labels=torch.tensor([1.5, -0.5, 2.0]),
        ids=["a", "b", "c"],
        present=torch.ones(b, 3, dtype=torch.bool),
        text_ids=torch.randint(5, 300, (b, t), generator=gen),
    )


def _without(batch: Batch, *modalities: str) -> Batch:
    """``batch`` with ``modalities`` (audio, video) absent from every sample, as a file without them stores them:
    zeros, marked absent."""
    present = batch.present.clone()
    zeroed = {}
    for m in modalities:
        present[:, ("text", "audio", "video").index(m)] = False
        zeroed[m] = torch.zeros_like(getattr(batch, m))
    return Batch(**{**batch.__dict__, **zeroed, "present": present})


def test_text_only_is_the_full_model_with_audio_and_video_shut_out(tiny_encoder):
    cfg = ModelConfig(
        text_encoder=str(tiny_encoder), hidden_size=32, encoder_feedforward=64, fusion_feedforward=64, fbp_hidden=8
    )
    torch.manual_seed(0)
    text_only = SATI(cfg, AblationConfig(text_only=True), 74, 47).eval()
    batch = _batch()
    out = text_only(batch)
    assert out.prediction.shape == (3,) and torch.isfinite(out.prediction).all()
    assert out.gates.shape == (2, 3, 6) and not out.gates.any()  # both streams shut

    # audio and video are not read at all
    loud = Batch(**{**batch.__dict__, "audio": 100 * batch.audio + 1, "video": -batch.video})
    torch.testing.assert_close(text_only(loud).prediction, out.prediction, rtol=0, atol=0)

    # the same weights in the full model, with its (linear, bias-free) gate at 0, predict the same
    full = SATI(cfg, AblationConfig(), 74, 47).eval()
    full.load_state_dict(text_only.state_dict())
    with torch.no_grad():
        full.gate_head.linear.weight.zero_()
    torch.testing.assert_close(full(batch).prediction, out.prediction, rtol=1e-5, atol=1e-6)

    # only the task loss trains it, and no gradient reaches the audio/video path
    text_only.train()
    losses = total_loss(text_only(batch), batch.labels, LossConfig(), AblationConfig(text_only=True))
    assert losses.total.item() == losses.task.item() > 0
    assert losses.consistency.item() == losses.temporal.item() == losses.domain.item() == 0
    losses.total.backward()
    assert text_only.project[0][0].weight.grad.abs().sum() > 0
    for module in (text_only.audio_encoder, text_only.project[1], text_only.cross_audio, text_only.discriminator):
        assert all(p.grad is None for p in module.parameters())


def test_absent_audio_and_video_never_dilute_the_text(tiny_encoder):
    """A dataset without audio and video marks them absent (and stores zeros). Their streams are shut (the full
    model then computes the text-only function), and no loss term compares the text with them (text could
    only lower those terms by collapsing its codes onto constant ones); ``model.absent_modalities: fuse``
    treats the zeros as real."""
    cfg = ModelConfig(
        text_encoder=str(tiny_encoder), hidden_size=32, encoder_feedforward=64, fusion_feedforward=64, fbp_hidden=8
    )
    torch.manual_seed(0)
    model = SATI(cfg, AblationConfig(), 74, 47).eval()
    fuse = SATI(dataclasses.replace(cfg, absent_modalities="fuse"), AblationConfig(), 74, 47).eval()
    text_only = SATI(cfg, AblationConfig(text_only=True), 74, 47).eval()
    fuse.load_state_dict(model.state_dict())
    text_only.load_state_dict(model.state_dict())
    batch = _batch()
    no_video, text_alone = _without(batch, "video"), _without(batch, "audio", "video")
    loss, ablation = LossConfig(), AblationConfig()

    out = model(text_alone)
    assert out.present.tolist() == [[True, False, False]] * 3 and not out.gates.any()
    torch.testing.assert_close(out.prediction, text_only(text_alone).prediction, rtol=1e-5, atol=1e-6)
    alone = total_loss(out, batch.labels, loss, ablation)
    assert alone.total.item() == alone.task.item()
    assert alone.consistency.item() == alone.domain.item() == alone.temporal.item() == 0
    treated_as_real = fuse(text_alone)
    assert treated_as_real.present is None and treated_as_real.gates.any()
    assert not torch.allclose(treated_as_real.prediction, out.prediction)
    compared = total_loss(treated_as_real, batch.labels, loss, ablation)
    assert compared.consistency.item() > 0 and compared.domain.item() > 0

    # video absent: its stream is shut, text and audio are still compared
    out = model(no_video)
    assert out.gates[0].any() and not out.gates[1].any()
    two = total_loss(out, batch.labels, loss, ablation)
    assert 0 < two.consistency.item() != total_loss(fuse(no_video), batch.labels, loss, ablation).consistency.item()
    assert two.domain.item() > 0 and two.temporal.item() == 0

    # everything present: nothing changes
    out, real = model(batch), fuse(batch)
    torch.testing.assert_close(out.prediction, real.prediction, rtol=0, atol=0)
    file_losses = total_loss(out, batch.labels, loss, ablation).as_floats()
    for name, value in total_loss(real, batch.labels, loss, ablation).as_floats().items():
        assert file_losses[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


# --------------------------------------------------------------------------------------------
# Bad input: refused before anything starts


@pytest.fixture
def refusals(tmp_path, synth_path, tiny_encoder):
    """A pipeline on a dataset without a test split, one on the full dataset, and where they would log."""
    no_test = tmp_path / "no_test.h5"
    shutil.copy(synth_path, no_test)
    with h5py.File(no_test, "a") as f:
        del f["test"]
        f.attrs["checksum"] = content_checksum({s: read_split(synth_path, s) for s in ("train", "valid")})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipelines = {}
    for name, data in (("ok", synth_path), ("no_test", no_test)):
        raw = small_pipeline(
            data,
            tiny_encoder,
            search={"storage_path": str(tmp_path / "storage")},
            tracking={"uri": uri, "experiment": "refusals"},
        )
        pipelines[name] = tmp_path / f"{name}.yaml"
        pipelines[name].write_text(yaml.safe_dump(raw))
    return pipelines, uri, tmp_path


@pytest.mark.parametrize(
    "args, named",
    [
        (["{ok}", "--variants", "full,no_cmd"], "'no_cmd'"),
        (["{ok}", "--seeds", "0"], "--seeds 0"),
        (["{ok}", "--noise", "-0.5"], "--noise -0.5"),
        (["models:/no-such-model@champion", "--tracking-uri", "{uri}"], "no-such-model"),
        (["0123456789abcdef0123456789abcdef", "--tracking-uri", "{uri}"], "0123456789abcdef0123456789abcdef"),
        (["{no_test}"], "no test split"),
    ],
)
def test_bad_input_is_refused_before_any_trial_starts(refusals, capsys, args, named):
    pipelines, uri, root = refusals
    args = [a.format(uri=uri, **pipelines) for a in args]
    assert main(["reproduce", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("20")]  # not MLflow's log
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    if "no test split" in named:
        assert str(root / "no_test.h5") in err[0]
    assert not (root / "storage").exists()
    if (root / "mlflow.db").exists():  # a store that was opened holds no run
        assert not MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])


# --------------------------------------------------------------------------------------------
# End to end (slow): real Ray, MLflow in SQLite


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory, synth_path, tiny_encoder):
    """`sati reproduce` of full and text_only × 2 seeds (1 epoch each) on its own copy of the data."""
    root = tmp_path_factory.mktemp("reproduce")
    data = root / "data.h5"
    shutil.copy(synth_path, data)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    raw = small_pipeline(
        data,
        tiny_encoder,
        name="rep",
        train={"epochs": 1},
        search={"storage_path": str(root / "storage"), "max_concurrent": 2, "max_failures": 0},
        tracking={"uri": uri, "experiment": "reproduce"},
    )
    (root / "p.yaml").write_text(yaml.safe_dump(raw))
    args = ["reproduce", "p.yaml", "--seeds", "2", "--variants", "text_only,full", "--out-dir", "tables"]
    out = run_sati(args, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("reproduce").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`sati.role` = 'reproduction'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {"root": root, "data": data, "uri": uri, "client": client, "parent": parent, "children": children}


def _row(markdown: str, label: str) -> list[str]:
    (line,) = [ln for ln in markdown.splitlines() if ln.startswith(f"| {label} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def _cell(values: list[float], scale: int) -> str:
    digits = 3 if scale == 1 else 2
    v = scale * np.array(values)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


@pytest.mark.slow
def test_reproduction_writes_three_tables_that_match_its_child_runs(reproduction):
    r = reproduction
    tables, parent = r["root"] / "tables", r["parent"]
    assert parent.info.status == "FINISHED"
    assert "Table I" in parent.data.tags["mlflow.note.content"]
    logged = {a.path for a in r["client"].list_artifacts(parent.info.run_id, "tables")}
    assert {"tables/table1.md", "tables/table2.tex", "tables/table3.md", "tables/differences.md"} <= logged
    assert {"tables/differences.tex", "tables/differences.csv", "tables/differences.json"} <= logged
    assert r["client"].list_artifacts(parent.info.run_id, "plots")[0].path == "plots/seeds.png"
    assert (tables / "seeds.png").stat().st_size > 0

    # one child run per variant × seed, the seeds shared by the variants (paired), none the pipeline's own
    by = {}
    for run in r["children"]:
        by.setdefault(run.data.tags["sati.variant"], {})[int(run.data.tags["sati.seed"])] = run.data.metrics
    assert set(by) == {"full", "text_only"} and set(by["full"]) == set(by["text_only"]) == set(reproduction_seeds(7, 2))
    assert len(r["children"]) == 4 and all(run.info.status == "FINISHED" for run in r["children"])

    # shapes: Table I full and text_only; II one row per variant; III every variant × 5 conditions
    md = {name: (tables / f"{name}.md").read_text() for name in ("table1", "table2", "table3", "differences")}
    for name, rows in (("table1", 2), ("table2", 2), ("table3", 10)):
        lines = [ln for ln in md[name].splitlines() if ln.startswith("|")]
        assert len(lines) == rows + 2 and all(ln.count("|") == 10 for ln in lines), md[name]
        assert (tables / f"{name}.tex").read_text().count(r"\\") == rows + 1
        assert "mean ± sample standard deviation over S = 2 seeds" in md[name]  # the footnote
    conditions = ("clean", "noise σ=0.5", "drop text", "drop audio", "drop video")
    assert [ln.split("|")[1].strip() for ln in md["table3"].splitlines()[2:] if ln.startswith("|")] == [
        f"{v}, {c}" for v in ("full", "text_only") for c in conditions
    ]

    # every cell is the mean ± std of the child runs' logged test metrics
    columns = (("mae", 1), ("corr", 1), ("acc2_has0", 100), ("acc2_non0", 100), ("f1_has0", 100))
    columns += (("f1_non0", 100), ("acc7", 100), ("acc5", 100))
    for variant, seeds in by.items():
        clean = [_cell([m[f"test/{k}"] for m in seeds.values()], s) for k, s in columns]
        noisy = [_cell([m[f"test/noise0.5/{k}"] for m in seeds.values()], s) for k, s in columns]
        assert [c.rstrip("*") for c in _row(md["table2"], variant)] == clean
        assert _row(md["table2"], variant) == _row(md["table1"], variant)
        assert _row(md["table3"], f"{variant}, noise σ=0.5") == noisy
    # text_only reads no audio or video: noise on them changes nothing
    assert all(m["test/noise0.5/mae"] == m["test/mae"] for m in by["text_only"].values())

    # the difference of MAE is the mean over seeds of text_only − full; the footnote names S, n, B, m, α
    delta = np.mean([by["text_only"][s]["test/mae"] - by["full"][s]["test/mae"] for s in by["full"]])
    assert _row(md["differences"], "text_only | MAE")[2] == f"{delta:+.3f}"
    summary = json.loads((tables / "differences.json").read_text())
    n = len(read_split(r["data"], "test"))
    assert summary["n"] == n and summary["resamples"] == 10_000 and summary["correction"] == "Holm–Bonferroni"
    assert len(summary["cells"]) == 8 and summary["family"] == sum(not c["note"] for c in summary["cells"])
    for needle in ("S = 2 seed-paired", f"(n = {n})", "B = 10,000", f"m = {summary['family']} cells", "α = 0.05"):
        assert needle in md["differences"], needle
    assert "familywise $\\alpha$ = 0.05" in (tables / "differences.tex").read_text()
    assert "Holm–Bonferroni" in (tables / "table2.tex").read_text() or not summary["family"]


@pytest.mark.slow
def test_each_run_stores_its_test_predictions_and_its_metrics_are_recomputed_from_them(reproduction):
    from sati.evaluation import Condition, perturb
    from sati.metrics import regression_metrics
    from sati.predictor import SATIPredictor
    from sati.reproduce import parse_request
    from sati.reproduce_report import TestSet, build_report
    from sati.tracking.reproductions import read_test_predictions
    from sati.tracking.searches import download_checkpoint
    from sati.tracking.store import TrackingStore

    r = reproduction
    store, test = TrackingStore.open(r["uri"]), read_split(r["data"], "test")
    conditions = parse_request("full,text_only", 2, [0.5]).conditions
    columns = {c: c.key or "clean" for c in conditions}
    results, predictions = {}, {}
    for run in r["children"]:
        variant, seed = run.data.tags["sati.variant"], int(run.data.tags["sati.seed"])
        frame = read_test_predictions(store, run.info.run_id)
        assert list(frame.columns) == ["id", "label", *columns.values()]
        assert frame["id"].tolist() == test.ids and np.array_equal(frame["label"], test.labels.astype(np.float64))
        by_cond = {c: frame[col].to_numpy() for c, col in columns.items()}
        metrics = {c: regression_metrics(p, test.labels, "test") for c, p in by_cond.items()}
        # every logged test metric, each condition, is the metric of the stored predictions (MLflow keeps
        # finite values only: an undefined one, e.g. Pearson r of the constant prediction without text, is absent)
        for cond, values in metrics.items():
            named = {k.replace("test/", f"test/{cond.key}/") if cond.key else k: v for k, v in values.items()}
            finite = {k: v for k, v in named.items() if math.isfinite(v)}
            assert {k: run.data.metrics[k] for k in finite} == finite, (variant, seed, cond)
            assert not (set(named) - set(finite)) & set(run.data.metrics), (variant, seed, cond)
        results.setdefault(variant, {})[seed] = metrics
        predictions.setdefault(variant, {})[seed] = by_cond

    # the noise row, recomputed independently: the checkpoint predicts on the noisy split here
    run = next(run for run in r["children"] if run.data.tags["sati.variant"] == "full")
    predictor = SATIPredictor(download_checkpoint(store, run.info.run_id, r["root"] / "ckpt"), device="cpu")
    noisy = predictor.predict_arrays(perturb(test, Condition(noise=0.5))).astype(np.float64)
    expected = regression_metrics(noisy, test.labels, "test/noise0.5")
    assert {k: run.data.metrics[k] for k in expected} == expected
    assert np.array_equal(read_test_predictions(store, run.info.run_id)["noise0.5"], noisy)
    assert expected["test/noise0.5/mae"] != run.data.metrics["test/mae"]  # the noise reached the model

    # the tables, recomputed from the stored predictions alone, are the ones written
    results, predictions = ({v: d[v] for v in ("full", "text_only")} for d in (results, predictions))
    report = build_report(
        results,
        predictions,
        test.labels,
        conditions,
        TestSet(f"{read_info(r['data']).name} test", len(test)),
        7,
        10_000,
    )
    for name in ("table1.md", "table2.tex", "table3.md", "differences.md", "differences.json"):
        assert report.texts[name] == (r["root"] / "tables" / name).read_text(), name


@pytest.mark.slow
def test_resuming_a_finished_reproduction_reads_the_stored_predictions(reproduction):
    r = reproduction
    before = {p.name: p.read_text() for p in (r["root"] / "tables").glob("*.md")}
    out = run_sati(["reproduce", "--resume", r["parent"].info.run_id, "--tracking-uri", r["uri"]], cwd=r["root"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "evaluating 4 checkpoint(s)" in out.stdout
    after = {p.name: p.read_text() for p in (r["root"] / "tables").glob("*.md")}
    assert after == before
    parent = r["client"].get_run(r["parent"].info.run_id)
    assert parent.info.status == "FINISHED"
    children = r["client"].search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 4  # nothing trained again


@pytest.mark.slow
def test_rerun_of_a_cpu_trial_is_exact_and_a_changed_data_file_is_refused(reproduction, capsys, tmp_path):
    r = reproduction
    client, uri = r["client"], r["uri"]
    first = str(reproduction_seeds(7, 2)[0])
    (original,) = [
        run for run in r["children"] if run.data.tags["sati.variant"] == "full" and run.data.tags["sati.seed"] == first
    ]
    run_id = original.info.run_id

    assert main(["reproduce", "--rerun", run_id, "--tracking-uri", uri]) == 0
    assert "compared by equality (CPU): exact" in capsys.readouterr().out
    (again,) = client.search_runs([original.info.experiment_id], f"tags.`sati.rerun_of` = '{run_id}'")
    assert again.data.tags["mlflow.parentRunId"] == run_id and again.data.tags["sati.role"] == "rerun"
    assert again.data.tags["sati.rerun_match"] == "exact"
    compared = [k for k in original.data.metrics if k.startswith(("train/", "valid/", "best/"))]
    assert "valid/mae" in compared and "train/loss" in compared
    for key in compared:  # every per-epoch value, as MLflow holds them
        first = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        second = [(m.step, m.value) for m in client.get_metric_history(again.info.run_id, key)]
        assert first == second, key

    # the same file with one label changed (and its checksum rewritten, as `sati data prepare` would)
    changed = tmp_path / "changed.h5"
    shutil.copy(r["data"], changed)
    with h5py.File(changed, "a") as f:
        f["train/labels"][0] = f["train/labels"][0] + 1.0
    with h5py.File(changed, "a") as f:
        splits = {s: read_split(changed, s, verify=False) for s in list_splits(changed)}
        f.attrs["checksum"] = content_checksum(splits)
        for name, split in splits.items():
            f[name].attrs["checksum"] = split_checksum(name, split)
    recorded, now = read_info(r["data"]).checksum, read_info(changed).checksum
    assert main(["reproduce", "--rerun", run_id, "--data", str(changed), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"error: data.path = {re.escape(str(changed))} has changed", err), err
    assert now in err and recorded in err
    assert len(client.search_runs([original.info.experiment_id], f"tags.`sati.rerun_of` = '{run_id}'")) == 1

    # --force trains on it and says so on the new run; a changed label changes training: exit 1, "differs"
    assert main(["reproduce", "--rerun", run_id, "--data", str(changed), "--force", "--tracking-uri", uri]) == 1
    assert "compared by equality (CPU): differs" in capsys.readouterr().out
    forced = client.search_runs(
        [original.info.experiment_id], f"tags.`sati.rerun_of` = '{run_id}'", order_by=["attributes.start_time DESC"]
    )[0]
    assert forced.data.tags["sati.rerun_forced.data_checksum"] == f"{recorded} → {now}"
    assert forced.data.tags["sati.rerun_match"] == "differs"


@pytest.mark.slow
def test_a_registered_model_or_a_trial_run_gives_its_trials_configuration(reproduction):
    from sati.promote import Selection, promote
    from sati.reproduce import resolve_source
    from sati.tracking.store import RunInfo, TrackingStore

    r = reproduction
    uri = r["uri"]
    runs = {(run.data.tags["sati.variant"], run.data.tags["sati.seed"]): run for run in r["children"]}
    first = reproduction_seeds(7, 2)[0]
    trial = runs[("full", str(first))]
    # registered as `sati promote` registers a trial (its files' manifest on the version)
    store = TrackingStore(uri)
    selection = Selection({r["parent"].info.run_id: RunInfo.of(r["parent"])}, "valid/mae", "min", "rep-model", [])
    chosen = (RunInfo.of(trial), trial.data.metrics["best/valid/mae"])
    assert promote(store, selection, chosen=chosen, console=lambda line: None).alias == "champion"

    cfg, store, what = resolve_source("models:/rep-model@champion", ["train.epochs=3"], uri)
    assert store.uri == uri == cfg.tracking.uri and trial.info.run_id in what
    assert cfg.seed == first and cfg.train.epochs == 3 and cfg.data.path == str(r["data"])
    assert first not in reproduction_seeds(cfg.seed, 2)  # a reproduction of it would not re-run its seed

    # a text_only trial's own configuration has the switch on; the variants set every switch themselves
    cfg, _, _ = resolve_source(runs[("text_only", str(first))].info.run_id, [], uri)
    assert cfg.ablation.text_only and cfg.seed == first
