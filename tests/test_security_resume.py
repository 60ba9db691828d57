"""Resume trusts nothing on shared storage (issue 18): a pickle planted in a search folder never runs,
a resume reads only below the configured storage and logs only where the user points it, and a study
password is written nowhere. Real Ray, MLflow (a SQLite store), a moto S3 server and Postgres."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sati.search.search_key import KEY_ENV, SearchKeyError, active_key, key_file, search_key
from sati.search.signed_storage import MAC_SUFFIX, UnverifiedFileError, signed_filesystem, verify_experiment
from sati.search.state import STATE_FILE, read_search_state, write_search_state
from sati.storage import join as join_uri
from sati.testing.pipelines import write_search_pipeline
from sati.testing.processes import loopback_env, run_sati
from sati.testing.searches import child_runs, parent_run_id
from sati.testing.servers import Postgres, postgres_missing
from sati.tracking.contract import SEARCH_DIR
from tests.conftest import REPO


class _Touches:
    """A pickle that, when loaded, creates ``marker``: what an attacker's payload would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "a")


@contextlib.contextmanager
def _planted(path: Path, data: bytes):
    """``path`` holds ``data`` for the block; what was there before comes back after."""
    before = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    try:
        yield path
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_bytes(before)


# ---------------------------------------------------------------------------------------------
# The key (fast)


@pytest.fixture
def own_key_file(tmp_path, monkeypatch):
    """No $SATI_SEARCH_KEY: the key comes from the key file under a private $XDG_CONFIG_HOME."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr("sati.search.search_key._active", None)  # as in a process that loaded no key yet
    return key_file()


def test_the_key_file_is_made_private_on_first_use_and_kept(own_key_file):
    first = search_key()
    assert own_key_file == own_key_file.parent.parent / "sati" / "search.key" and own_key_file.is_file()
    assert stat.S_IMODE(own_key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(own_key_file.parent.stat().st_mode) == 0o700
    assert search_key() == first and first.source == str(own_key_file)
    assert first.id not in own_key_file.read_text() and first.secret.decode() not in repr(first)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_key_file_others_can_read_or_write_is_refused(own_key_file, mode):
    search_key()
    own_key_file.chmod(mode)
    with pytest.raises(SearchKeyError) as err:
        search_key()
    assert str(own_key_file) in str(err.value) and f"mode {mode:03o}" in str(err.value)


def test_a_process_that_loaded_no_key_never_makes_one(own_key_file):
    """A trial, or Ray Client's Tune driver on the head node: it finds a key, or refuses; it never creates one."""
    with pytest.raises(SearchKeyError, match="x.pkl: no search key in this process"):
        active_key("x.pkl")
    assert not own_key_file.exists()
    first = search_key()
    assert active_key("x.pkl") == first


def test_a_short_key_is_refused(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "too-short")
    with pytest.raises(SearchKeyError, match=r"\$SATI_SEARCH_KEY: a search key needs at least 32 characters"):
        search_key()


