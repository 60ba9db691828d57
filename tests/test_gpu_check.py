"""``benchmarks/gpu_check.py`` where there is no GPU: it says so in one line and stops at once, writing no
report; its helpers (the no-CUDA decision, nvidia-smi sampling with a fake nvidia-smi, ``--only``); and
(slow) its step 1 on the CPU through the hidden ``--device cpu --tiny`` options, whose report claims no GPU
figures."""

from __future__ import annotations

import importlib.util
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sati.testing.processes import loopback_env

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args: list[str], cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=loopback_env(**env),
    )


def _assert_no_cuda_line(proc: subprocess.CompletedProcess, folder: Path) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("no CUDA: ")
    assert "nothing to check here" in lines[0]
    assert "python benchmarks/gpu_check.py --out gpu_report.json" in lines[0]  # how to run it where there is one
    assert proc.stderr == ""
    assert list(folder.iterdir()) == []  # no report, no work folder: no figures are claimed


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here: the script would run the check")
def test_without_cuda_it_says_so_and_returns_at_once(tmp_path):
    out = tmp_path / "report.json"
    proc = _run(["--out", str(out)], tmp_path, timeout=60)
    _assert_no_cuda_line(proc, tmp_path)


def test_hidden_gpus_count_as_no_cuda(tmp_path):
    """Runs on any machine: CUDA_VISIBLE_DEVICES='' hides every GPU (this is how the test stays short there)."""
    proc = _run(["--out", str(tmp_path / "report.json")], tmp_path, timeout=60, CUDA_VISIBLE_DEVICES="")
    _assert_no_cuda_line(proc, tmp_path)
    assert "CUDA_VISIBLE_DEVICES" in proc.stdout


def test_torch_decides_where_a_gpu_device_file_exists(gpu_check, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpu_check, "_device_files", lambda: [])
    assert "no GPU device" in gpu_check.no_cuda_reason()
    monkeypatch.setattr(gpu_check, "_device_files", lambda: ["/dev/nvidia0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = gpu_check.no_cuda_reason()
    assert reason.startswith(f"torch {torch.__version__}") and "sees no GPU" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.no_cuda_reason() is None


def test_one_gpu_is_chosen(gpu_check, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_check.choose_gpu(None) == "0"
    assert gpu_check.choose_gpu("3") == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc, 2")
    assert gpu_check.choose_gpu(None) == "GPU-abc"


def test_nvidia_smi_output_is_parsed(gpu_check):
    assert gpu_check.parse_smi("37, 2048\n") == (37.0, 2048.0)
    assert gpu_check.parse_smi("37 %, 2048 MiB\n") == (37.0, 2048.0)  # csv with units
    assert gpu_check.parse_smi("0, [N/A]") == (0.0, None)
    assert gpu_check.parse_smi("[N/A], [N/A]") is None  # e.g. a MIG instance
    assert gpu_check.parse_smi("") is None


def _fake_smi(folder: Path, line: str) -> Path:
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\necho \"$@\" >> {folder / 'calls'}\necho '{line}'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_utilization_is_sampled_with_a_fake_nvidia_smi(gpu_check, tmp_path):
    sampler = gpu_check.SmiSampler("1", every_s=0.05, exe=str(_fake_smi(tmp_path, "37, 2048"))).start()
    time.sleep(0.6)
    sampler.stop()
    summary = sampler.summary()
    assert summary["samples"] >= 2, sampler.problem
    assert summary["utilization_mean"] == 37.0
    assert summary["memory_used_max_gb"] == round(2048 * 2**20 / 1e9, 2)
    assert "-i 1" in (tmp_path / "calls").read_text().splitlines()[0]  # the GPU the check uses, no other
    assert gpu_check.SmiSampler("1").summary(time.time() + 10)["samples"] == 0  # a window without samples


def test_unreadable_or_missing_nvidia_smi_gives_no_figure(gpu_check, tmp_path):
    sampler = gpu_check.SmiSampler("0", every_s=0.05, exe=str(_fake_smi(tmp_path, "[N/A], [N/A]"))).start()
    time.sleep(0.3)
    summary = sampler.stop().summary()
    assert summary["samples"] == 0 and summary["utilization_mean"] is None
    assert "unreadable" in summary["problem"]
    missing = gpu_check.SmiSampler("0", exe=None)
    missing.exe = None
    assert missing.start().stop().summary()["utilization_mean"] is None


def test_only_picks_steps_and_promotion_needs_a_search(gpu_check, capsys):
    assert gpu_check.parse_args(["--only", "step"]).steps == ["prepare", "step"]
    assert gpu_check.parse_args(["--only", "search,promote"]).steps == ["prepare", "search_1", "search_4", "promote"]
    assert gpu_check.parse_args([]).steps == list(gpu_check.CHILD_STEPS)
    for bad in (["--only", "promote"], ["--only", "steps"]):
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.parse_args(bad)
        assert exit_info.value.code == 2
    assert "--only" in capsys.readouterr().err


def test_a_work_folder_in_use_is_refused(tmp_path):
    used = tmp_path / "work"
    used.mkdir()
    (used / "mlflow.db").write_text("")
    proc = _run(["--device", "cpu", "--tiny", "--workdir", str(used)], tmp_path, timeout=60)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert [p.name for p in used.iterdir()] == ["mlflow.db"]


def _gpu_figures(node, path: str = "") -> list[str]:
    """Paths of report values that would be GPU figures (memory peaks, utilization) and are not null."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{path}.{k}"
            if any(word in k for word in ("utilization", "memory", "reserved")) and not isinstance(v, (dict, list)):
                if v is not None:
                    found.append(here)
            else:
                found += _gpu_figures(v, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _gpu_figures(v, f"{path}[{i}]")
    return found


@pytest.mark.slow
def test_on_the_cpu_step_1_runs_and_the_report_claims_no_gpu_figures(tmp_path):
    out = tmp_path / "report.json"
    proc = _run(["--device", "cpu", "--tiny", "--only", "step", "--out", str(out)], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NOT GPU figures" in proc.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["gpu_figures"] is False and report["gpu"] is None
    assert "not GPU figures" in report["note"]
    assert report["failed"] == [] and list(report["steps"]) == ["prepare", "step"]
    step = report["steps"]["step"]["result"]
    for precision in ("fp32", "bf16"):
        assert step[precision]["effective_precision"] == precision  # the trainer's autocast: bf16 on the CPU too
        assert step[precision]["batch"] == 64 and step[precision]["sequence"] == [50]
        assert step[precision]["steps_timed"] >= 4 and step[precision]["median_ms"] > 0
    assert _gpu_figures(report) == []
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # the work folder is gone
