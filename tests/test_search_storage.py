"""A search whose experiment state lives in object storage (``s3://…``): the state file goes beside
Tune's, and ``sati search --resume`` finds it there. A real S3-compatible server (moto) and a real
``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import pyarrow.fs
import pytest
from mlflow.tracking import MlflowClient

from sati.search.state import STATE_FILE, as_search_dir, read_search_state, write_search_state
from sati.storage import join as join_uri
from sati.storage import split as split_uri
from sati.testing.pipelines import write_search_pipeline
from sati.testing.processes import run_sati
from sati.testing.searches import assert_resumed_cleanly, crash_after_first_epoch, parent_run_id
from sati.testing.servers import MlflowServer, S3Server
from sati.tracking.store import TrackingError


def _keys(server: S3Server, prefix: str) -> set[str]:
    """Every object under ``<bucket>/<prefix>``, as a key relative to the prefix."""
    base = f"{server.bucket}/{prefix}"
    infos = server.filesystem().get_file_info(pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base) + 1 :] for i in infos if i.type == pyarrow.fs.FileType.File}


# ---------------------------------------------------------------------------------------------
# sati.search.state (fast)


def test_state_round_trip_on_a_local_dir(tmp_path):
    state = {"parent_run_id": "abc", "tracking_uri": "http://127.0.0.1:1", "pipeline": {"name": "t"}, "name": "t-1"}
    write_search_state(tmp_path / "search", state)
    assert read_search_state(tmp_path / "search") == state
    assert sorted(p.name for p in (tmp_path / "search").iterdir()) == [STATE_FILE, f"{STATE_FILE}.mac"]  # no temp file
    assert as_search_dir(str(tmp_path / "search")) == str((tmp_path / "search").resolve())


def test_state_round_trip_on_s3(s3_server):
    search_dir = join_uri(s3_server.storage_uri("unit"), "t-1")
    assert as_search_dir(search_dir) == search_dir
    state = {"parent_run_id": "abc", "name": "t-1", "pipeline": {"search": {"storage_path": search_dir}}}
    write_search_state(search_dir, state)
    assert read_search_state(search_dir) == state
    assert _keys(s3_server, "unit") == {f"t-1/{STATE_FILE}", f"t-1/{STATE_FILE}.mac"}  # the state and its MAC


def test_missing_state_names_the_search_dir(tmp_path, s3_server):
    with pytest.raises(TrackingError) as err:
        read_search_state(tmp_path)
    assert str(err.value) == f"{tmp_path}: not a sati search directory (no {STATE_FILE})"
    uri = join_uri(s3_server.storage_uri("unit"), "nothing-here")
    with pytest.raises(TrackingError) as err:
        read_search_state(uri)
    assert str(err.value) == f"{uri}: not a sati search directory (no {STATE_FILE})"
    assert as_search_dir("0123456789abcdef") is None  # a run id: not a directory


def test_resume_takes_a_uri_as_the_search_dir(tmp_path, s3_server):
    uri = join_uri(s3_server.storage_uri("unit"), "not-a-search")
    out = run_sati(["search", "--resume", uri], cwd=tmp_path, timeout=120, **s3_server.env)
    assert out.returncode == 2
    assert f"{uri}: not a sati search directory (no {STATE_FILE})" in out.stderr


@pytest.mark.parametrize(
    "base, joined",
    [
        (
            "s3://b/p?scheme=http&endpoint_override=127.0.0.1:9000",
            "s3://b/p/name?scheme=http&endpoint_override=127.0.0.1:9000",
        ),
        ("s3://b/p/?scheme=http", "s3://b/p/name?scheme=http"),
        ("s3://b", "s3://b/name"),
        ("gs://b/x/", "gs://b/x/name"),
        ("file:///tmp/a", "file:///tmp/a/name"),
        ("/tmp/a/", "/tmp/a/name"),
    ],
)
def test_join_keeps_the_query_string_as_tune_does(base, joined):
    assert join_uri(base, "name") == joined
    uri_utils = pytest.importorskip("ray.air._internal.uri_utils")
    assert str(uri_utils.URI(base) / "name") == joined  # what Tune makes of storage_path + name
    restored = uri_utils.URI(joined)  # what Tuner.restore makes of the search dir
    assert (restored.name, str(restored.parent)) == ("name", join_uri(base))
    assert split_uri(joined) == (join_uri(base), "name")  # where a resume looks for the storage of a search


# ---------------------------------------------------------------------------------------------
# End to end (slow): real Ray, Optuna, MLflow server and S3 server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def _local_files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.slow
def test_search_in_s3_resumes_from_its_state_in_the_bucket(
    tmp_path, synth_path, tiny_encoder, mlflow_server, s3_server
):
    prefix = f"searches/{tmp_path.name}"
    storage = s3_server.storage_uri(prefix)
    pipeline = write_search_pipeline(
        tmp_path / "p.yaml",
        synth_path,
        tiny_encoder,
        mlflow_server.uri,
        storage,
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        search={"num_samples": 4, "scheduler": "fifo", "storage_path": storage},
        train={"epochs": 4},
    )
    ours = {"p.yaml", "p_space.yaml", "first.log"}  # all that the test itself writes here
    client = MlflowClient(mlflow_server.uri)
    parent_id = crash_after_first_epoch(
        pipeline, tmp_path, client, f"s3://{s3_server.bucket}/{prefix}", **s3_server.env
    )
    assert client.get_run(parent_id).info.status == "RUNNING"  # the crash left it open
    in_bucket, on_disk = _keys(s3_server, prefix), _local_files(tmp_path)

    out = run_sati(
        ["search", "--resume", parent_id, "--tracking-uri", mlflow_server.uri], cwd=tmp_path, **s3_server.env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    name = client.get_run(parent_id).info.run_name
    assert client.get_run(parent_id).data.tags["sati.search_dir"] == join_uri(storage, name)  # Tune's own dir
    assert f"{name}/{STATE_FILE}" in in_bucket, sorted(in_bucket)  # written beside Tune's state, in the bucket
    assert f"{name}/tuner.pkl" in in_bucket, sorted(in_bucket)
    assert on_disk == ours  # nothing of the search on the local disk here
    assert _local_files(tmp_path) == ours
    assert parent_run_id(out.stdout) == parent_id
    assert_resumed_cleanly(client, parent_id, trials=4, epochs=4)