# ---------------------------------------------------------------------------------------------
# Signed storage on a local disk and in S3 (fast)


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path):
    """A search storage: a local folder, or a prefix in a moto S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "searches")
    server = request.getfixturevalue("s3_server")
    return server.storage_uri(f"signed/{tmp_path.name}")


def _write(location: str, name: str, data: bytes) -> None:
    fs, root = signed_filesystem(location)
    fs.create_dir(posix_parent(f"{root}/{name}"), recursive=True)
    with fs.open_output_stream(f"{root}/{name}") as f:
        f.write(data)


def _read(location: str, name: str) -> bytes:
    fs, root = signed_filesystem(location)
    with fs.open_input_stream(f"{root}/{name}") as f:
        return f.read()


def _raw(location: str, name: str, data: bytes | None = None) -> bytes | None:
    """Read (or with ``data``, write) a file as an attacker with write access would: no signing; None
    when it is missing."""
    from sati.storage import filesystem

    fs, root = filesystem(location)
    path = f"{root}/{name}"
    if data is None:
        if fs.get_file_info(path).type.name != "File":
            return None
        with fs.open_input_stream(path) as f:
            return f.read()
    fs.create_dir(posix_parent(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)
    return None


def posix_parent(path: str) -> str:
    return path.rsplit("/", 1)[0]


def test_signed_files_read_back_and_changed_or_planted_ones_are_refused_naming_them(storage_root, monkeypatch):
    _write(storage_root, "exp/tuner.pkl", b"state one")
    _write(storage_root, "exp/tuner.pkl", b"state two")
    assert _read(storage_root, "exp/tuner.pkl") == b"state two"
    _write(storage_root, "exp/trial_1/result.json", b"{}")  # trial results are data: not signed
    assert _raw(storage_root, "exp/trial_1/result.json" + MAC_SUFFIX) is None
    assert _raw(storage_root, "exp/tuner.pkl" + MAC_SUFFIX) is not None
    assert verify_experiment(storage_root, "exp") == 1

    where = join_uri(storage_root, "exp", "tuner.pkl")
    _raw(storage_root, "exp/tuner.pkl", b"state evil")
    with pytest.raises(UnverifiedFileError) as err:
        _read(storage_root, "exp/tuner.pkl")
    assert str(err.value) == f"{where}: refusing to load it: its MAC does not match: it changed after sati wrote it"

    _raw(storage_root, "exp/searcher-state-2099.pkl", pickle.dumps("planted"))
    with pytest.raises(UnverifiedFileError) as err:
        _read(storage_root, "exp/searcher-state-2099.pkl")
    planted = join_uri(storage_root, "exp", "searcher-state-2099.pkl")
    assert str(err.value).startswith(f"{planted}: refusing to load it: it has no MAC (searcher-state-2099.pkl.mac")

    _write(storage_root, "exp/tuner.pkl", b"state three")
    monkeypatch.setenv(KEY_ENV, "another user's key, at least 32 characters long")
    with pytest.raises(UnverifiedFileError, match="signed with another search key"):
        _read(storage_root, "exp/tuner.pkl")


def test_a_file_signed_under_one_name_is_refused_under_another(storage_root):
    _write(storage_root, "exp/searcher-state-1.pkl", b"searcher")
    signed = _raw(storage_root, "exp/searcher-state-1.pkl")
    _raw(storage_root, "exp/callback-states-1.pkl", signed)
    _raw(storage_root, "exp/callback-states-1.pkl" + MAC_SUFFIX, _raw(storage_root, "exp/searcher-state-1.pkl.mac"))
    with pytest.raises(UnverifiedFileError, match="its MAC does not match"):
        _read(storage_root, "exp/callback-states-1.pkl")


_WRITER = """
import sys
from sati.search.signed_storage import signed_filesystem
location, name = sys.argv[1:]
fs, root = signed_filesystem(location)
n = 0
while True:
    n += 1
    with fs.open_output_stream(f"{root}/{name}") as f:
        f.write(f"version {n} ".encode() * (1 + n * 7919 % 5000))
    if n == 1:
        print("ready", flush=True)
