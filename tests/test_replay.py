"""Replay: recorded learning curves drive the real searcher and scheduler on simulated time
(``sati.replay``), ``sati search export`` writes the recordings, ``sati simulate`` compares strategies.

The hand-made recording: 8 configurations × 4 epochs of valid/mae, 10 s per epoch, replayed under ASHA
(grace 1, reduction factor 2, max_t 4, one bracket) with the 8 configurations tried in order through
Optuna. Configuration 3 is the out-of-order one: the worst at epoch 1, the best by epoch 4; 7 likewise
at epoch 2. What ASHA must do with them comes from ``asha_model``, an independent model of its rung rule.
"""

from __future__ import annotations

import heapq
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sati.cli import main
from sati.config import from_dict
from sati.replay.harness import VirtualTimeSearch, replay_search
from sati.replay.recording import read_recording
from sati.replay.store import CurveStore
from sati.search.space import load_space
from sati.search.strategy import build_scheduler, build_searcher, tune_metric
from sati.testing.pipelines import write_search_pipeline
from sati.testing.processes import free_port, run_sati
from sati.testing.recordings import write_hand_made_recording
from sati.testing.searches import child_runs, parent_run_id
from tests.conftest import REPO

SPACE = "train.lr: {loguniform: [1.0e-4, 1.0e-2]}\nloss.temporal_weight: {loguniform: [0.1, 100.0]}\n"
CURVES = {
    1: [1.00, 0.90, 0.85, 0.80],
    2: [0.95, 0.88, 0.84, 0.79],
    3: [1.10, 0.70, 0.60, 0.50],  # worst first, best last
    4: [0.97, 0.93, 0.90, 0.88],
    5: [0.90, 0.86, 0.83, 0.81],
    6: [1.05, 1.00, 0.95, 0.90],
    7: [0.92, 0.91, 0.75, 0.70],  # behind at epoch 2, second best last
    8: [0.99, 0.87, 0.86, 0.85],
}
CONFIGS = {n: {"train.lr": 1.0e-4 * 1.7**n, "loss.temporal_weight": 0.1 * 2.2**n} for n in CURVES}
EVEN = dict.fromkeys(CURVES, 10.0)
ODD_SLOW = {n: 25.0 if n % 2 else 10.0 for n in CURVES}  # odd trials take 25 s an epoch, even ones 10 s
# The rung rule worked by hand for the fixture, one trial at a time (epochs each trial runs):
# rung 1 stops 3 (1.10 > median 0.975 of 1.00, 0.95), 6 and 8; rung 2 stops 4 (0.93 > 0.89) and 7.
BY_HAND = {1: 4, 2: 4, 3: 1, 4: 2, 5: 4, 6: 1, 7: 2, 8: 1}
TINY = REPO / "benchmarks" / "curves" / "tiny-synth-6x3.parquet"


def asha_model(curves, seconds, slots, grace=1, rf=2, max_t=4) -> dict[int, int]:
    """ASHA's rung rule, independently of Ray: at each rung (grace·rf^k < max_t) a trial stops when its
    score (minus its best-so-far MAE) is below the (1 - 1/rf) quantile of the scores recorded there
    before it (the first arrival continues). Trials start in order on ``slots`` slots; results arrive by
    (simulated time, trial). Returns the epochs each trial runs."""
    scores = {grace * rf**k: [] for k in range(8) if grace * rf**k < max_t}
    queue, events, last = sorted(curves), [], {}
    start = lambda n, t: heapq.heappush(events, (t + seconds[n], n, 1))
    for _ in range(slots):
        start(queue.pop(0), 0.0)
    while events:
        t, n, e = heapq.heappop(events)
        score = -min(curves[n][:e])
        stop = e in scores and bool(scores[e]) and score < np.quantile(scores[e], 1 - 1 / rf)
        if e in scores:
            scores[e].append(score)
        last[n] = e
        if stop or e == max_t:
            if queue:
                start(queue.pop(0), t)
        else:
            heapq.heappush(events, (t + seconds[n], n, e + 1))
    return last


def implied_best(last: dict[int, int]) -> int:
    """The trial with the best (lowest) MAE among the epochs each ran."""
    return min(last, key=lambda n: min(CURVES[n][: last[n]]))


