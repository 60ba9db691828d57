"""Shared fixtures: an offline tiny text encoder, a small generated dataset, and small configs
(the helpers behind them are in ``sati.testing``, shared with the benchmarks)."""

from __future__ import annotations

import os
import secrets

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the key searches sign their storage with (sati.search.search_key): the tests never touch a user's key file
os.environ.setdefault("SATI_SEARCH_KEY", secrets.token_hex(32))

from pathlib import Path

import pytest
import yaml

from sati.config import PipelineConfig, from_dict
from sati.data.synth import write_synthetic
from sati.testing.pipelines import small_pipeline
from sati.testing.processes import NOT_INHERITED
from sati.testing.tiny_encoder import build_tiny_text_encoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _tracking_uri_stays_in_its_test():
    """A command run in-process sets MLflow's global tracking and registry URIs (and exports them as
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI): reset both, so the next test's ``MlflowClient(uri)``
    does not send registry calls to a server that is gone."""
    saved = {k: os.environ.get(k) for k in NOT_INHERITED}
    yield
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A random tiny RoBERTa + a BPE tokenizer trained on the fly, saved with save_pretrained."""
    return build_tiny_text_encoder(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def synth_path(tmp_path_factory) -> Path:
    """A MOSI-like generated dataset at 30 % of MOSI's size (385 / 69 / 206)."""
    path = tmp_path_factory.mktemp("data") / "synth.h5"
    write_synthetic(path, "mosi", seed=0, scale=0.3)
    return path


def small_config(tmp_path: Path, data_path: Path, encoder: Path, **sections) -> dict:
    """A pipeline mapping for a fast CPU run writing to ``tmp_path/run``; ``sections`` update it."""
    train = {"out_dir": str(tmp_path / "run"), **sections.pop("train", {})}
    return small_pipeline(data_path, encoder, train=train, **sections)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 for the module; pyarrow in this process gets its credentials."""
    from sati.testing.servers import S3Server, s3_server_missing

    missing = s3_server_missing()
    if missing:
        pytest.skip(missing)
    server = S3Server(tmp_path_factory.mktemp("s3-server"))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)  # pyarrow in this process reads its credentials from the environment
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def make_config(tmp_path, synth_path, tiny_encoder):
    """Build a validated PipelineConfig for a fast run (``make_config(train={"epochs": 3})``)."""

    def build(**sections) -> PipelineConfig:
        return from_dict(small_config(tmp_path, synth_path, tiny_encoder, **sections), "test")

    return build


@pytest.fixture
def write_pipeline(tmp_path, synth_path, tiny_encoder):
    """Write a small pipeline YAML and return its path."""

    def write(name: str = "pipeline.yaml", **sections) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(small_config(tmp_path, synth_path, tiny_encoder, **sections)))
        return path

    return write


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skip them where torch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
