"""`sati promote`, `sati evaluate`, `sati predict` against a real `mlflow server` on 127.0.0.1.

Searches run on a copy of the dataset whose test split is deleted: if `search` or `promote` read
the test split they would fail. Only `evaluate` gets the full file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sati.cli import main
from sati.data.h5format import content_checksum, read_info, read_split
from sati.predictor import arrays_to_frame, seven_class
from sati.selection import pessimistic_score
from sati.testing.pipelines import write_search_pipeline
from sati.testing.processes import loopback_env, run_sati
from sati.testing.servers import MlflowServer

pytestmark = pytest.mark.slow
MODEL = "sati-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow-registry"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sealed(tmp_path_factory, synth_path) -> Path:
    """The dataset without its test split (a two-split file with its own checksum)."""
    path = tmp_path_factory.mktemp("sealed") / "sealed.h5"
    shutil.copy(synth_path, path)
    with h5py.File(path, "a") as f:
        del f["test"]
        # the file's checksum is over the splits it holds (promotion recomputes it)
        f.attrs["checksum"] = content_checksum({s: read_split(synth_path, s) for s in ("train", "valid")})
    return path


def _start_search(root: Path, name: str, data: Path, encoder: Path, uri: str, space: dict, **sections):
    pipeline = write_search_pipeline(
        root / f"{name}.yaml",
        data,
        encoder,
        uri,
        root / name,
        space,
        tracking={"uri": uri, "experiment": name},
        **sections,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "sati.cli", "search", str(pipeline)],
        cwd=root,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=loopback_env(),
    )


@pytest.fixture(scope="module")
def searches(tmp_path_factory, server, sealed, tiny_encoder) -> dict[str, str]:
    """Three searches at once, each in its own experiment: good (3 trials, 3 epochs), weak (one step
    at a tiny learning rate), failing (its one trial raises)."""
    root = tmp_path_factory.mktemp("searches")
    procs = {
        "good": _start_search(
            root,
            "exp-good",
            sealed,
            tiny_encoder,
            server.uri,
            {"train.lr": {"loguniform": [1.5e-3, 3.0e-3]}},
            search={"num_samples": 3, "max_concurrent": 2, "scheduler": "fifo"},
        ),
        "weak": _start_search(
            root,
            "exp-weak",
            sealed,
            tiny_encoder,
            server.uri,
            {"train.lr": {"choice": [1.0e-6]}},
            search={"num_samples": 1, "scheduler": "fifo"},
            train={"epochs": 1, "max_steps_per_epoch": 1},
        ),
        "failing": _start_search(
            root,
            "exp-failing",
            sealed,
            tiny_encoder,
            server.uri,
            {"model.audio_heads": {"choice": [4]}},  # 4 does not divide the 74-d audio
            search={"num_samples": 1, "scheduler": "fifo"},
            train={"epochs": 1},
        ),
    }
    parents = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == (1 if name == "failing" else 0), stderr[-3000:]
        parents[name] = (
            next(line for line in stdout.splitlines() if line.startswith("MLflow parent run:")).split(":")[1].strip()
        )
    return parents


def _cli(args: list[str], uri: str, cwd: Path):
    out = run_sati([*args, "--tracking-uri", uri], cwd=cwd)
    return out.returncode, out.stdout + out.stderr


def _best_trial(client: MlflowClient, parent: str) -> tuple[str, float]:
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent}' and tags.`sati.role` = 'trial' and attributes.status = 'FINISHED'",
    )
    best = min(runs, key=lambda r: r.data.metrics["best/valid/mae"])
    return best.info.run_id, best.data.metrics["best/valid/mae"]


def _versions(client: MlflowClient, name: str) -> list[str]:
    return sorted(v.version for v in client.search_model_versions(f"name = '{name}'"))


def test_promote_gate_rollback_evaluate_predict(tmp_path, server, searches, sealed, synth_path):
    client = MlflowClient(server.uri)
    good_trial, good_value = _best_trial(client, searches["good"])
    _weak_trial, weak_value = _best_trial(client, searches["weak"])
    assert good_value < weak_value, "precondition: the good search must beat the weak one"

    # 1. the first promotion (by experiment name) becomes champion
    rc, out = _cli(["promote", "exp-weak", "--model-name", MODEL], server.uri, tmp_path)
    assert rc == 0, out[-3000:]
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"

    # 2. a better one (by search run id) takes over; the old champion becomes previous-champion
    rc, out = _cli(["promote", searches["good"], "--model-name", MODEL], server.uri, tmp_path)
    assert rc == 0, out[-3000:]
    v2 = client.get_model_version_by_alias(MODEL, "champion")
    assert v2.version == "2" and client.get_model_version_by_alias(MODEL, "previous-champion").version == "1"
    tags = v2.tags
    assert tags["sati.search_run_id"] == searches["good"] and tags["sati.trial_run_id"] == good_trial
    assert tags["sati.valid_metric"] == "valid/mae" and float(tags["sati.valid_value"]) == pytest.approx(good_value)
    assert tags["sati.data_checksum"] == read_info(sealed).checksum
    assert tags["sati.git_commit"] == client.get_run(searches["good"]).data.tags["sati.git_commit"]
    assert tags["sati.check"].startswith("reproduced valid/mae")
    assert "beats champion v1" in tags["sati.gate"]

    # the champion loads with plain MLflow, has a signature and an input example, and predicts a DataFrame
    mlflow.set_tracking_uri(server.uri)
    mlflow.set_registry_uri(server.uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert {"text", "audio", "video"} <= set(model.metadata.signature.inputs.input_names())
    assert model.metadata.saved_input_example_info is not None
    valid = read_split(sealed, "valid")
    frame = model.predict(arrays_to_frame(valid, limit=5))
    assert list(frame.columns) == ["id", "prediction", "class7", "sentiment"] and len(frame) == 5
    assert (frame["class7"] == seven_class(frame["prediction"].to_numpy())).all()

    # 3. a worse promotion becomes challenger and says why; champion stays. (The weak trial is
    #    version 1 already: it is gated again, not registered twice.)
    rc, out = _cli(["promote", searches["weak"], "--model-name", MODEL], server.uri, tmp_path)
    assert rc == 0, out[-3000:]
    assert "'challenger'" in out and "does not beat champion v2" in out
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "1"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "2"
    assert _versions(client, MODEL) == ["1", "2"]

    # 4. rollback restores the previous champion
    rc, out = _cli(["promote", "--model-name", MODEL, "--rollback"], server.uri, tmp_path)
    assert rc == 0, out[-3000:]
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert "sati.rolled_back" in client.get_model_version(MODEL, "2").tags
    assert "previous-champion" not in client.get_registered_model(MODEL).aliases

    # 5. predict: one row per sample of every split, scores equal to the pyfunc model's
    csv = tmp_path / "pred.csv"
    rc, out = _cli(["predict", f"models:/{MODEL}/2", "--data", str(sealed), "--out", str(csv)], server.uri, tmp_path)
    assert rc == 0, out[-3000:]
    table = pd.read_csv(csv)
    assert list(table.columns) == ["id", "split", "prediction", "class7", "sentiment"]
    assert len(table) == len(read_split(sealed, "train")) + len(valid) and set(table["split"]) == {"train", "valid"}
    first = table[table["split"] == "valid"].head(5)
    np.testing.assert_allclose(first["prediction"], frame["prediction"], atol=1e-5)
    assert (table["class7"] == seven_class(table["prediction"].to_numpy())).all()


@pytest.fixture(scope="module")
def evaluated_model(tmp_path_factory, server, searches) -> str:
    """The good search's best trial registered as its own model (tests in any order)."""
    rc, out = _cli(["promote", searches["good"], "--model-name", "sati-eval"], server.uri, tmp_path_factory.mktemp("p"))
    assert rc == 0, out[-3000:]
    return "models:/sati-eval/1"


