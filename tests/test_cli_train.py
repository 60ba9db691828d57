"""`sati train` as a user runs it: it learns, prints the paper's table, and names its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sati.cli import main
from sati.data.h5format import read_split


@pytest.mark.slow
def test_train_learns_well_below_the_mean_baseline(write_pipeline, synth_path, capsys):
    pipeline = write_pipeline(train={"epochs": 10, "batch_size": 32, "lr": 2.0e-3})
    assert main(["train", str(pipeline), "--set", "loss.temporal_weight=10.0"]) == 0
    out = capsys.readouterr().out
    train, valid = read_split(synth_path, "train"), read_split(synth_path, "valid")
    baseline = float(np.mean(np.abs(valid.labels - train.labels.mean())))
    final = [line for line in out.splitlines() if line.startswith("| valid |")]
    assert len(final) == 1
    mae, corr = float(final[0].split("|")[2]), float(final[0].split("|")[3])
    assert mae < 0.9 * baseline and corr > 0.3, (mae, corr, baseline)
    assert "epoch 10/10" in out and "valid/mae" in out and "best checkpoint:" in out
    assert "| test |" not in out  # test only with --eval-test


def test_train_eval_test_adds_the_test_row(write_pipeline, capsys):
    pipeline = write_pipeline(train={"epochs": 1})
    assert main(["train", str(pipeline), "--eval-test"]) == 0
    out = capsys.readouterr().out
    assert "| valid |" in out and "| test |" in out
    header = next(line for line in out.splitlines() if line.startswith("| split"))
    for column in ("MAE", "Corr", "Acc-2 (has0/non0)", "F1 (has0/non0)", "Acc-7", "Acc-5"):
        assert column in header


def test_train_resume_from_last_checkpoint(write_pipeline, tmp_path, capsys):
    pipeline = write_pipeline(train={"epochs": 1})
    assert main(["train", str(pipeline)]) == 0
    capsys.readouterr()
    assert main(["train", str(pipeline), "--set", "train.epochs=2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "epoch 1/2" not in out


def test_train_reports_config_errors_by_name(write_pipeline, capsys):
    pipeline = write_pipeline()
    assert main(["train", str(pipeline), "--set", "train.learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.learning_rate'" in err and "did you mean 'train." in err


def test_train_reports_missing_data_and_bad_heads(write_pipeline, tmp_path, capsys):
    pipeline = write_pipeline(data={"path": str(tmp_path / "absent.h5")})
    assert main(["train", str(pipeline)]) == 2
    assert "absent.h5: dataset file not found" in capsys.readouterr().err
    pipeline = write_pipeline("heads.yaml", model={"audio_heads": 4})
    assert main(["train", str(pipeline)]) == 2
    assert "model.audio_heads = 4 does not divide the feature dim 74" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    sati = Path(sys.executable).parent / "sati"  # what `pip install` put beside the interpreter
    assert sati.is_file(), f"no console script at {sati}"
    out = subprocess.run([str(sati), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "train" in out.stdout and "data" in out.stdout


def test_a_tracking_uri_an_in_process_command_exported_does_not_reach_later_children(monkeypatch):
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI; a later `sati` child must use its own store."""
    import mlflow

    from sati.testing.processes import loopback_env

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri("http://127.0.0.1:1")
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1"  # what MLflow does
        assert "MLFLOW_TRACKING_URI" not in loopback_env()
        assert loopback_env(MLFLOW_TRACKING_URI="sqlite:///x.db")["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"
    finally:
        mlflow.set_tracking_uri(before)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
