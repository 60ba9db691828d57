"""`sati search` with a real local Ray, real Optuna and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sati.config import ConfigError, PipelineConfig, load_pipeline
from sati.data.h5format import verify_checksum
from sati.provenance import git_commit, versions
from sati.search.space import load_space
from sati.testing.pipelines import write_search_pipeline
from sati.testing.processes import run_sati
from sati.testing.searches import assert_resumed_cleanly, child_runs, crash_after_first_epoch, parent_run_id
from sati.testing.servers import MlflowServer
from tests.conftest import REPO

# ---------------------------------------------------------------------------------------------
# Spaces and pipelines (fast)


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_validates(path):
    space = load_space(path, PipelineConfig())
    assert space.keys


def test_paper_space_covers_the_paper_hyperparameters():
    keys = set(load_space(REPO / "search_spaces" / "sati_paper.yaml").keys)
    assert {
        "loss.consistency_weight",
        "loss.temporal_weight",
        "loss.domain_weight",
        "loss.margin",
        "loss.scale",
        "model.fbp_pool",
        "train.lr",
        "model.dropout",
    } <= keys
    text = (REPO / "search_spaces" / "sati_paper.yaml").read_text()
    beta = yaml.safe_load(text)["loss.temporal_weight"]
    assert beta["loguniform"][1] >= 100.0  # the JSD term is ~1e-4


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_name_a_valid_space(path):
    cfg = load_pipeline(path)
    if cfg.search.space:
        load_space(REPO / cfg.search.space, cfg)
        assert cfg.train.selection_metric.startswith("valid/")


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "loss.temporal_wieght: {loguniform: [0.1, 100.0]}\n",
            "unknown config key 'loss.temporal_wieght'; did you mean 'loss.temporal_weight'",
        ),
        (
            "loss.margin: {gaussian: [0.1, 0.5]}\n",
            "loss.margin: expected exactly one of uniform, loguniform, int, choice",
        ),
        ("model.dropout: {uniform: [0.1, 1.5]}\n", "model.dropout = 1.5: expected float >= 0.0 and < 1.0"),
        ("train.lr: {loguniform: [0.0, 0.1]}\n", "train.lr: loguniform needs low > 0"),
        ("train.lr: {uniform: [0.1, 0.01]}\n", "train.lr: uniform needs low < high"),
        (
            "loss.margin: {uniform: [0.1, 0.5], when: {ablation.adversarail: true}}\n",
            "unknown config key 'ablation.adversarail' in the 'when' of loss.margin; "
            "did you mean 'ablation.adversarial'",
        ),
        ("model.gate: {choice: [linear, soft]}\n", "model.gate = 'soft': expected one of"),
        ("model.fbp_pool: {int: [0, 8], log: true}\n", "model.fbp_pool: int with log needs low >= 1, got 0"),
        ("model.fbp_pool: {int: [1, 9], step: 0}\n", "model.fbp_pool: step = 0: expected a whole number > 0"),
        ("model.fbp_pool: {int: [1, 9], step: -2}\n", "model.fbp_pool: step = -2: expected a whole number > 0"),
        ("model.fbp_pool: {int: [1, 9], step: 2, log: true}\n", "model.fbp_pool: step and log cannot be combined"),
        ("model.fbp_pool: {int: [1, 8], step: 2}\n", "model.fbp_pool: step 2 does not divide high - low = 7"),
        ("model.fbp_pool: {int: [1.5, 8]}\n", "model.fbp_pool: int bounds must be whole numbers, got [1.5, 8]"),
        (
            "train.lr: {uniform: [0.001, 0.01], step: 0.001}\n",
            "train.lr: step applies to int ranges only, not to uniform",
        ),
        (
            "train.lr: {uniform: [0.001, 0.01], log: true}\n",
            "train.lr: log applies to int ranges only, not to uniform; use loguniform for a log scale",
        ),
        (
            "model.fbp_pool: {choice: [1, 2], step: 1}\n",
            "model.fbp_pool: step applies to int ranges only, not to choice",
        ),
        ("train.lr: {loguniform: [1.0e-5, .inf]}\n", "train.lr: bounds must be finite"),
    ],
)
def test_bad_spaces_name_file_key_and_expectation(tmp_path, text, fragment):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_conditions_sample_tau_and_s_only_with_the_angular_margin_loss():
    import optuna

    space = load_space(REPO / "search_spaces" / "sati_paper.yaml")
    on, off = PipelineConfig(), PipelineConfig().replace({"ablation.adversarial": False})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    with_margin = space.sample(study.ask(), on)
    without = space.sample(study.ask(), off)
    assert {"loss.margin", "loss.scale", "loss.domain_weight"} <= set(with_margin)
    assert not {"loss.margin", "loss.scale", "loss.domain_weight"} & set(without)
    assert 0.1 <= with_margin["loss.margin"] <= 0.5 and with_margin["loss.scale"] in (8.0, 16.0, 30.0, 48.0, 64.0)


@pytest.mark.parametrize(
    "space, sections, message",
    [
        ({"model.fbp_pool": {"int": [0, 8], "log": True}}, {}, "int with log needs low >= 1"),
        ({"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}, {"search": {"num_samples": 0}},
         "search.num_samples = 0: expected int >= 1"),
        ({"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
         {"train": {"selection_metric": "valid/acc2_non0", "selection_mode": "min"}},
         "train.selection_mode = 'min' contradicts train.selection_metric = 'valid/acc2_non0'"),
        ({"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}, {"train": {"selection_metric": "valid/mea"}},
         "train.selection_metric = 'valid/mea': not a metric the trainer reports"),
    ],
)  # fmt: skip
def test_bad_input_stops_the_search_before_anything_starts(
    tmp_path, synth_path, tiny_encoder, space, sections, message
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml", synth_path, tiny_encoder, uri, tmp_path / "ray", space, **sections
    )
    out = run_sati(["search", str(pipeline)], cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert str(tmp_path / "p") in errors[0]  # names the file
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()  # no run, no Ray


def test_unreachable_tracking_uri_fails_before_any_trial(tmp_path, synth_path, tiny_encoder):
    port_uri = "http://127.0.0.1:9"  # discard port: nothing listens
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml",
        synth_path,
        tiny_encoder,
        port_uri,
        tmp_path / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
    )
    out = run_sati(["search", str(pipeline)], cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert "tracking.uri = http://127.0.0.1:9: MLflow server not reachable" in out.stderr
    assert not (tmp_path / "ray").exists()


# ---------------------------------------------------------------------------------------------
# End to end (slow): real Ray, Optuna, MLflow server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def _all_artifacts(client, run_id, path=None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _all_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.slow
def test_search_logs_parent_and_trial_runs(tmp_path, synth_path, tiny_encoder, mlflow_server):
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml",
        synth_path,
        tiny_encoder,
        mlflow_server.uri,
        tmp_path / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}, "loss.temporal_weight": {"loguniform": [0.1, 100.0]}},
    )
    top = tmp_path / "top.yaml"  # composed of two files: the search records both
    top.write_text(f"extends: p.yaml\nsearch: {{study_storage: 'sqlite:///{tmp_path / 'optuna.db'}'}}\n")
    out = run_sati(["search", str(top)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "best trials (validation):" in out.stdout and "mlflow ui --backend-store-uri" in out.stdout
    client = MlflowClient(mlflow_server.uri)
    parent_id = parent_run_id(out.stdout)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sati.pipeline_files"] == f"{pipeline}, {top}"
    state = json.loads((Path(parent.data.tags["sati.search_dir"]) / "sati_search.json").read_text())
    assert state["pipeline_files"] == [str(pipeline), str(top)]
    assert state["pipeline"]["search"]["study_storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"  # merged
    assert parent.data.params["train.epochs"] == "3"
    # provenance: the data file's checksum recomputed from its contents, this checkout's commit, the libraries
    checksum, commit, libraries = verify_checksum(synth_path), git_commit(), versions()
    assert parent.data.tags["sati.data_checksum"] == checksum and parent.data.tags["sati.git_commit"] == commit
    assert {k: parent.data.tags.get(f"sati.version.{k}") for k in libraries} == libraries
    parent_files = _all_artifacts(client, parent_id)
    assert {
        "pipeline.yaml",
        "p_space.yaml",
        "trials.csv",
        "trials.md",
        "plots/optimization_history.png",
    } <= parent_files
    children = child_runs(client, parent_id)
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["sati.data_checksum"] == checksum and run.data.tags["sati.git_commit"] == commit
        record = json.loads(Path(client.download_artifacts(run.info.run_id, "rerun.json", str(tmp_path))).read_text())
        assert (record["data_checksum"], record["git_commit"], record["git_dirty"]) == (
            checksum,
            commit.removesuffix("-dirty"),
            commit.endswith("-dirty"),
        )
        assert record["versions"] == libraries
        assert run.data.params["train.epochs"] == "3" and "train.lr" in run.data.params  # fixed and sampled
        history = client.get_metric_history(run.info.run_id, "valid/mae")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        files = _all_artifacts(client, run.info.run_id)
        assert "learning_curve.png" in files
        # weights in MLflow only for trials that finished; every trial points at its Tune checkpoint
        finished = run.data.tags["sati.trial_status"] == "finished"
        assert ("checkpoint/best.pt" in files) == finished, (run.data.tags["sati.trial_status"], files)
        best = Path(run.data.tags["sati.checkpoint_uri"])
        assert best.name == "best.pt" and best.is_file() and not (best.parent / "last.pt").exists()
        # epoch is the step, not a metric; the trainer's flags are not metrics
        assert "epoch" not in run.data.metrics and not [k for k in run.data.metrics if k.startswith("trainer/")]
        # the test split is sealed: no test metric reaches MLflow
        assert not [k for k in run.data.metrics if k.startswith("test/")]
    assert max(len(client.get_metric_history(r.info.run_id, "valid/mae")) for r in children) == 3
    # a leaderboard a person can read: names by order and id, the best tagged, the parent described
    for run in children:
        assert re.fullmatch(r"t00[1-4]-[0-9a-f]{8}", run.info.run_name), run.info.run_name
        assert run.info.run_name.endswith(run.data.tags["sati.trial_id"])
    assert {r.info.run_name[:4] for r in children} == {"t001", "t002", "t003", "t004"}
    finite = [r for r in children if math.isfinite(r.data.metrics.get("best/valid/mae", math.nan))]
    best = min(finite, key=lambda r: r.data.metrics["best/valid/mae"])
    assert [r.info.run_id for r in children if r.data.tags.get("sati.best") == "true"] == [best.info.run_id]
    note = parent.data.tags["mlflow.note.content"]
    best_link = f"#/experiments/{parent.info.experiment_id}/runs/{best.info.run_id}?workflowType=machine_learning"
    assert f"[{best.info.run_name}]({best_link})" in note
    table = client.download_artifacts(parent_id, "trials.md", str(tmp_path))
    lines = Path(table).read_text().splitlines()[2:]
    assert lines[0].startswith("| ★ | 1 |") and best.info.run_name in lines[0] and len(lines) == 4
    link = next(line for line in out.stdout.splitlines() if line.startswith("runs, best first: http://"))
    assert "orderByKey=metrics.%60best%2Fvalid%2Fmae%60" in link and "workflowType=machine_learning" in link
    assert f"%3D%20%27{parent_id}%27" in link  # this search's trials only
    # the Optuna study lives in the RDB storage the pipeline names, every trial in it
    import optuna

    assert f"optuna-dashboard sqlite:///{tmp_path / 'optuna.db'}" in out.stdout
    study = optuna.load_study(study_name=parent.info.run_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 4
    for t in study.trials:
        assert t.state.name in ("COMPLETE", "PRUNED")
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))  # each epoch
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert len(pruned) == sum(r.data.tags["sati.trial_status"] == "stopped" for r in children)
    # ... nor Ray Tune's results
    for result_file in (tmp_path / "ray").rglob("result.json"):
        for line in result_file.read_text().splitlines():
            assert not [k for k in json.loads(line) if k.startswith("test/")]


@pytest.mark.slow
def test_failing_and_nan_trials_do_not_stop_the_search(tmp_path, synth_path, tiny_encoder, mlflow_server):
    # audio_heads 4 does not divide the 74-d audio: that trial raises. lr 1e30 makes the loss NaN.
    space = {"model.audio_heads": {"choice": [2, 4]}, "train.lr": {"choice": [2.0e-3, 1.0e30]}}
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml",
        synth_path,
        tiny_encoder,
        mlflow_server.uri,
        tmp_path / "ray",
        space,
        search={"num_samples": 6, "scheduler": "fifo"},
        train={"epochs": 1},
    )
    out = run_sati(["search", str(pipeline)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    children = child_runs(client, parent_run_id(out.stdout))
    assert len(children) == 6
    kinds = set()
    for run in children:
        heads, lr = run.data.params["model.audio_heads"], float(run.data.params["train.lr"])
        if heads == "4":
            kinds.add("raises")
            assert run.info.status == "FAILED"
            assert "model.audio_heads = 4 does not divide the feature dim 74" in run.data.tags["sati.failure_reason"]
        elif lr > 1:
            kinds.add("nan")
            assert run.info.status == "FAILED"
            assert "training loss is not finite" in run.data.tags["sati.failure_reason"]
        else:
            kinds.add("ok")
            assert run.info.status == "FINISHED"
    assert kinds == {"raises", "nan", "ok"}
    assert client.get_run(parent_run_id(out.stdout)).info.status == "FINISHED"


@pytest.mark.slow
def test_interrupted_search_resumes_with_one_run_per_trial(tmp_path, synth_path, tiny_encoder, mlflow_server):
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml",
        synth_path,
        tiny_encoder,
        mlflow_server.uri,
        tmp_path / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        search={"num_samples": 4, "scheduler": "fifo"},
        train={"epochs": 4},
    )
    client = MlflowClient(mlflow_server.uri)
    parent_id = crash_after_first_epoch(pipeline, tmp_path, client, str(tmp_path))
    assert client.get_run(parent_id).info.status == "RUNNING"  # the crash left it open
    out = run_sati(["search", "--resume", parent_id, "--tracking-uri", mlflow_server.uri], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert parent_run_id(out.stdout) == parent_id
    assert_resumed_cleanly(client, parent_id, trials=4, epochs=4)


@pytest.mark.slow
def test_a_cpu_hour_budget_stops_launching_trials_and_the_parent_run_says_why(
    tmp_path, synth_path, tiny_encoder, mlflow_server
):
    # one trial at a time; the first one alone spends the budget (a few seconds of one CPU)
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml", synth_path, tiny_encoder, mlflow_server.uri, tmp_path / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        search={"num_samples": 6, "max_concurrent": 1, "scheduler": "fifo", "budget_cpu_hours": 0.0005},
        train={"epochs": 2},
    )  # fmt: skip
    out = run_sati(["search", str(pipeline)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    parent_id = parent_run_id(out.stdout)
    parent = client.get_run(parent_id)
    children = child_runs(client, parent_id)
    assert 1 <= len(children) < 6
    assert parent.data.tags["sati.stopped_reason"].startswith("stopped for the budget: the trials used")
    assert f"{len(children)} of 6 trials ran" in parent.data.tags["sati.stopped_reason"]
    assert "stopped for the budget" in out.stdout
    # each trial's cost is its wall time × 1 CPU; the parent holds the total
    per_trial = [r.data.metrics["cost/cpu_hours"] for r in children]
    assert all(c > 0 for c in per_trial) and all(r.data.metrics["cost/gpu_hours"] == 0 for r in children)
    assert parent.data.metrics["cost/cpu_hours"] == pytest.approx(sum(per_trial), rel=0.05)
    assert parent.data.metrics["cost/cpu_hours"] >= 0.0005


@pytest.mark.slow
def test_a_stopped_trial_uploads_no_weights_and_points_at_its_tune_checkpoint(
    tmp_path, synth_path, tiny_encoder, mlflow_server
):
    # one trial at a time: the first runs all epochs, a later one at lr 1e-9 falls behind at the
    # first rung and ASHA stops it (the sampler is seeded, so the same trials come every time)
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml", synth_path, tiny_encoder, mlflow_server.uri, tmp_path / "ray",
        {"train.lr": {"choice": [3.0e-3, 1.0e-9]}},
        search={"num_samples": 4, "max_concurrent": 1, "scheduler": "asha", "reduction_factor": 2},
    )  # fmt: skip
    out = run_sati(["search", str(pipeline)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    children = child_runs(client, parent_run_id(out.stdout))
    by_status = {}
    for run in children:
        by_status.setdefault(run.data.tags["sati.trial_status"], []).append(run)
    assert by_status.get("stopped") and by_status.get("finished"), {k: len(v) for k, v in by_status.items()}
    for status, runs in by_status.items():
        for run in runs:
            files = _all_artifacts(client, run.info.run_id)
            assert ("checkpoint/best.pt" in files) == (status == "finished"), (status, files)
            best = Path(run.data.tags["sati.checkpoint_uri"])
            assert best.is_file() and not (best.parent / "last.pt").exists()  # no resume state after the end
            # only the newest checkpoint directory of the trial keeps files
            kept = [d for d in best.parent.parent.glob("checkpoint_*") if any(d.iterdir())]
            assert kept == [best.parent]


@pytest.mark.slow
def test_extend_adds_trials_to_the_same_search_run_and_study(tmp_path, synth_path, tiny_encoder, mlflow_server):
    import optuna

    pipeline = write_search_pipeline(
        tmp_path / "p.yaml", synth_path, tiny_encoder, mlflow_server.uri, tmp_path / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        search={"num_samples": 2, "scheduler": "fifo", "study_storage": f"sqlite:///{tmp_path / 'optuna.db'}"},
        train={"epochs": 1},
    )  # fmt: skip
    out = run_sati(["search", str(pipeline)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    parent_id = parent_run_id(out.stdout)
    client = MlflowClient(mlflow_server.uri)
    name = client.get_run(parent_id).info.run_name

    # what an extension may not change: the pipeline (but num_samples, max_concurrent) and the space
    out = run_sati(["search", "--extend", parent_id, "--set", "train.lr=0.1", "--tracking-uri", mlflow_server.uri],
                   cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "train.lr cannot change" in out.stderr, out.stderr[-2000:]
    space = tmp_path / "p_space.yaml"
    original = space.read_text()
    space.write_text("train.lr: {loguniform: [1.0e-5, 3.0e-3]}\n")
    out = run_sati(["search", "--extend", parent_id, "--set", "search.num_samples=2", "--tracking-uri",
                    mlflow_server.uri], cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "search.space" in out.stderr and "changed since search" in out.stderr
    space.write_text(original)
    assert len(child_runs(client, parent_id)) == 2  # nothing was added by the refused extensions

    out = run_sati(["search", "--extend", parent_id, "--set", "search.num_samples=2", "--tracking-uri",
                    mlflow_server.uri], cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert parent_run_id(out.stdout) == parent_id
    children = child_runs(client, parent_id)
    assert len(children) == 4 and {r.info.run_name[:4] for r in children} == {"t001", "t002", "t003", "t004"}
    assert client.get_run(parent_id).info.status == "FINISHED"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)  # one study, TPE saw all
    trials_md = Path(client.download_artifacts(parent_id, "trials.md", str(tmp_path / "dl"))).read_text()
    assert len(trials_md.splitlines()) == 2 + 4  # the summary covers the search and its extension


def _open_study_storage(url: str, barrier) -> None:
    from sati.search.study import rdb_storage

    barrier.wait()
    rdb_storage(url)


def test_searches_started_at_once_share_a_new_sqlite_study_storage(tmp_path):
    """Several searches started together on one new optuna.db: each opens it, none fails creating it."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_study_storage, args=(url, barrier)) for _ in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * 6


