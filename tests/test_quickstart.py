"""The README's main job as a user runs it, from an empty folder with the pipeline given by its
absolute path: `sati search`, `sati promote`, `sati evaluate` on the embedded defaults (local Ray,
./mlflow.db, generated data, the real all-MiniLM-L6-v2 encoder shipped on PyPI), made small."""

from __future__ import annotations

from pathlib import Path

import pytest

from sati.testing.processes import run_sati

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--set", "search.num_samples=2",
    "--set", "train.epochs=2",
    "--set", "data.generate_scale=0.05",
]  # fmt: skip


def test_quickstart_runs_from_any_folder(tmp_path):
    pipeline = REPO / "pipelines" / "quickstart.yaml"
    out = run_sati(["search", str(pipeline), *SMALL], cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    # inputs were read beside the pipeline file; outputs went to the working folder
    assert (tmp_path / "data" / "synth.h5").is_file() and (tmp_path / "mlflow.db").is_file()
    assert list((tmp_path / "runs" / "search").glob("quickstart-*"))
    assert f"sqlite:///{tmp_path / 'mlflow.db'}" in out.stdout

    out = run_sati(["promote", "sati-quickstart"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sati-quickstart v1 is now 'champion'" in out.stdout

    out = run_sati(["evaluate", "models:/sati-quickstart@champion", "--split", "test"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| clean |" in out.stdout and (tmp_path / "evaluation").is_dir()