"""


def test_a_driver_killed_at_any_moment_leaves_a_state_that_verifies(storage_root):
    """SIGKILL a process that keeps rewriting a signed file (a driver snapshotting), at random moments:
    every time, the file left verifies (its MAC is written before it, and both writes are atomic)."""
    name = "exp/experiment_state-1.json"
    _write(storage_root, name, b"version 0")
    rng = random.Random(18)
    versions = set()
    for _ in range(5):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, storage_root, name], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.0))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        versions.add(_read(storage_root, name)[:14])  # verifies, or raises UnverifiedFileError
    assert len(versions) > 1  # the kills landed at different versions


_UPLOAD = """
import sys
from pathlib import Path
import pyarrow, pyarrow.fs
from sati.search.signed_storage import signed_filesystem
pyarrow.set_io_thread_count(2)  # fewer IO threads than signed files: what a search with many trials meets
location, src = sys.argv[1:]
fs, root = signed_filesystem(location)
fs.create_dir(f"{root}/exp", recursive=True)
pyarrow.fs.copy_files(src, f"{root}/exp", destination_filesystem=fs)  # as Tune's syncer uploads
print("uploaded", flush=True)
"""


def test_tune_uploads_more_signed_files_than_io_threads_to_s3(s3_server, tmp_path):
    """Tune uploads the driver's staging folder with ``copy_files``, closing each file on Arrow's IO
    pool; an S3 stream uploading in the background there would wait for the pool it blocks (a hang)."""
    for t in range(12):
        (tmp_path / f"trial_{t}").mkdir()
        (tmp_path / f"trial_{t}" / "params.pkl").write_bytes(pickle.dumps({"trial": t}))
    location = s3_server.storage_uri(f"upload/{tmp_path.name}")
    out = subprocess.run(
        [sys.executable, "-c", _UPLOAD, location, str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=loopback_env(**s3_server.env),
    )  # fmt: skip
    assert out.returncode == 0 and "uploaded" in out.stdout, out.stderr[-2000:]
    assert verify_experiment(location, "exp") == 12


# ---------------------------------------------------------------------------------------------
# A real search: pickles planted in its folder never run, its state file is trusted only as signed


def _two_trials(cwd: Path, data: Path, encoder: Path) -> Path:
    """A pipeline of 2 one-epoch trials, its storage in ``cwd/searches``, tracked in ``cwd/mlflow.db``."""
    return write_search_pipeline(
        cwd / "p.yaml", data, encoder, f"sqlite:///{cwd / 'mlflow.db'}", cwd / "searches",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        search={"num_samples": 2, "scheduler": "fifo"}, train={"epochs": 1},
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, synth_path, tiny_encoder):
    """A finished 2-trial search, its storage in ``<cwd>/searches``, tracked in ``<cwd>/mlflow.db`` (the
    default a resume from that folder finds)."""
    cwd = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    out = run_sati(["search", str(_two_trials(cwd, synth_path, tiny_encoder))], cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    parent = parent_run_id(out.stdout)
    name = MlflowClient(uri).get_run(parent).info.run_name
    return {"cwd": cwd, "uri": uri, "parent": parent, "name": name, "dir": cwd / "searches" / name}


def _resume(search, *args: str, command: str = "search"):
    return run_sati([command, "--resume", *args], cwd=search["cwd"], timeout=600)


def _trial_dir(search) -> Path:
    return next(p for p in search["dir"].iterdir() if p.is_dir() and p.name.startswith("train_trial"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "planted",
    ["tuner.pkl", "searcher-state-2099-01-01_00-00-00.pkl", "callback-states-2099-01-01_00-00-00.pkl", "error.pkl"],
)
def test_a_pickle_planted_in_the_search_folder_never_runs_at_resume(finished_search, tmp_path, planted):
    marker = tmp_path / "pwned"
    folder = _trial_dir(finished_search) if planted == "error.pkl" else finished_search["dir"]
    with _planted(folder / planted, pickle.dumps(_Touches(marker))):
        for target in (str(finished_search["dir"]), finished_search["parent"]):
            out = _resume(finished_search, target, "--tracking-uri", finished_search["uri"])
            assert out.returncode == 2, out.stderr[-3000:]
            assert f"error: {folder / planted}: refusing to load it: " in out.stderr  # no MAC, or not its own
            assert not marker.exists()


@pytest.mark.slow
def test_cloudpickle_planted_in_an_experiment_state_json_never_runs(finished_search, tmp_path):
    """Ray's experiment_state-*.json may embed cloudpickle; the newest by name is the one Tune restores."""
    marker = tmp_path / "pwned"
    payload = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(_Touches(marker)).hex()}
    state = {"trial_data": [], "runner_data": {"x": payload}, "stats": {}}
    planted = finished_search["dir"] / "experiment_state-2099-01-01_00-00-00.json"
    with _planted(planted, json.dumps(state).encode()):
        out = _resume(finished_search, str(finished_search["dir"]))
    assert out.returncode == 2 and f"error: {planted}: refusing to load it: it has no MAC" in out.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_tune_itself_reads_the_state_through_the_check(finished_search, tmp_path):
    """A file swapped after the pre-check (a race) is refused all the same: Tune reads through the MAC
    check and gets the bytes that were checked."""
    from sati.search.tuner import restore_tuner

    marker = tmp_path / "pwned"
    planted = _planted(finished_search["dir"] / "tuner.pkl", pickle.dumps(_Touches(marker)))
    with planted, pytest.raises(UnverifiedFileError, match="tuner.pkl: refusing to load it"):
        restore_tuner(str(finished_search["cwd"] / "searches"), finished_search["name"], lambda c: None, False)
    assert not marker.exists()