def test_an_extension_without_an_rdb_study_seeds_tpe_with_the_logged_trials():
    """A study kept in memory is gone after its search; --extend rebuilds it from the trial runs' rows."""
    from sati.search.space import Param, SearchSpace
    from sati.search.study import seeded_memory_storage

    space = SearchSpace(
        "space.yaml",
        (
            Param("train.lr", "loguniform", (1e-4, 1e-2)),
            Param("model.fbp_pool", "choice", (1, 2, 4)),
            Param("loss.margin", "uniform", (0.0, 1.0), when={"loss.margin_form": "cosface"}),
        ),
    )
    rows = [
        {"state": "finished", "epochs": 3, "valid/mae": 0.8, "train.lr": 1e-3, "model.fbp_pool": 2, "loss.margin": ""},
        {"state": "stopped", "epochs": 1, "valid/mae": 0.9, "train.lr": 2e-4, "model.fbp_pool": 4, "loss.margin": 0.3},
        {"state": "failed", "epochs": 0, "valid/mae": math.nan, "train.lr": 5e-3, "model.fbp_pool": 1},
        {
            "state": "finished",
            "epochs": 3,
            "valid/mae": 0.7,
            "train.lr": 0.5,
            "model.fbp_pool": 1,
        },  # outside today's space
    ]
    import optuna

    storage = seeded_memory_storage("s", "min", space, rows, "valid/mae")
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [(t.state.name, t.value, t.params) for t in study.trials] == [
        ("COMPLETE", 0.8, {"train.lr": 1e-3, "model.fbp_pool": 2}),
        ("PRUNED", None, {"train.lr": 2e-4, "model.fbp_pool": 4, "loss.margin": 0.3}),
    ]
    assert study.trials[1].intermediate_values == {1: 0.9} and study.best_value == 0.8


