"""Helpers for the search tests: a real `mlflow server` on 127.0.0.1 and `sati search` runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def loopback_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: offline, no telemetry, Ray on loopback only."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        TOKENIZERS_PARALLELISM="false",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` bound to 127.0.0.1 with a SQLite store and proxied artifacts."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.log = open(root / "server.log", "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=loopback_env(),
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start; see {root / 'server.log'}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def write_search_pipeline(
    path: Path, data: Path, encoder: Path, uri: str, storage: Path, space: dict, **sections
) -> Path:
    """A small search pipeline: tiny text encoder, few epochs, its own space file."""
    space_path = path.with_name(path.stem + "_space.yaml")
    space_path.write_text(yaml.safe_dump(space))
    raw = {
        "name": "t",
        "seed": 7,
        "data": {"path": str(data)},
        "model": {
            "text_encoder": str(encoder),
            "hidden_size": 32,
            "encoder_feedforward": 64,
            "fusion_feedforward": 64,
            "fbp_hidden": 8,
            "dropout": 0.1,
            "reverse_grad_weight": 0.1,
        },
        "train": {"epochs": 3, "batch_size": 32, "lr": 2.0e-3, "device": "cpu", "patience": 0},
        "search": {
            "space": str(space_path),
            "num_samples": 4,
            "max_concurrent": 2,
            "scheduler": "asha",
            "reduction_factor": 2,
            "storage_path": str(storage),
            "max_failures": 0,
        },
        "tracking": {"uri": uri, "experiment": "test-search"},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


def run_sati(args: list[str], cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sati.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=loopback_env(**env),
    )
