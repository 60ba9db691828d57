"""Pre-flight: a search that cannot run says so before it starts (resources, data, storage, encoder)."""

from __future__ import annotations

import pytest

from sati.search.preflight import Node, trials_at_once
from sati.testing.cluster import can_unshare, run_in_netns
from sati.testing.pipelines import write_search_pipeline
from sati.testing.processes import run_sati

SPACE = {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}


def test_trials_at_once_counts_what_fits_on_each_node():
    nodes = [Node("a", "1", cpus=4, gpus=1), Node("b", "2", cpus=2, gpus=0), Node("c", "3", cpus=0, gpus=0)]
    assert trials_at_once(nodes, cpu=1, gpu=0) == 6
    assert trials_at_once(nodes, cpu=1, gpu=0.25) == 4  # only node a has a GPU: 4 quarters
    assert trials_at_once(nodes, cpu=2, gpu=0.5) == 2
    assert trials_at_once(nodes, cpu=1, gpu=2) == 0
    assert trials_at_once(nodes, cpu=8, gpu=0) == 0


def test_a_gpu_request_on_a_machine_without_gpus_is_refused_before_anything_starts(tmp_path, synth_path, tiny_encoder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline = write_search_pipeline(tmp_path / "p.yaml", synth_path, tiny_encoder, uri, tmp_path / "ray", SPACE)
    out = run_sati(["search", str(pipeline), "--set", "search.resources.gpu=1"], cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "search.resources = {cpu: 1, gpu: 1} fits on no node of this machine" in errors[0]
    assert "0 GPU" in errors[0]  # what the machine has
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run, no store even
    assert not list((tmp_path / "ray").glob("t-*"))  # no Tune experiment


@pytest.mark.slow
def test_check_lists_every_check_and_starts_nothing(tmp_path, synth_path, tiny_encoder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline = write_search_pipeline(tmp_path / "p.yaml", synth_path, tiny_encoder, uri, tmp_path / "ray", SPACE)
    out = run_sati(["search", str(pipeline), "--check"], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("✓", "✗"))]
    assert [line.split(":")[0] for line in lines] == ["✓ resources", "✓ data", "✓ storage", "✓ text encoder"]
    assert "2 fit at once on 1 node(s) (search.max_concurrent = 2)" in lines[0]
    assert "pre-flight passed" in out.stdout
    assert not (tmp_path / "mlflow.db").exists() and not list((tmp_path / "ray").glob("t-*"))


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -n` (root) for a loopback-only network namespace")
def test_on_a_three_node_cluster_files_missing_on_a_node_are_refused_naming_it(tmp_path, synth_path, tiny_encoder):
    """Head + two worker raylets; the second sees two folders empty (private mounts), as a machine that
    lacks a shared mount would: a copy of the data there is on the head and the first worker only."""
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml", synth_path, tiny_encoder, "http://127.0.0.1:1", tmp_path / "shared-storage", SPACE
    )
    report = run_in_netns("preflight", pipeline, tmp_path / "cluster", timeout_s=600)
    assert "error" not in report, report
    workers = report["worker_nodes"]
    assert len(workers) == 2 and report["nodes_joined"] == 3
    good, bad_data, bad_storage = report["good"], report["data_on_head_only"], report["storage_not_shared"]
    assert good["rc"] == 0, good["output"][-3000:]
    assert "3 node(s)" in good["output"] and "is shared by all 3 nodes" in good["output"]
    assert bad_data["rc"] == 2, bad_data["output"][-3000:]
    assert "is not the same file on every node" in bad_data["output"] and workers[1][:12] in bad_data["output"]
    assert workers[0][:12] not in bad_data["output"].split("is not the same file")[1]
    assert bad_storage["rc"] == 2, bad_storage["output"][-3000:]
    assert "is not shared" in bad_storage["output"] and workers[1][:12] in bad_storage["output"]
    assert "s3://" in bad_storage["output"]