@pytest.mark.slow
def test_extend_with_a_tracking_server_and_no_study_storage(tmp_path, synth_path, tiny_encoder, mlflow_server):
    """No RDB keeps the study: the search writes nothing beside it, and the extension goes on from the
    trials logged in MLflow."""
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml", synth_path, tiny_encoder, mlflow_server.uri, tmp_path / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        search={"num_samples": 2, "scheduler": "fifo"}, train={"epochs": 1},
    )  # fmt: skip
    out = run_sati(["search", str(pipeline)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "live study:       kept in memory" in out.stdout and not list(tmp_path.glob("optuna.db*"))
    parent_id = parent_run_id(out.stdout)
    out = run_sati(["search", "--extend", parent_id, "--set", "search.num_samples=1", "--tracking-uri",
                    mlflow_server.uri], cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TPE goes on from 2 of the 2 trials logged under the search run" in out.stdout
    assert len(child_runs(MlflowClient(mlflow_server.uri), parent_id)) == 3


def test_moving_the_best_tag_off_a_run_that_never_got_it_is_fine(tmp_path):
    """A resumed driver's leaderboard remembers a best run whose tag the dead driver never wrote."""
    from sati.tracking.leaderboard import LiveBoard
    from sati.tracking.store import TrackingStore

    store = TrackingStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = store.client.create_experiment("e")
    parent = store.client.create_run(experiment).info.run_id
    untagged, better = (store.client.create_run(experiment).info.run_id for _ in range(2))
    board = LiveBoard(store, parent, "valid/mae", "min", [])
    board.best = untagged  # as restored from the callback state
    board.add("b", "t002-b", better, {})
    board.result("b", 1, 0.5)
    board.publish(force=True)
    assert store.client.get_run(better).data.tags["sati.best"] == "true"
    assert "sati.best" not in store.client.get_run(untagged).data.tags