@pytest.fixture
def hand_made(tmp_path):
    """(pipeline config, space, store) for the fixture with the given epoch seconds and concurrency."""

    def make(seconds: dict[int, float], concurrency: int, **search):
        space_path = tmp_path / "space.yaml"
        space_path.write_text(SPACE)
        recording = write_hand_made_recording(tmp_path / "rec.parquet", space_path, CONFIGS, CURVES, seconds)
        search = {
            "space": str(space_path),
            "scheduler": "asha",
            "grace_period": 1,
            "reduction_factor": 2,
            "num_samples": 8,
            "max_concurrent": concurrency,
            **search,
        }
        cfg = from_dict({"train": {"epochs": 4, "patience": 0}, "search": search}, "test")
        return cfg, load_space(space_path), CurveStore(read_recording(recording), cfg)

    return make


def _in_order(cfg, space):
    """The real searcher (Optuna, the 8 configurations enqueued in order) and scheduler of ``cfg``."""
    return build_searcher(cfg, space, 0, [CONFIGS[n] for n in CURVES]), build_scheduler(cfg)


def _epochs(trajectory) -> dict[int, int]:
    return {n: o.epochs for n, o in trajectory.trials.items()}


def _best_trial(trajectory) -> int:
    return int(trajectory.trial[np.argmin(trajectory.value)])


def test_the_rung_model_gives_the_stops_worked_by_hand_and_sees_the_order_of_results():
    assert asha_model(CURVES, EVEN, 1) == BY_HAND
    assert asha_model(CURVES, EVEN, 2) == BY_HAND
    timed = asha_model(CURVES, ODD_SLOW, 2)
    # trial 2's first result (10 s) reaches ASHA before trial 1's (25 s): trial 1 is then the one cut
    assert timed != BY_HAND and timed[1] == 1 and timed[2] == 4


@pytest.mark.parametrize("seconds, slots", [(EVEN, 1), (ODD_SLOW, 2)], ids=["one-at-a-time", "two-at-once-25s-10s"])
def test_replay_stops_the_trials_the_recording_implies(hand_made, seconds, slots):
    cfg, space, store = hand_made(seconds, slots)
    searcher, scheduler = _in_order(cfg, space)
    trajectory = VirtualTimeSearch(searcher, scheduler, store, tune_metric(cfg), "min", 8, slots).run()
    expected = asha_model(CURVES, seconds, slots)
    assert _epochs(trajectory) == expected
    assert {n for n, o in trajectory.trials.items() if o.status == "stopped"} == {
        n for n, e in expected.items() if e < 4
    }
    # the recording's best configuration (3) was cut at epoch 1: the best trial is the one ASHA let finish
    assert _best_trial(trajectory) == implied_best(expected) != 3
    assert trajectory.cost_s.sum() == pytest.approx(sum(e * seconds[n] for n, e in expected.items()))
    assert list(zip(trajectory.time_s, trajectory.trial)) == sorted(zip(trajectory.time_s, trajectory.trial))
    assert dict(trajectory.lookups.lookups) == {"exact": 8}


@pytest.fixture(scope="module")
def local_ray():
    from sati.search.ray_session import ray_session

    with ray_session(None, num_cpus=4):
        yield


@pytest.mark.slow
@pytest.mark.parametrize("seconds, slots", [(EVEN, 1), (ODD_SLOW, 2)], ids=["one-at-a-time", "two-at-once-25s-10s"])
def test_a_real_tuner_in_lockstep_stops_and_picks_what_the_recording_implies(
    hand_made, tmp_path, local_ray, seconds, slots
):
    """The real Tune + Optuna + ASHA stack (Ray workers, controller, callbacks) with the lockstep clock
    agrees with the in-process harness and with the rung model."""
    from sati.replay.lockstep import lockstep_search

    cfg, space, store = hand_made(seconds, slots)
    real, forced = lockstep_search(cfg, store, *_in_order(cfg, space), str(tmp_path / "ray"))
    harness = VirtualTimeSearch(*_in_order(cfg, space), store, tune_metric(cfg), "min", 8, slots).run()
    expected = asha_model(CURVES, seconds, slots)
    assert forced == 0
    assert _epochs(real) == _epochs(harness) == expected
    assert {n: o.status for n, o in real.trials.items()} == {n: o.status for n, o in harness.trials.items()}
    assert _best_trial(real) == _best_trial(harness) == implied_best(expected)
    assert real.cost_s.sum() == pytest.approx(harness.cost_s.sum())
    # the scheduler saw the results in simulated-time order, as the harness replays them
    assert list(zip(real.time_s, real.trial, real.epoch)) == list(zip(harness.time_s, harness.trial, harness.epoch))


