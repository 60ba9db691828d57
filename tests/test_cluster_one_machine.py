"""A cluster on one machine: Postgres, a Postgres-backed mlflow server, a Ray head and two worker
raylets, and a `sati search` that loses one worker mid-search.

All of it runs in one loopback-only network namespace (`unshare -n`), orchestrated by
sati/testing/cluster.py, which writes a report that this test checks. The head has 0 CPUs, so every
trial runs on a worker (1 CPU each). As soon as a trial is RUNNING on a worker (MLflow tag
`sati.node_id`), that worker's `ray start --block` process group (raylet, agents, the trial's worker
process) is SIGKILLed, like a machine that dies. The trial must be retried on the other worker from
its last checkpoint and every trial must end with exactly one FINISHED MLflow run.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from sati.testing.cluster import can_unshare, run_in_netns
from sati.testing.pipelines import write_search_pipeline
from sati.testing.servers import postgres_missing

pytestmark = pytest.mark.slow

TRIALS = 4


@pytest.mark.skipif(
    not can_unshare(),
    reason="needs `unshare -n` (root or CAP_SYS_ADMIN) and iproute2 for a loopback-only network namespace",
)
@pytest.mark.skipif(postgres_missing() is not None, reason=f"no private Postgres: {postgres_missing()}")
def test_search_survives_losing_a_worker_raylet(tmp_path, synth_path, tiny_encoder):
    # tracking.uri is replaced by the server's address inside the namespace (--set tracking.uri=...)
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml",
        synth_path,
        tiny_encoder,
        "http://127.0.0.1:1",
        tmp_path / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        # 6 epochs: a trial first seen on a worker after epoch 1 is still running when the kill lands
        search={
            "num_samples": TRIALS,
            "max_concurrent": 2,
            "scheduler": "fifo",
            "max_failures": 3,
            "resources": {"cpu": 1, "gpu": 0},
        },
        train={"epochs": 6},
    )
    report = run_in_netns("lose-a-worker", pipeline, tmp_path / "cluster", timeout_s=900)
    context = {
        k: report.get(k)
        for k in (
            "error",
            "traceback",
            "kill",
            "search_rc",
            "search_log_tail",
            "worker_log_tails",
            "setup_s",
            "search_s",
        )
    }
    assert "error" not in report, context

    # both workers joined the head, and one of them was killed while its trial ran
    assert len(report["worker_nodes"]) == 2, context
    kill = report["kill"]
    assert kill["node"] in report["worker_nodes"] and kill["epochs_done"] < 6, context
    assert not kill["pids_alive_after"], context  # the worker's raylet and processes are gone
    survivor = next(n for n in report["worker_nodes"] if n != kill["node"])

    # the search exits 0
    assert report["search_rc"] == 0, context

    runs = report["runs"]
    trials = [r for r in runs if r["tags"].get("sati.role") == "trial"]
    parents = [r for r in runs if r["tags"].get("sati.role") == "search"]
    assert len(parents) == 1, context
    parent = parents[0]

    # every trial has exactly one MLflow run, FINISHED, under the parent run; none RUNNING or KILLED
    per_trial = Counter(r["tags"].get("sati.trial_id") for r in trials)
    assert len(per_trial) == TRIALS and set(per_trial.values()) == {1}, per_trial
    assert all(r["status"] == "FINISHED" for r in runs), [(r["name"], r["status"]) for r in runs]
    assert all(r["tags"].get("sati.trial_status") == "finished" for r in trials), [
        (r["name"], r["tags"].get("sati.trial_status"), r["tags"].get("sati.failure_reason")) for r in trials
    ]
    assert all(r["tags"].get("mlflow.parentRunId") == parent["run_id"] for r in trials)

    # the killed trial started on the killed node and was finished on the other one
    victim = next(r for r in trials if r["tags"]["sati.trial_id"] == kill["trial_id"])
    assert victim["tags"]["sati.nodes"].split(",") == [kill["node"], survivor], victim["tags"]
    assert victim["tags"]["sati.node_id"] == survivor
    # ... and it went on from its last checkpoint there: Tune's results list each epoch once
    results: list[dict] = []
    for _ in range(60):  # the trial's result.json reaches the storage path in a final sync: wait for it
        results = [
            json.loads(line)
            for f in (tmp_path / "ray").glob(f"*/train_trial_{kill['trial_id']}_*/result.json")
            for line in f.read_text().splitlines()
            if line.strip()
        ]
        if any(r["epoch"] == 6 for r in results):
            break
        time.sleep(1)
    # (an epoch reported after the newest checkpoint Tune held is redone: it was lost with the node)
    epochs = [(r["epoch"], r["node_id"]) for r in results]
    on_killed = [r["epoch"] for r in results if r["node_id"] == kill["node"]]
    on_survivor = [r["epoch"] for r in results if r["node_id"] == survivor]
    assert on_survivor and [n for _, n in epochs] == [kill["node"]] * len(on_killed) + [survivor] * len(on_survivor), (
        epochs,
        kill,
    )
    # (the killed node's own lines may be missing: Tune keeps the file of the attempt that finished)
    assert on_killed == list(range(1, len(on_killed) + 1)) and kill["checkpoint_epoch"] >= 1, (epochs, kill)
    assert on_survivor[0] >= 2 and on_survivor == list(range(on_survivor[0], 7)), (epochs, kill)
    assert results[len(on_killed)]["iterations_since_restore"] == 1, (epochs, kill)

    # the parent run is finished and names its best trial
    assert parent["tags"].get("sati.best_trial_run_id") in {r["run_id"] for r in trials}, parent["tags"]

    # the runs live in the server's Postgres backend store
    in_pg = dict(map(tuple, report["postgres_runs"]))
    assert in_pg == {r["run_id"]: "FINISHED" for r in runs}
    assert sorted(v for _, v in report["postgres_trial_tags"]) == sorted(per_trial)
