"""A two-node Ray cluster on one machine: `ray start --head` + a second raylet, `sati search --address`.

Everything runs inside a loopback-only network namespace (`unshare -n`), so Ray's traffic stays on
127.0.0.1 (Ray advertises the external address otherwise). Both nodes and the driver use the same
RAY_AUTH_MODE. MLflow uses a SQLite store on the shared filesystem.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.search_helpers import loopback_env, write_search_pipeline

pytestmark = pytest.mark.slow


def _can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (root) and iproute2 for a loopback-only netns")
def test_search_runs_trials_on_both_nodes(tmp_path, synth_path, tiny_encoder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml",
        synth_path,
        tiny_encoder,
        uri,
        tmp_path / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        search={"num_samples": 4, "max_concurrent": 2, "scheduler": "fifo"},
        train={"epochs": 2},
    )
    ray_bin = Path(sys.executable).parent / "ray"
    script = f"""
set -e
ip link set lo up
trap '"{ray_bin}" stop --force >/dev/null 2>&1 || true' EXIT
"{ray_bin}" start --head --port=6390 --num-cpus=1 --include-dashboard=false --disable-usage-stats
"{ray_bin}" start --address=127.0.0.1:6390 --num-cpus=1 --disable-usage-stats
"{sys.executable}" -m sati.cli search "{pipeline}" --address 127.0.0.1:6390
"""
    env = loopback_env(RAY_AUTH_MODE="token")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # it forbids `ray start --address`
    out = subprocess.run(
        ["unshare", "-n", "bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("test-search")
    trials = client.search_runs([exp.experiment_id], "tags.`sati.role` = 'trial'")
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    nodes = {r.data.tags["sati.node_id"] for r in trials}
    assert len(nodes) == 2, nodes  # trials ran on both raylets
    assert "MLflow parent run:" in out.stdout