@pytest.mark.slow
def test_an_edited_state_file_is_refused(finished_search):
    state_file = finished_search["dir"] / STATE_FILE
    edited = state_file.read_text().replace(finished_search["uri"], "http://127.0.0.1:1")
    with _planted(state_file, edited.encode()):
        out = _resume(finished_search, str(finished_search["dir"]))
    assert out.returncode == 2
    assert f"error: {state_file}: refusing to load it: its MAC does not match" in out.stderr


@contextlib.contextmanager
def _listener():
    """A TCP port on 127.0.0.1 that counts the connections made to it (a server that would collect
    MLflow credentials)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    seen: list = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                seen.append(conn.recv(4096))
                conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    finally:
        stop.set()
        thread.join()
        server.close()


@pytest.fixture
def signed_state(finished_search):
    """Rewrite the search's state (signed, as the user's own driver would) for the test; put it back."""
    original = read_search_state(finished_search["dir"])
    yield lambda **changes: write_search_state(finished_search["dir"], {**original, **changes})
    write_search_state(finished_search["dir"], original)


@pytest.mark.slow
def test_a_state_file_naming_another_tracking_server_is_refused_and_never_contacted(finished_search, signed_state):
    with _listener() as (attacker, seen):
        signed_state(tracking_uri=attacker)
        out = _resume(finished_search, str(finished_search["dir"]))
        assert out.returncode == 2, out.stderr[-3000:]
        assert f"says the search logs to MLflow at {attacker}, but your tracking URI is {finished_search['uri']}" in (
            out.stderr
        )
        assert f"pass --tracking-uri {attacker}" in out.stderr
        out = _resume(finished_search, finished_search["parent"], "--tracking-uri", finished_search["uri"])
        assert out.returncode == 2 and f"logs to MLflow at {attacker}" in out.stderr
    assert seen == []  # no request, so no credentials, went there


@pytest.mark.slow
@pytest.mark.parametrize("escape", ["../elsewhere", "/tmp/elsewhere", "s3://other-bucket/x"])
def test_experiments_outside_the_storage_are_refused(finished_search, signed_state, tmp_path, escape):
    marker = tmp_path / "pwned"
    outside = finished_search["cwd"] / "elsewhere"  # where "../elsewhere" leads
    name = finished_search["name"]
    with _planted(outside / "tuner.pkl", pickle.dumps(_Touches(marker))):
        signed_state(experiments=[name, escape])
        out = _resume(finished_search, str(finished_search["dir"]))
    shutil.rmtree(outside, ignore_errors=True)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"experiments = ['{escape}']: each must be a folder name in {finished_search['cwd'] / 'searches'}" in (
        out.stderr
    )
    assert not marker.exists()


@pytest.mark.slow
def test_a_state_naming_another_storage_is_refused(finished_search, signed_state, tmp_path):
    other = tmp_path / "other-storage"
    original = read_search_state(finished_search["dir"])
    signed_state(
        pipeline={**original["pipeline"], "search": {**original["pipeline"]["search"], "storage_path": str(other)}}
    )
    out = _resume(finished_search, str(finished_search["dir"]))
    assert out.returncode == 2
    assert f"its search.storage_path = {other} is not the storage the search directory lies in" in out.stderr


@pytest.mark.slow
def test_a_search_dir_tag_pointing_elsewhere_is_refused(finished_search, tmp_path):
    """Anyone with EDIT on the experiment can change the tag sati.search_dir; a resume by run id follows it
    only into the storage the run's (unchangeable) search.storage_path names, to a state of that run."""
    client = MlflowClient(finished_search["uri"])
    parent, name = finished_search["parent"], finished_search["name"]
    tagged = client.get_run(parent).data.tags[SEARCH_DIR]
    storage = finished_search["cwd"] / "searches"
    copy = tmp_path / "copied" / name
    shutil.copytree(finished_search["dir"], copy)  # a valid, signed search folder, in another storage
    sibling = storage / f"{name}-sibling"
    write_search_state(sibling, {**read_search_state(finished_search["dir"]), "parent_run_id": "0" * 32})
    try:
        for elsewhere, why in [
            (str(copy), f"is not a folder directly in the search's storage (search.storage_path = {storage})"),
            (f"{storage}/../copied/{name}", "'.' and '..' are not allowed in it"),
            (str(sibling), f"belongs to MLflow run {'0' * 32}, not to run {parent}"),
        ]:
            client.set_tag(parent, SEARCH_DIR, elsewhere)
            out = _resume(finished_search, parent, "--tracking-uri", finished_search["uri"])
            assert out.returncode == 2, out.stderr[-3000:]
            assert why in out.stderr, out.stderr[-2000:]
    finally:
        client.set_tag(parent, SEARCH_DIR, tagged)
        shutil.rmtree(sibling)


