"""Device choice and mixed precision."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, else MPS, else CPU; other names are checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device = {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device = {name!r}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"train.device = {name!r}: MPS is not available on this machine")
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA for ``auto``/``bf16``; full precision otherwise."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def effective_precision(device: torch.device, precision: str) -> str:
    """What ``autocast(device, precision)`` computes in: ``bf16`` or ``fp32``."""
    bf16 = (device.type == "cuda" and precision in ("auto", "bf16")) or (device.type == "cpu" and precision == "bf16")
    return "bf16" if bf16 else "fp32"


class GpuMonitor:
    """Mean GPU utilization (NVML, sampled twice a second) and peak memory of this process, per
    epoch, on CUDA; an empty dict elsewhere or without ``nvidia-ml-py``. Utilization is the whole
    device's: trials sharing a GPU see the same number."""

    def __init__(self, device: torch.device, every_s: float = 0.5):
        import threading

        self.device, self.every_s = device, every_s
        self.samples: list[float] = []
        self._handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or torch.cuda.current_device())
            except Exception:  # no NVML library or no such device: memory only
                self._handle = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if self._handle is not None else None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.samples.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            except Exception:
                return

    def start(self) -> GpuMonitor:
        if self._thread is not None:
            self._thread.start()
        return self

    def epoch_metrics(self) -> dict[str, float]:
        """``gpu/utilization`` (mean %, since the last call) and ``gpu/memory_peak_gb``; resets both."""
        if self.device.type != "cuda":
            return {}
        out = {"gpu/memory_peak_gb": torch.cuda.max_memory_allocated(self.device) / 1e9}
        torch.cuda.reset_peak_memory_stats(self.device)
        samples, self.samples = self.samples, []
        if samples:
            out["gpu/utilization"] = sum(samples) / len(samples)
        return out

    def stop(self) -> None:
        self._stop.set()