def test_a_replay_is_deterministic_and_its_seed_matters():
    search = {"scheduler": "asha", "reduction_factor": 2, "num_samples": 24, "max_concurrent": 3}
    cfg = from_dict({"train": {"epochs": 3, "patience": 0}, "search": search}, "test")
    recording = read_recording(TINY)
    store = CurveStore(recording, cfg)
    space = recording.space
    runs = [replay_search(cfg, space, store, seed) for seed in (5, 5, 6)]
    fields = ("time_s", "trial", "epoch", "value", "cost_s")
    for name in fields:
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name))
    configs = [[o.config for o in r.trials.values()] for r in runs]
    assert configs[0] == configs[1] != configs[2]
    assert len(runs[0].trials) == 24 and not runs[0].stalled


def test_lookup_takes_the_nearest_recorded_configuration_in_the_spaces_own_scale(tmp_path):
    space_path = tmp_path / "space.yaml"
    space_path.write_text("train.lr: {loguniform: [1.0e-5, 1.0e-1]}\nmodel.fbp_pool: {choice: [1, 2, 4]}\n")
    configs = {
        1: {"train.lr": 1.0e-4, "model.fbp_pool": 2},
        2: {"train.lr": 1.0e-3, "model.fbp_pool": 2},
        3: {"train.lr": 1.0e-2, "model.fbp_pool": 2},
        4: {"train.lr": 2.0e-5, "model.fbp_pool": 4},
    }
    curves = {n: [float(n)] for n in configs}
    path = write_hand_made_recording(tmp_path / "rec.parquet", space_path, configs, curves)
    cfg = from_dict({"train": {"epochs": 1}}, "test")
    store = CurveStore(read_recording(path), cfg)
    served = lambda lr, pool: store.curve_for({"train.lr": lr, "model.fbp_pool": pool})
    assert served(1.0e-3, 2).source == "exact" and served(1.0e-3, 2).best[0] == 2.0
    # 3.5e-4 is nearer 1e-4 on a linear scale, nearer 1e-3 on the log scale the space uses
    assert served(3.5e-4, 2).best[0] == 2.0 and served(3.5e-4, 2).source == "nearest"
    # categoricals must match: pool 4 is served by configuration 4 however far its learning rate
    assert served(1.0e-2, 4).best[0] == 4.0 and served(1.0e-2, 4).source == "out_of_support"
    # a value never recorded: the nearest over all, counted out of support
    assert served(1.0e-2, 1).source == "out_of_support"
    # d95: the spacing of the recorded pool-2 learning rates (a decade each, a quarter of the log range)
    assert store.d95 == pytest.approx(0.25)


def test_fewer_epochs_and_patience_cut_curves_as_the_trainer_would(tmp_path):
    space_path = tmp_path / "space.yaml"
    space_path.write_text(SPACE)
    path = write_hand_made_recording(tmp_path / "rec.parquet", space_path, {1: CONFIGS[1]}, {1: [0.9, 0.95, 0.96, 0.8]})
    recording = read_recording(path)
    curve = lambda **train: CurveStore(recording, from_dict({"train": train}, "test")).curve_for(CONFIGS[1])
    assert curve(epochs=3, patience=0).best.tolist() == [0.9, 0.9, 0.9]
    assert curve(epochs=4, patience=2).best.tolist() == [0.9, 0.9, 0.9]  # two epochs without improvement
    assert curve(epochs=4, patience=0).best.tolist() == [0.9, 0.9, 0.9, 0.8]
    assert curve(epochs=4, patience=0).finished


def test_hyperband_pauses_and_resumes_trials_to_the_end(hand_made):
    cfg, space, store = hand_made(EVEN, 8, scheduler="hyperband", num_samples=16)
    trajectory = replay_search(cfg, space, store, seed=1)
    statuses = [o.status for o in trajectory.trials.values()]
    assert len(statuses) == 16 and "waiting" not in statuses and not trajectory.stalled
    assert {"stopped", "completed"} <= set(statuses)
    # a paused trial goes on where it stopped: each trial reports each epoch once, in order
    for n in trajectory.trials:
        assert trajectory.epoch[trajectory.trial == n].tolist() == list(range(1, trajectory.trials[n].epochs + 1))