@pytest.mark.slow
def test_resume_changes_nothing_but_the_study_url(finished_search):
    out = _resume(finished_search, str(finished_search["dir"]), "--set", "train.lr=0.1")
    assert out.returncode == 2
    assert "only search.study_storage may be set; train.lr cannot change" in out.stderr


@pytest.mark.slow
def test_an_untampered_search_resumes_from_its_folder_alone(finished_search):
    """What a user who has only the search folder types, from where the search ran: it resumes."""
    out = _resume(finished_search, str(finished_search["dir"]))
    assert out.returncode == 0, out.stderr[-3000:]
    assert parent_run_id(out.stdout) == finished_search["parent"]
    out = _resume(finished_search, finished_search["parent"])  # by run id: the default store is the same
    assert out.returncode == 0, out.stderr[-3000:]


def test_a_pickle_planted_in_a_reproduction_never_runs_at_resume(tmp_path):
    """``sati reproduce --resume`` restores a Tune experiment too: the same check."""
    marker, search_dir = tmp_path / "pwned", tmp_path / "searches" / "r-1"
    state = {"kind": "reproduction", "parent_run_id": "a" * 32, "name": "r-1"}
    state |= {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "pipeline": {"search": {"storage_path": str(search_dir.parent)}},
    }
    write_search_state(search_dir, state)
    (search_dir / "tuner.pkl").write_bytes(pickle.dumps(_Touches(marker)))
    out = run_sati(["reproduce", "--resume", str(search_dir)], cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"error: {search_dir / 'tuner.pkl'}: refusing to load it: it has no MAC" in out.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Object storage: no bucket, endpoint or path switch (fast)


def _s3_state(server, prefix: str, name: str, cwd: Path, storage_path: str) -> str:
    """A signed state for search ``name`` in ``s3://<bucket>/<prefix>/<name>`` that names ``storage_path``."""
    root = server.storage_uri(prefix)
    search_dir = join_uri(root, name)
    pipeline = {"search": {"storage_path": storage_path}}
    write_search_state(
        search_dir,
        {
            "parent_run_id": "a" * 32,
            "tracking_uri": f"sqlite:///{cwd / 'mlflow.db'}",
            "pipeline": pipeline,
            "name": name,
        },
    )
    return search_dir


@pytest.mark.parametrize(
    "switch",
    [
        lambda uri: uri.replace("s3://sati-test/", "s3://other-bucket/"),
        lambda uri: uri.replace("endpoint_override=127.0.0.1", "endpoint_override=localhost"),
        lambda uri: uri.replace("s3://", "gs://"),
    ],
    ids=["bucket", "endpoint", "scheme"],
)
def test_an_s3_state_that_switches_bucket_endpoint_or_scheme_is_refused(s3_server, tmp_path, switch):
    root = s3_server.storage_uri(f"switch/{tmp_path.name}")
    search_dir = _s3_state(s3_server, f"switch/{tmp_path.name}", "s-1", tmp_path, switch(root))
    out = run_sati(["search", "--resume", search_dir], cwd=tmp_path, timeout=300, **s3_server.env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"its search.storage_path = {switch(root)} is not the storage the search directory lies in" in out.stderr


def test_a_pickle_planted_in_an_s3_search_never_runs(s3_server, tmp_path):
    marker = tmp_path / "pwned"
    prefix = f"planted/{tmp_path.name}"
    search_dir = _s3_state(s3_server, prefix, "s-1", tmp_path, s3_server.storage_uri(prefix))
    with s3_server.filesystem().open_output_stream(f"{s3_server.bucket}/{prefix}/s-1/tuner.pkl") as f:
        f.write(pickle.dumps(_Touches(marker)))
    out = run_sati(["search", "--resume", search_dir], cwd=tmp_path, timeout=300, **s3_server.env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"error: {join_uri(search_dir, 'tuner.pkl')}: refusing to load it: it has no MAC" in out.stderr
    assert not marker.exists()


def test_a_typed_s3_folder_with_dot_dot_is_refused(s3_server, tmp_path):
    root = s3_server.storage_uri(f"dots/{tmp_path.name}")
    _s3_state(s3_server, f"dots/{tmp_path.name}", "s-1", tmp_path, root)
    typed = root.replace(f"dots/{tmp_path.name}", f"dots/x/../{tmp_path.name}/s-1")
    out = run_sati(["search", "--resume", typed], cwd=tmp_path, timeout=300, **s3_server.env)
    assert out.returncode == 2 and "'.' and '..' are not allowed in it" in out.stderr, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# The study password is written nowhere, and trials never get it


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    missing = postgres_missing()
    if missing:
        pytest.skip(missing)
    server = Postgres(loopback_env(), tmp_path_factory.mktemp("postgres"))
    server.wait_ready()
    yield server
    server.stop()


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.slow
def test_the_study_password_is_written_nowhere_and_given_again_to_extend(postgres, tmp_path, synth_path, tiny_encoder):
    password = "pw-" + os.urandom(8).hex()
    study_url = f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{postgres.port}/mlflow"  # trust auth
    masked = f"postgresql+psycopg2://postgres:***@127.0.0.1:{postgres.port}/mlflow"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline = _two_trials(tmp_path, synth_path, tiny_encoder)
    env = {"SATI_STUDY_STORAGE": ""}
    out = run_sati(["search", str(pipeline), "--set", f"search.study_storage={study_url}"], cwd=tmp_path, **env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert password not in out.stdout + out.stderr and f"optuna-dashboard {masked}" in out.stdout
    client = MlflowClient(uri)
    parent = parent_run_id(out.stdout)
    trials = child_runs(client, parent)
    assert len(trials) == 2
    for run in trials:
        assert password not in json.dumps(run.data.params)
        assert run.data.params.get("search.study_storage") in (None, "None")  # trials get no study URL
        rerun = Path(client.download_artifacts(run.info.run_id, "rerun.json", str(tmp_path / run.info.run_id)))
        assert (
            password not in rerun.read_text()
            and json.loads(rerun.read_text())["config"]["search"]["study_storage"] is None
        )
    assert client.get_run(parent).data.params["search.study_storage"] == masked
    state = json.loads((tmp_path / "searches" / client.get_run(parent).info.run_name / STATE_FILE).read_text())
    assert state["study_storage"] == masked and state["pipeline"]["search"]["study_storage"] == masked
    # not in the state files, Ray's pickles (tuner, searcher, callbacks), checkpoints or the MLflow store
    assert _files_holding(tmp_path, password.encode()) == []

    # the extension needs the URL again, and gets it from the environment (no password on a command line)
    out = run_sati(["search", "--extend", parent, "--set", "search.num_samples=1"], cwd=tmp_path, **env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"keeps its Optuna study in {masked}: sati never writes its password down" in out.stderr
    out = run_sati(["search", "--extend", parent, "--set", "search.num_samples=1"], cwd=tmp_path,
                   SATI_STUDY_STORAGE=study_url)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert password not in out.stdout + out.stderr
    import optuna

    name = client.get_run(parent).info.run_name
    assert len(optuna.load_study(study_name=name, storage=study_url).trials) == 3  # one study, TPE went on
    assert _files_holding(tmp_path, password.encode()) == []


def test_a_pickled_study_storage_holds_no_password_and_needs_it_given(postgres):
    from sati.search.study import rdb_storage

    password = "pw-" + os.urandom(8).hex()
    url = f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{postgres.port}/mlflow"
    dumped = pickle.dumps(rdb_storage(url))
    assert password.encode() not in dumped
    assert pickle.loads(dumped).url == url  # this process was given it
    code = f"import pickle; pickle.loads(bytes.fromhex({dumped.hex()!r}))"  # a process never given the URL
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=loopback_env(), cwd=REPO)
    assert out.returncode != 0 and "give its URL with the password" in out.stderr and password not in out.stderr