def test_test_split_is_read_only_by_evaluate(tmp_path, server, evaluated_model, sealed, synth_path):
    client = MlflowClient(server.uri)
    # searches and promotions ran on a file without a test split; evaluate needs one
    rc, out = _cli(["evaluate", evaluated_model, "--data", str(sealed), "--no-log"], server.uri, tmp_path)
    assert rc == 2 and f"{sealed}: split 'test' missing" in out
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        assert not [k for k in run.data.metrics if k.startswith("test")], run.info.run_name

    out_dir = tmp_path / "eval"
    args = ["evaluate", evaluated_model, "--data", str(synth_path), "--split", "test", "--noise", "0.5"]
    rc, out = _cli([*args, "--drop", "audio", "--out-dir", str(out_dir)], server.uri, tmp_path)
    assert rc == 0, out[-3000:]
    md = (out_dir / "table.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in md[2:]] == ["clean", "noise σ=0.5", "drop audio"]
    assert "Acc-2 has0" in md[0] and "F1 non0" in md[0] and "Acc-5" in md[0]
    tex = (out_dir / "table.tex").read_text()
    assert r"\begin{tabular}" in tex and r"noise $\sigma$=0.5" in tex and "drop audio" in tex
    run_id = client.get_model_version("sati-eval", "1").tags["sati.evaluation.test"]
    run = client.get_run(run_id)
    metrics = run.data.metrics
    assert {"test/mae", "test/acc7", "test/noise0.5/mae", "test/drop_audio/corr"} <= set(metrics)
    assert run.data.tags["sati.model_version"] == "1" and run.data.tags["sati.split"] == "test"
    assert metrics["test/noise0.5/mae"] != metrics["test/mae"]  # the noise reached the model
    assert {"table.md", "table.tex"} <= {a.path for a in client.list_artifacts(run_id)}
    # readable in the registry: the version's run is the trial, the evaluation nests under it, the
    # description links the trial, the search and the evaluation, the logged model carries the metrics
    version = client.get_model_version("sati-eval", "1")
    assert run.data.tags["mlflow.parentRunId"] == version.run_id
    trial = client.get_run(version.run_id)
    assert trial.data.tags["sati.role"] == "trial"
    exp = trial.info.experiment_id
    for linked in (version.run_id, version.tags["sati.search_run_id"], run_id):
        assert f"(#/experiments/{exp}/runs/{linked}?workflowType=machine_learning)" in version.description
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    logged = {m.key for m in model.metrics}
    assert {"valid/mae", "test/mae", "test/noise0.5/mae"} <= logged


def test_a_changed_code_artifact_is_refused_before_it_is_loaded(tmp_path, server, evaluated_model, sealed):
    client = MlflowClient(server.uri)
    version = client.get_model_version("sati-eval", "1")
    assert len(version.tags["sati.manifest_sha256"]) == 64
    model_id = version.model_id or version.source.rsplit("/", 1)[-1]  # models:/m-<id>
    [target] = [p for p in (server.root / "artifacts").rglob("code/sati/predictor.py") if model_id in p.parts]
    original = target.read_bytes()
    marker = tmp_path / "ran"
    target.write_bytes(original + f"\nopen({str(marker)!r}, 'w').close()\n".encode())  # code that would run
    try:
        for args in (
            ["evaluate", evaluated_model, "--data", str(sealed), "--split", "valid", "--no-log"],
            ["predict", evaluated_model, "--data", str(sealed), "--out", str(tmp_path / "p.csv")],
        ):
            rc, out = _cli(args, server.uri, tmp_path)
            assert rc == 2, out[-3000:]
            assert f"{evaluated_model} (sati-eval v1): code/sati/predictor.py changed after registration" in out
        assert not marker.exists() and not (tmp_path / "p.csv").exists()  # nothing of it ran, nothing written
    finally:
        target.write_bytes(original)
    rc, out = _cli(["evaluate", evaluated_model, "--data", str(sealed), "--split", "valid", "--no-log"],
                   server.uri, tmp_path)  # fmt: skip
    assert rc == 0, out[-3000:]


def test_confirmation_reseeds_top_k_and_picks_by_mean_minus_std(tmp_path, server, searches):
    client = MlflowClient(server.uri)
    rc, out = _cli(
        ["promote", searches["good"], "--model-name", "sati-confirmed", "--top-k", "2", "--seeds", "2"],
        server.uri,
        tmp_path,
    )
    assert rc == 0, out[-3000:]
    exp = client.get_run(searches["good"]).info.experiment_id
    confirm = client.search_runs(
        [exp], f"tags.`sati.role` = 'confirm' and tags.`mlflow.parentRunId` = '{searches['good']}'"
    )
    assert len(confirm) == 1 and confirm[0].info.status == "FINISHED"
    trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{confirm[0].info.run_id}'")
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    ranked = sorted(
        client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{searches['good']}' and tags.`sati.role` = 'trial'"),
        key=lambda r: r.data.metrics["best/valid/mae"],
    )
    top2 = {r.info.run_id for r in ranked[:2]}
    assert {r.data.tags["sati.candidate_run_id"] for r in trials} == top2
    seeds = {r.data.tags["sati.seed"] for r in trials}
    assert len(seeds) == 2 and "7" not in seeds  # fresh seeds, not the search's
    scores = {}
    for cand in top2:
        values = [r.data.metrics["best/valid/mae"] for r in trials if r.data.tags["sati.candidate_run_id"] == cand]
        scores[cand] = (pessimistic_score(values, "min"), values)
    chosen = min(scores, key=lambda c: scores[c][0][2])  # mean + std for a minimized metric
    (mean, std, _), values = scores[chosen]
    version = client.get_model_version_by_alias("sati-confirmed", "champion")
    assert version.tags["sati.source_trial_run_id"] == chosen
    assert float(version.tags["sati.valid_mean"]) == pytest.approx(mean, rel=1e-4)
    assert float(version.tags["sati.valid_std"]) == pytest.approx(std, rel=1e-4, abs=1e-6)
    assert float(version.tags["sati.valid_value"]) == pytest.approx(min(values))  # its best seed
    assert version.tags["sati.confirm_run_id"] == confirm[0].info.run_id


def test_errors_name_the_problem_and_leave_the_registry_alone(tmp_path, server, searches, sealed, capsys):
    client = MlflowClient(server.uri)
    before = _versions(client, MODEL) if client.search_registered_models(f"name = '{MODEL}'") else []
    cases = [
        (["promote", "0" * 32, "--model-name", MODEL], "no MLflow run '00000000000000000000000000000000'"),
        (["promote", "no-such-experiment", "--model-name", MODEL], "neither an MLflow run id nor an experiment name"),
        (["promote", searches["failing"], "--model-name", MODEL], "no finished trial with a finite valid/mae"),
        (["promote", "--model-name", "no-such-model", "--rollback"], "no registered model named 'no-such-model'"),
        (["evaluate", "models:/no-such-model@champion", "--no-log"], "no-such-model"),
    ]
    for args, message in cases:
        assert main([*args, "--tracking-uri", server.uri]) == 2, args
        assert message in capsys.readouterr().err, args

    # a data file edited after the search: its recomputed checksum no longer matches
    edited = tmp_path / "edited.h5"
    shutil.copy(sealed, edited)
    with h5py.File(edited, "a") as f:
        f["valid/labels"][...] = -f["valid/labels"][()]
    promote_edited = ["promote", searches["good"], "--model-name", "sati-fresh", "--data", str(edited)]
    assert main([*promote_edited, "--tracking-uri", server.uri]) == 2
    err = capsys.readouterr().err
    assert f"{edited}: its contents hash to" in err and "it was changed after it was written" in err

    # a trial whose checkpoint is gone: from MLflow and from the search's storage (put back afterwards:
    # the other tests of this module promote the same search)
    weak_trial, _ = _best_trial(client, searches["weak"])
    pointer = Path(client.get_run(weak_trial).data.tags["sati.checkpoint_uri"])
    gone = [p for p in (server.root / "artifacts").rglob("best.pt") if weak_trial in p.parts] + [pointer]
    assert len(gone) == 2, gone
    aside = tmp_path / "aside"
    for i, path in enumerate(gone):
        (aside / str(i)).mkdir(parents=True)
        shutil.copy2(path, aside / str(i) / path.name)
    try:
        gone[0].unlink()
        # without its MLflow artifact, the checkpoint is read from the search's storage (a stopped trial's case)
        assert main(["promote", searches["weak"], "--model-name", "sati-pointer", "--tracking-uri", server.uri]) == 0
        assert "sati-pointer v1 is now 'champion'" in capsys.readouterr().out
        pointer.unlink()
        assert main(["promote", searches["weak"], "--model-name", "sati-fresh", "--tracking-uri", server.uri]) == 2
        err = capsys.readouterr().err
        assert f"MLflow run {weak_trial}: no checkpoint artifact 'checkpoint/best.pt', and its Tune checkpoint" in err
        assert str(pointer) in err
    finally:
        for i, path in enumerate(gone):
            shutil.copy2(aside / str(i) / path.name, path)
    after = _versions(client, MODEL) if client.search_registered_models(f"name = '{MODEL}'") else []
    assert after == before
    assert not client.search_registered_models("name = 'sati-fresh'")  # created, then removed again


def test_the_reload_check_refuses_a_model_that_does_not_reproduce_its_metrics(server, evaluated_model, sealed):
    from sati.promote import PromotionError, _reproduce
    from sati.tracking.store import TrackingStore

    store = TrackingStore(server.uri)
    valid = read_split(sealed, "valid")
    tags = MlflowClient(server.uri).get_model_version("sati-eval", "1").tags
    logged = {k[len("sati.") :]: float(v) for k, v in tags.items() if k.startswith("sati.valid/")}
    assert "reproduced valid/mae" in _reproduce(store, evaluated_model, valid, logged, "valid/mae", 1e-3, "fp32")
    flipped = replace(valid, labels=-valid.labels)  # other labels: the same model scores differently
    with pytest.raises(PromotionError, match="does not reproduce its validation metrics within 0.001") as err:
        _reproduce(store, evaluated_model, flipped, logged, "valid/mae", 1e-3, "fp32")
    assert "valid/mae: logged" in str(err.value) and "checked in fp32, as trained" in str(err.value)