# ---------------------------------------------------------------------------------------------
# sati search export


@pytest.mark.slow
def test_export_writes_every_trial_epoch_as_tune_and_mlflow_recorded_it(tmp_path, synth_path, tiny_encoder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}, "model.fbp_pool": {"choice": [1, 2]}}
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml",
        synth_path,
        tiny_encoder,
        uri,
        tmp_path / "ray",
        space,
        train={"epochs": 2},
        search={"sampler": "random"},  # what a recording uses: a search samples at random when asked
    )
    out = run_sati(["search", str(pipeline)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    parent = parent_run_id(out.stdout)
    search_dir = next(
        line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith("search directory:")
    )
    exported = run_sati(["search", "export", search_dir, "--out", str(tmp_path / "a.parquet")], cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "wrote 4 trials" in exported.stdout
    assert main(["search", "export", parent, "--out", str(tmp_path / "b.parquet"), "--tracking-uri", uri]) == 0

    recording = read_recording(tmp_path / "a.parquet")
    rows = recording.table.to_pylist()
    assert rows == read_recording(tmp_path / "b.parquet").table.to_pylist()
    client = MlflowClient(uri)
    runs = {r.data.tags["sati.trial_id"]: r for r in child_runs(client, parent)}
    assert {r["trial_id"] for r in rows} == set(runs) and len(runs) == 4
    for trial_id, run in runs.items():
        mine = sorted((r for r in rows if r["trial_id"] == trial_id), key=lambda r: r["epoch"])
        history = sorted(client.get_metric_history(run.info.run_id, "valid/mae"), key=lambda m: m.step)
        assert [(r["epoch"], r["valid/mae"]) for r in mine] == [(m.step, pytest.approx(m.value)) for m in history]
        assert mine[0]["hp_train.lr"] == pytest.approx(float(run.data.params["train.lr"]))
        assert str(mine[0]["hp_model.fbp_pool"]) == run.data.params["model.fbp_pool"]
        status = {"finished": ("completed", False), "stopped": ("sched_stop", True)}[run.data.tags["sati.trial_status"]]
        assert {(r["final_status"], r["censored"]) for r in mine} == {status}
        # epoch wall times add up to the trial's time; the first includes the trial's start-up
        assert sum(r["epoch_time_s"] for r in mine) == pytest.approx(mine[-1]["cum_time_s"])
        assert all(r["epoch_time_s"] >= r["train_time_s"] > 0 for r in mine)
    meta = recording.meta
    assert (meta["metric"], meta["mode"], meta["max_t"]) == ("valid/mae", "min", 2)
    assert meta["scheduler"]["scheduler"] == "asha" and meta["searcher"]["sampler"] == "random"
    assert {p["key"]: p["kind"] for p in meta["space"]} == {"train.lr": "loguniform", "model.fbp_pool": "choice"}
    assert meta["versions"]["torch"] and meta["git_commit"] and meta["data_checksum"]
    sidecar = (tmp_path / "a.parquet.json").read_text()
    assert json.loads(sidecar) == meta and str(tmp_path) not in sidecar  # no machine path in a recording


# ---------------------------------------------------------------------------------------------
# sati simulate


@pytest.mark.slow
def test_simulate_prints_the_comparison_and_writes_the_plot_and_one_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["simulate", str(REPO / "pipelines" / "quickstart.yaml"), "--replay", str(TINY), "--seeds", "3"]
    out = run_sati([*argv, "--out", str(tmp_path / "sim"), "--tracking-uri", uri], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.split("\n\n")
    for label in ("random fifo n4 c2", "random asha g1 rf2 n4 c2", "tpe fifo n4 c2", "tpe asha g1 rf2 n4 c2"):
        assert any(line.startswith(label) for line in out.stdout.splitlines()), (label, table)
    assert "CPU-h to y_ref" in out.stdout and "Replay cannot show" in out.stdout
    assert (tmp_path / "sim" / "regret.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sati-quickstart")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["sati.role"] == "simulation"  # no run per simulated trial
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {"regret.png", "simulation.md"}
    assert runs[0].data.metrics["random_fifo_n4_c2/hit_rate"] > 0


def _pipeline(tmp_path, epochs=4) -> Path:
    (tmp_path / "space.yaml").write_text(SPACE)
    path = tmp_path / "p.yaml"
    raw = {"format": 2, "train": {"epochs": epochs}, "search": {"space": "space.yaml"}, "tracking": {"uri": None}}
    path.write_text(yaml.safe_dump(raw))
    return path


def _bad_recordings(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "space.yaml").write_text(SPACE)
    good = write_hand_made_recording(tmp_path / "good.parquet", tmp_path / "space.yaml", CONFIGS, CURVES)
    table = pq.read_table(good)
    (tmp_path / "text.parquet").write_text("epoch,valid/mae\n1,0.9\n")
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "bare.parquet")
    pq.write_table(table.drop_columns(["epoch_time_s"]), tmp_path / "no_times.parquet")
    meta = json.loads(table.schema.metadata[b"sati_recording"])
    newer = table.replace_schema_metadata({b"sati_recording": json.dumps({**meta, "format": 99}).encode()})
    pq.write_table(newer, tmp_path / "newer.parquet")
    negative = table.set_column(table.column_names.index("epoch_time_s"), "epoch_time_s", pa.array([-1.0] * len(table)))
    pq.write_table(negative, tmp_path / "negative.parquet")
    return {
        "missing": (tmp_path / "none.parquet", "recording file not found"),
        "not parquet": (tmp_path / "text.parquet", "not a readable Parquet file"),
        "no metadata": (tmp_path / "bare.parquet", "no sati recording metadata"),
        "missing column": (tmp_path / "no_times.parquet", "missing column(s) epoch_time_s"),
        "format": (tmp_path / "newer.parquet", "recording format 99"),
        "negative time": (tmp_path / "negative.parquet", "epoch_time_s, cpus and gpus must be finite numbers >= 0"),
    }


@pytest.mark.parametrize("case", ["missing", "not parquet", "no metadata", "missing column", "format", "negative time"])
def test_a_bad_recording_is_refused_with_one_error_line(tmp_path, capsys, case):
    path, message = _bad_recordings(tmp_path)[case]
    assert main(["simulate", str(_pipeline(tmp_path)), "--replay", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_simulate_refuses_too_many_epochs_unknown_strategies_and_an_unreachable_server(tmp_path, capsys):
    good = write_hand_made_recording(
        tmp_path / "good.parquet", _pipeline(tmp_path).with_name("space.yaml"), CONFIGS, CURVES
    )
    assert main(["simulate", str(_pipeline(tmp_path, epochs=5)), "--replay", str(good)]) == 2
    assert "its trials ran at most 4 epochs; the pipeline asks for train.epochs = 5" in capsys.readouterr().err
    assert main(["simulate", str(_pipeline(tmp_path)), "--replay", str(good), "--sampler", "bayes"]) == 2
    assert "search.sampler = 'bayes'" in capsys.readouterr().err
    unreachable = f"http://127.0.0.1:{free_port()}"
    argv = ["simulate", str(_pipeline(tmp_path)), "--replay", str(good), "--out", str(tmp_path / "o")]
    assert main([*argv, "--tracking-uri", unreachable]) == 2
    assert f"{unreachable}: MLflow server not reachable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any replay


def test_a_grid_file_expands_to_strategies_with_the_reference_first(tmp_path):
    from sati.config import ConfigError
    from sati.replay.sweep import load_grid, strategy_grid

    path = tmp_path / "grid.yaml"
    path.write_text("sampler: tpe\nscheduler: [fifo, asha, hyperband]\ngrace_period: [1, 2]\nseeds: 3\n")
    grid = load_grid(path)
    assert grid.pop("seeds") == 3
    cfg = from_dict({"search": {"num_samples": 8, "max_concurrent": 2, "reduction_factor": 3}}, "test")
    assert [s.label for s in strategy_grid(cfg, grid)] == [
        "random fifo n8 c2",  # the reference, always there
        "tpe fifo n8 c2",  # grace and reduction collapse where the scheduler has none
        "tpe asha g1 rf3 n8 c2",
        "tpe asha g2 rf3 n8 c2",
        "tpe hyperband rf3 n8 c2",
    ]
    path.write_text("schedulr: [asha]\n")
    with pytest.raises(ConfigError, match="grid.yaml: unknown key 'schedulr'"):
        load_grid(path)


def test_the_replay_modules_leave_torch_unimported():
    code = (
        "import sys, sati.replay.harness, sati.replay.lockstep, sati.replay.sweep, sati.replay.report; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
