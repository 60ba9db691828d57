"""The GPU path of SATI, timed and run end to end on one GPU: ready for the day a GPU node is there.

    pip install -e '.[gpu]'                                    # nvidia-ml-py: the trials' own GPU metrics
    python benchmarks/gpu_check.py --out gpu_report.json       # under 8 min on one GPU, no network
    python benchmarks/gpu_check.py --smoke --out smoke.json    # every step with a tiny encoder and tiny data

Steps (each in its own child process with a time limit, so a crash, a CUDA error or a hang in one is
recorded in the report and the others still run):

1. ``step``: one training step of SATI with a roberta-base-sized text encoder (random init: RobertaConfig's
   defaults, 12 layers, 768 hidden, with roberta-base's 50265-token vocabulary and 514 positions; saved with
   ``save_pretrained`` beside a byte-level BPE tokenizer and loaded through ``model.text_encoder: <folder>``)
   at batch 64, sequence 50, MOSI-like features, the default ModelConfig, in ``train.precision`` fp32 and
   bf16: the trainer's own step (``sati.trainer._train_epoch`` with ``train.max_steps_per_epoch``: forward
   under ``sati.devices.autocast``, ``total_loss``, backward, clipping, Adam); median ms, samples/s, peak
   memory (``torch.cuda.max_memory_allocated``).
2. ``epoch``: ``sati.trainer.fit`` for one epoch on a generated MOSI-sized dataset (1284 train, 229 valid
   samples), that encoder fine-tuned, bf16: train time, samples/s, the epoch with validation, peak memory,
   GPU utilization.
3. ``search``: the real ``sati search`` (``run_search``: an embedded local Ray, Optuna, a SQLite MLflow store in
   the work folder), 4 trials x 1 epoch, FIFO, twice: 1 trial per GPU (``search.resources.gpu: 1``,
   ``max_concurrent: 1``) and 4 trials sharing the GPU (``gpu: 0.25``, ``max_concurrent: 4``); trials/min over
   the trials' span and mean GPU utilization, from the trials' MLflow runs (``gpu/utilization`` and
   ``gpu/memory_peak_gb``, logged when nvidia-ml-py is installed) and from ``nvidia-smi`` sampled here.
4. ``promote``: ``sati.promote.select`` + ``promote`` on the 1-trial search: the bf16 checkpoint is registered
   and reloaded (on the GPU), and the version's ``sati.check`` line says in which precision it was checked
   and with which tolerance.

Only the GPU given by ``--gpu`` (default: the first of ``CUDA_VISIBLE_DEVICES``, else 0) is used. The work
folder (several GB with the full encoder) is a temp folder deleted at the end unless ``--keep``, or
``--workdir`` (a new or empty folder, kept). One JSON report (``--out``) and a short table. Without CUDA:
one ``no CUDA: ...`` line, exit 0, in about a second (nothing heavy is imported before that check). Exit 1
if any step failed, 2 on bad arguments, 130 on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

START = time.time()  # the budget counts from here: the whole run stays under 8 min (budget + 25 s to end a step)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH, SEQ = 64, 50
TRIALS = 4
MODEL_NAME = "sati-gpu-check"
# roberta-base's shape: RobertaConfig() defaults (12 layers, 768 hidden, 12 heads, 3072 feed-forward) with
# roberta-base's vocabulary and positions, so the parameter count (and Adam's work) is roberta-base's.
ROBERTA_BASE = {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1}
HOW = "pip install -e '.[gpu]' && python benchmarks/gpu_check.py --out gpu_report.json"
CHILD_STEPS = ("prepare", "step", "epoch", "search_1", "search_4", "promote")
LABELS = {
    "prepare": "0 prepare (encoder, data)",
    "step": "1 train step",
    "epoch": "2 MOSI-sized epoch, bf16",
    "search_1": "3 search, 1 trial per GPU",
    "search_4": "3 search, 4 trials on 1 GPU",
    "promote": "4 promotion reload check",
}
# Per-step time limits (s) on a GPU; the whole run stops starting steps at --budget-s. Guesses: nothing
# here was timed on a GPU yet. The hidden --device cpu run multiplies them by CPU_FACTOR.
CAPS = {
    "full": {"prepare": 120, "step": 120, "epoch": 120, "search_1": 210, "search_4": 180, "promote": 150},
    "smoke": {"prepare": 60, "step": 60, "epoch": 60, "search_1": 150, "search_4": 150, "promote": 90},
}
BUDGET_S = {"full": 450, "smoke": 420}
CPU_FACTOR = 4
MIN_STEP_S = 20
CPU_LABELS = {"search_1": "3 search, 1 trial at a time", "search_4": "3 search, 4 trials at once"}


# --------------------------------------------------------------------------------------------
# Is there a GPU? (stdlib only, then torch: nothing else is imported before this answers)

GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def _device_files() -> list[str]:
    return [f for pattern in GPU_DEVICE_FILES for f in glob.glob(pattern)]


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the check, or None when torch sees a CUDA GPU. Without any GPU device
    file torch cannot see a GPU either, so torch (a second or more to import) is imported only when one is
    there."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU, so torch sees none"
    if not _device_files():
        return "no GPU device on this machine (no /dev/nvidia*, /dev/dxg or /dev/kfd), so torch sees no GPU"
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"torch {torch.__version__} is a CPU-only build and sees no GPU (install a CUDA build of torch first)"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (driver or device not usable)"


def choose_gpu(requested: str | None) -> str:
    """The one GPU the check uses, as CUDA_VISIBLE_DEVICES names it (index, or UUID)."""
    if requested:
        return requested
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return visible.split(",")[0].strip() if visible else "0"


# --------------------------------------------------------------------------------------------
# nvidia-smi, sampled in a thread (the utilization figure exists even without nvidia-ml-py)


def parse_smi(text: str) -> tuple[float, float | None] | None:
    """``utilization.gpu, memory.used`` (``--format=csv,noheader,nounits``, first line) → (%, MiB)."""

    def number(s: str) -> float | None:
        try:
            return float(s.strip().rstrip("%").replace("MiB", "").strip())
        except ValueError:  # [N/A], [Not Supported]
            return None

    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    cells = lines[0].split(",")
    util = number(cells[0])
    if util is None:
        return None
    return util, number(cells[1]) if len(cells) > 1 else None


class SmiSampler:
    """``nvidia-smi --query-gpu=utilization.gpu,memory.used`` every ``every_s`` seconds for one GPU, with the
    wall-clock time of each sample; nothing when nvidia-smi is absent."""

    def __init__(self, gpu: str | None, every_s: float = 0.5, exe: str | None = None):
        self.gpu, self.every_s = gpu, every_s
        self.exe = exe or shutil.which("nvidia-smi")
        self.samples: list[tuple[float, float, float | None]] = []  # (time.time(), util %, memory MiB)
        self.problem: str | None = None if self.exe else "nvidia-smi not found"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def command(self) -> list[str]:
        cmd = [str(self.exe), "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        return cmd + (["-i", self.gpu] if self.gpu else [])

    def _run(self) -> None:
        while True:
            try:
                out = subprocess.run(self.command(), capture_output=True, text=True, timeout=10)
                parsed = parse_smi(out.stdout) if out.returncode == 0 else None
                if parsed is None:
                    self.problem = f"unreadable nvidia-smi output: {(out.stdout + out.stderr).strip()[:200]!r}"
                else:
                    self.samples.append((time.time(), *parsed))
            except (OSError, subprocess.SubprocessError) as err:
                self.problem = f"nvidia-smi failed: {err}"
            if self._stop.wait(self.every_s):
                return

    def start(self) -> SmiSampler:
        if self.exe:
            self._thread.start()
        return self

    def stop(self) -> SmiSampler:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        return self

    def summary(self, start: float | None = None, end: float | None = None) -> dict:
        """Mean utilization and the most memory used over the samples taken between ``start`` and ``end``."""
        inside = [s for s in self.samples if (start is None or s[0] >= start) and (end is None or s[0] <= end)]
        if not inside:
            return {"samples": 0, "utilization_mean": None, "memory_used_max_gb": None, "problem": self.problem}
        memory = [s[2] for s in inside if s[2] is not None]
        return {
            "samples": len(inside),
            "utilization_mean": round(statistics.fmean(s[1] for s in inside), 1),
            "memory_used_max_gb": round(max(memory) * 2**20 / 1e9, 2) if memory else None,
        }


# --------------------------------------------------------------------------------------------
# Child steps (each runs in its own process: ``gpu_check.py --run-step NAME --workdir W``)


def _work(plan: dict) -> Path:
    return Path(plan["workdir"])


def _raw_pipeline(plan: dict, **sections) -> dict:
    """The pipeline every step trains: full (default SATI, the roberta-base-sized encoder, 1 epoch at
    batch 64, bf16) or smoke (sati.testing's small SATI and the tiny encoder)."""
    from sati.testing.pipelines import small_pipeline

    w = _work(plan)
    data, encoder = w / "data.h5", w / "encoder"
    train = {"epochs": 1, "batch_size": BATCH, "device": plan["device"], "precision": "bf16", "patience": 0}
    if plan["mode"] == "smoke":
        raw = small_pipeline(data, encoder, name="gpu-check", seed=1, train=train)
    else:
        raw = {
            "format": 2,
            "name": "gpu-check",
            "seed": 1,
            "data": {"path": str(data)},
            "model": {"text_encoder": str(encoder)},
        }
        raw["train"] = train
    raw["train"]["out_dir"] = str(w / "runs" / "trainer")
    raw["tracking"] = {"uri": f"sqlite:///{w / 'mlflow.db'}", "experiment": "gpu-check"}
    raw["registry"] = {"model_name": MODEL_NAME}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def _config(plan: dict, **sections):
    from sati.config import from_dict

    return from_dict(_raw_pipeline(plan, **sections), "gpu_check")


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "ray", "optuna", "mlflow", "nvidia-ml-py"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _device_info(plan: dict) -> dict:
    import torch

    if plan["device"] != "cuda":
        return {"type": "cpu", "torch_threads": torch.get_num_threads()}
    p = torch.cuda.get_device_properties(0)
    info = {
        "type": "cuda",
        "name": p.name,
        "visible_as": plan["gpu"],
        "capability": f"{p.major}.{p.minor}",
        "memory_gb": round(p.total_memory / 1e9, 1),
        "multiprocessors": p.multi_processor_count,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16_supported": torch.cuda.is_bf16_supported(),
        # fp32 below means this: TF32 matmuls are off unless these say otherwise
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader", "-i", plan["gpu"]]
        out = subprocess.run(query, capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()[:300]
    return info


def step_prepare(plan: dict) -> dict:
    """The encoder folder (tokenizer + weights), the dataset file and the search space."""
    import h5py

    from sati.data.synth import write_synthetic
    from sati.testing.tiny_encoder import build_tiny_text_encoder

    w = _work(plan)
    started = time.perf_counter()
    encoder = build_tiny_text_encoder(w / "encoder")  # the BPE tokenizer (and a tiny RoBERTa, kept for --smoke)
    if plan["mode"] == "full":
        import torch
        from transformers import RobertaConfig, RobertaModel

        torch.manual_seed(0)
        model = RobertaModel(RobertaConfig(**ROBERTA_BASE, pad_token_id=1, bos_token_id=0, eos_token_id=2))
        model.save_pretrained(encoder)  # replaces the tiny weights and config.json
    from transformers import AutoConfig

    ecfg = AutoConfig.from_pretrained(encoder)
    built = time.perf_counter() - started
    write_synthetic(w / "data.h5", "mosi", seed=0, scale=1.0 if plan["mode"] == "full" else 0.1)
    with h5py.File(w / "data.h5", "r") as f:
        sizes = {split: int(f[split]["labels"].shape[0]) for split in ("train", "valid", "test") if split in f}
    lr = [1.0e-3, 3.0e-3] if plan["mode"] == "smoke" else [1.0e-5, 5.0e-5]
    (w / "space.yaml").write_text(f"train.lr: {{loguniform: [{lr[0]:.1e}, {lr[1]:.1e}]}}\n")
    return {
        "encoder": {
            "layers": ecfg.num_hidden_layers,
            "hidden": ecfg.hidden_size,
            "heads": ecfg.num_attention_heads,
            "vocab": ecfg.vocab_size,
            "weights_mb": round(sum(f.stat().st_size for f in encoder.glob("*.safetensors")) / 1e6, 1),
            "build_s": round(built, 1),
        },
        "data": {"preset": "mosi", "sizes": sizes},
        "device": _device_info(plan),
        "versions": _versions(),
    }


class StepClock:
    """A trainer ``Reporter`` that times each step of ``_train_epoch`` from the batch iterator: the time
    between two batches handed out (after a device sync) is one step (the loop body, with the next batch's
    collation); the last step ends when the trainer asks for the batch after it."""

    def __init__(self, device):
        self.device = device
        self.steps: list[tuple[float, int, int]] = []  # (seconds, batch size, sequence length)
        self.started = self.ended = None

    def _stamp(self) -> float:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def progress(self, batches, total, desc):
        def timed():
            self.started = prev = self._stamp()
            shape = None
            for batch in batches:
                now = self._stamp()
                if shape is not None:
                    self.steps.append((now - prev, *shape))
                    self.ended = now
                prev, shape = now, (len(batch), int(batch.audio.shape[1]))
                yield batch
            if shape is not None:
                self.ended = self._stamp()
                self.steps.append((self.ended - prev, *shape))

        return timed()

    def on_epoch_end(self, epoch, metrics, checkpoint, is_best):
        pass


def _padded(dataset, steps: int):
    """``dataset`` whose batches are padded to ``steps`` time steps (the synthetic MOSI's longest is 42)."""
    from sati.data.dataset import SplitDataset

    class Padded(SplitDataset):
        def collate(self, indices, pad_to=None):
            return super().collate(indices, pad_to=max(pad_to or 0, steps))

    return Padded(dataset.arrays, dataset.tokens)


def _release(device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _time_steps(cfg, train, info, warmup: int, timed: int) -> dict:
    import torch

    from sati.devices import effective_precision, resolve_device
    from sati.seeding import seed_everything
    from sati.trainer import _train_epoch, build_model

    tc = cfg.train
    device = resolve_device(tc.device)
    seed_everything(cfg.seed)
    model = build_model(cfg, info).to(device)
    optimizer = torch.optim.Adam(model.parameter_groups(tc.lr, tc.text_encoder_lr), weight_decay=tc.weight_decay)
    full_batches = len(train) // BATCH
    clock, epoch, losses = StepClock(device), 0, {}

    def run(n: int) -> None:
        nonlocal epoch, losses
        while n > 0:
            k = min(n, full_batches)
            epoch += 1
            one = cfg.replace({"train.max_steps_per_epoch": k})
            losses = _train_epoch(model, optimizer, train, one, device, epoch, clock)
            n -= k

    run(warmup)
    clock.steps.clear()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    run(timed)
    times = [s for s, b, t in clock.steps if b == BATCH]
    median = statistics.median(times)
    out = {
        "precision": tc.precision,
        "effective_precision": effective_precision(device, tc.precision),
        "median_ms": round(median * 1e3, 2),
        "min_ms": round(min(times) * 1e3, 2),
        "max_ms": round(max(times) * 1e3, 2),
        "samples_per_s": round(BATCH / median, 1),
        "steps_timed": len(times),
        "warmup_steps": warmup,
        "batch": BATCH,
        "sequence": sorted({t for _, _, t in clock.steps}),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "train_loss": round(float(losses.get("loss", float("nan"))), 4),
        "peak_memory_gb": None,
    }
    if device.type == "cuda":
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
        out["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 1e9, 2)
    return out


def step_step(plan: dict) -> dict:
    """Step 1: the trainer's own step, fp32 then bf16, at batch 64 and sequence 50."""
    from sati.data.loaders import load_split_datasets
    from sati.devices import resolve_device

    cfg = _config(plan)
    datasets, info = load_split_datasets(cfg, ("train",))
    train = _padded(datasets["train"], SEQ)
    warmup, timed = (1, 4) if plan["mode"] == "smoke" else (3, 20)
    out: dict = {"errors": []}
    for precision in ("fp32", "bf16"):
        try:
            out[precision] = _time_steps(cfg.replace({"train.precision": precision}), train, info, warmup, timed)
        except Exception as err:
            out[precision] = {
                "error": f"{type(err).__name__}: {err}"[:1500],
                "traceback": traceback.format_exc()[-3000:],
            }
            out["errors"].append(f"{precision}: {type(err).__name__}: {str(err)[:300]}")
        _release(resolve_device(plan["device"]))  # the model and optimizer went with _time_steps' frame
    if "median_ms" in out.get("fp32", {}) and "median_ms" in out.get("bf16", {}):
        out["bf16_speedup"] = round(out["fp32"]["median_ms"] / out["bf16"]["median_ms"], 2)
    return out


def step_epoch(plan: dict) -> dict:
    """Step 2: ``fit`` for one epoch on the MOSI-sized data, the encoder fine-tuned, bf16."""
    from sati.devices import effective_precision, resolve_device
    from sati.trainer import fit

    cfg = _config(plan, train={"out_dir": str(_work(plan) / "runs" / "epoch")})
    device = resolve_device(cfg.train.device)
    clock = StepClock(device)
    sampler = SmiSampler(plan.get("gpu")).start()
    started = time.time()
    try:
        result = fit(cfg, clock)
    finally:
        ended = time.time()
        sampler.stop()
    m = result.history[-1]
    samples = sum(b for _, b, _ in clock.steps)
    train_s = clock.ended - clock.started
    full = [s for s, b, _ in clock.steps if b == BATCH]
    return {
        "precision": cfg.train.precision,
        "effective_precision": effective_precision(device, cfg.train.precision),
        "train_samples": samples,
        "steps": len(clock.steps),
        "train_s": round(train_s, 2),
        "samples_per_s": round(samples / train_s, 1),
        "median_step_ms": round(statistics.median(full) * 1e3, 2) if full else None,
        "epoch_s": round(m["time/epoch_s"], 2),  # training + validation, the trainer's own figure
        "fit_wall_s": round(ended - started, 2),  # + reading data, building the model, writing checkpoints
        "train_loss": round(m["train/loss"], 4),
        "valid_mae": round(m["valid/mae"], 4),
        "peak_memory_gb": round(m["gpu/memory_peak_gb"], 2) if "gpu/memory_peak_gb" in m else None,
        "gpu_utilization_nvml": round(m["gpu/utilization"], 1) if "gpu/utilization" in m else None,
        "nvidia_smi": sampler.summary(started, ended),
    }


def _cpus_per_trial() -> float:
    """CPUs per trial, the same in both searches: a quarter of the machine less two for the driver and
    Ray's daemons (whole CPUs from 8 up; fractions on small machines)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return float((n - 2) // TRIALS) if n >= 8 else n / TRIALS


def _trial_figures(uri: str, parent: str) -> dict:
    """What the trial runs of search ``parent`` logged: their span, state, epoch time and GPU metrics."""
    from sati.tracking import contract
    from sati.tracking.store import TrackingStore

    client = TrackingStore.open(uri).client
    experiment = client.get_run(parent).info.experiment_id
    where = f"tags.`{contract.PARENT_RUN}` = '{parent}' and tags.`{contract.ROLE}` = '{contract.Role.TRIAL.value}'"
    runs = client.search_runs([experiment], where, max_results=1000)

    def history(run_id: str, key: str) -> list[float]:
        return [m.value for m in client.get_metric_history(run_id, key)]

    starts = [r.info.start_time / 1e3 for r in runs if r.info.start_time]
    ends = [r.info.end_time / 1e3 for r in runs if r.info.end_time]
    util = [v for r in runs for v in history(r.info.run_id, "gpu/utilization")]
    memory = [v for r in runs for v in history(r.info.run_id, "gpu/memory_peak_gb")]
    epoch_s = [v for r in runs for v in history(r.info.run_id, "time/epoch_s")]
    finished = sum(r.info.status == "FINISHED" for r in runs)
    span = (max(ends) - min(starts)) if starts and ends else None
    return {
        "trials": len(runs),
        "finished": finished,
        "span_start": min(starts) if starts else None,
        "span_end": max(ends) if ends else None,
        "span_s": round(span, 1) if span else None,
        "trials_per_min": round(finished / span * 60, 2) if span else None,
        "epoch_s_mean": round(statistics.fmean(epoch_s), 2) if epoch_s else None,
        "gpu_utilization_trials": round(statistics.fmean(util), 1) if util else None,
        "gpu_memory_peak_gb_trials": round(max(memory), 2) if memory else None,
        "failure_reasons": [
            r.data.tags.get(contract.FAILURE_REASON, "")[:300] for r in runs if r.info.status != "FINISHED"
        ],
    }


def _search(plan: dict, per_gpu: int) -> dict:
    """Step 3: ``run_search`` of 4 trials x 1 epoch, FIFO, ``per_gpu`` trials sharing the GPU."""
    from sati.search.runner import run_search

    w = _work(plan)
    cpus = _cpus_per_trial()
    gpu = 1.0 / per_gpu if plan["device"] == "cuda" else 0.0
    cfg = _config(
        plan,
        search={
            "space": str(w / "space.yaml"),
            "num_samples": TRIALS,
            "max_concurrent": per_gpu,
            "scheduler": "fifo",
            "storage_path": str(w / "ray"),
            "resources": {"cpu": cpus, "gpu": gpu},
            "max_failures": 0,
            "study_storage": f"sqlite:///{w / 'optuna.db'}",  # not $SATI_STUDY_STORAGE
        },
    ).replace({"name": f"gpu-check-{per_gpu}"})
    lines: list[str] = []

    def console(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    sampler = SmiSampler(plan.get("gpu")).start()
    started = time.time()
    try:
        outcome = run_search(cfg, console=console)
    finally:
        ended = time.time()
        sampler.stop()
    figures = _trial_figures(outcome.tracking_uri, outcome.parent_run_id)
    out = {
        "parent_run_id": outcome.parent_run_id,
        "tracking_uri": outcome.tracking_uri,
        "resources": {"cpu": cpus, "gpu": gpu, "max_concurrent": per_gpu},
        "search_wall_s": round(ended - started, 1),
        **figures,
        "nvidia_smi_trials": sampler.summary(figures["span_start"], figures["span_end"]),
        "nvidia_smi_search": sampler.summary(started, ended),
        "best": outcome.best,
    }
    if figures["finished"] < TRIALS:
        out["errors"] = [f"{figures['finished']} of {TRIALS} trials finished: {figures['failure_reasons']}"]
    return out


def step_search_1(plan: dict) -> dict:
    return _search(plan, 1)


def step_search_4(plan: dict) -> dict:
    return _search(plan, TRIALS)


def step_promote(plan: dict) -> dict:
    """Step 4: select + promote the best trial of the bf16 search; the version's reload-check line."""
    import torch

    from sati.checkpoint import load_checkpoint
    from sati.promote import promote, select
    from sati.tracking import contract, registry
    from sati.tracking.searches import download_checkpoint
    from sati.tracking.store import TrackingStore

    w = _work(plan)
    source = None
    for name in ("search_1", "search_4"):
        path = w / f"{name}.json"
        rec = json.loads(path.read_text()) if path.is_file() else {}
        if rec.get("result", {}).get("finished"):
            source = (name, rec["result"])
            break
    if source is None:
        raise RuntimeError("no search of step 3 finished a trial: nothing to promote")
    name, found = source
    store = TrackingStore.open(found["tracking_uri"])
    selection = select(store, found["parent_run_id"], model_name=MODEL_NAME)
    trial, value = selection.ranked[0]
    ckpt = load_checkpoint(download_checkpoint(store, trial.run_id, w / "tmp" / "promote-ckpt"))
    lines: list[str] = []

    def console(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    result = promote(store, selection, tolerance=1e-3, console=console)
    version = registry.get_version(store, MODEL_NAME, result.version)
    return {
        "search": name,
        "trial_run_id": trial.run_id,
        "metric": selection.metric,
        "value": value,
        "checkpoint_precision": ckpt["precision"],
        "reloaded_where": "cuda" if torch.cuda.is_available() else "cpu",
        "model_version": result.version,
        "alias": result.alias,
        "check": version.tags.get(contract.CHECK),
        "console": lines,
    }


STEP_FUNCTIONS = {
    "prepare": step_prepare,
    "step": step_step,
    "epoch": step_epoch,
    "search_1": step_search_1,
    "search_4": step_search_4,
    "promote": step_promote,
}


def run_child(step: str, workdir: Path) -> int:
    """Run one step in this process and write ``<workdir>/<step>.json``; exits without atexit handlers (Ray
    and MLflow threads must not keep a finished step alive)."""
    plan = json.loads((workdir / "plan.json").read_text())
    started = time.time()
    try:
        if plan["device"] == "cpu":  # the hidden CPU run: one thread is steadier on a shared machine
            import torch

            torch.set_num_threads(1)
        result = STEP_FUNCTIONS[step](plan)
        errors = result.pop("errors", None)
        rec = {"ok": not errors, "result": result}
        if errors:
            rec["error"] = "; ".join(errors)
    except BaseException as err:
        rec = {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000], "traceback": traceback.format_exc()[-4000:]}
    rec["child_wall_s"] = round(time.time() - started, 1)
    tmp = workdir / f"{step}.json.tmp"
    tmp.write_text(json.dumps(rec, indent=2, default=str))
    tmp.replace(workdir / f"{step}.json")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if rec["ok"] else 1)


# --------------------------------------------------------------------------------------------
# The parent: plan, one child per step with a time limit, the report and the table


def _child_env(workdir: Path, gpu: str | None) -> dict[str, str]:
    from sati.testing.processes import OFFLINE_LOOPBACK

    env = {**OFFLINE_LOOPBACK, **os.environ}  # what the user set wins
    env["TMPDIR"] = str(workdir / "tmp")  # trial scratch folders, downloaded models: all inside the work folder
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """End the step's process group (the child and what it started: Ray's processes share its fate)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_step(step: str, workdir: Path, env: dict, timeout: float) -> dict:
    """One step in a child process of its own session, killed (with its group) after ``timeout`` s."""
    log = workdir / "logs" / f"{step}.log"
    result = workdir / f"{step}.json"
    result.unlink(missing_ok=True)
    started = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-step", step, "--workdir", str(workdir)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
        except BaseException:  # Ctrl-C: the step goes with us
            _kill_group(proc)
            raise
    rec = json.loads(result.read_text()) if result.is_file() else None
    if rec is None:
        why = f"timed out after {timeout:.0f} s (killed)" if timed_out else f"exited with status {proc.returncode}"
        rec = {"ok": False, "error": f"the step's process {why} without a result"}
    elif timed_out:
        rec["note"] = f"wrote its result but did not exit within {timeout:.0f} s (killed)"
    rec["wall_s"] = round(time.time() - started, 1)
    rec["time_limit_s"] = round(timeout)
    if not rec["ok"]:
        rec["log_tail"] = _tail(log)
    return rec


def _fmt(value, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{unit}" if isinstance(value, (int, float)) else f"{value}{unit}"


def describe(step: str, rec: dict, gpu: bool) -> str:
    """One table cell: the step's figures, or why it failed."""
    if not rec.get("ok") and not rec.get("result"):
        return str(rec.get("error", "?")).splitlines()[0][:160]
    r = rec.get("result", {})
    mem = (lambda x: f", peak {_fmt(x, ' GB', 2)}") if gpu else (lambda x: "")
    if step == "prepare":
        e = r.get("encoder", {})
        sizes = "/".join(str(n) for n in r.get("data", {}).get("sizes", {}).values())
        return f"encoder {e.get('layers')} layers x {e.get('hidden')} ({e.get('weights_mb')} MB); data {sizes} samples"
    if step == "step":
        cells = []
        for p in ("fp32", "bf16"):
            x = r.get(p, {})
            if "median_ms" in x:
                rate = _fmt(x["samples_per_s"], " samples/s", 0)
                cells.append(f"{p} {_fmt(x['median_ms'], ' ms')} ({rate}{mem(x.get('peak_memory_gb'))})")
            else:
                cells.append(f"{p} FAILED: {str(x.get('error', '?'))[:80]}")
        speed = f"; bf16 {r['bf16_speedup']}x fp32" if r.get("bf16_speedup") else ""
        return "; ".join(cells) + speed
    if step == "epoch":
        smi = r.get("nvidia_smi", {}).get("utilization_mean")
        util = f", GPU util {_fmt(r.get('gpu_utilization_nvml'), ' %')} NVML / {_fmt(smi, ' %')} smi" if gpu else ""
        return (
            f"{r.get('train_samples')} samples in {_fmt(r.get('train_s'), ' s', 2)} "
            f"({_fmt(r.get('samples_per_s'), ' samples/s', 0)}); with validation {_fmt(r.get('epoch_s'), ' s', 2)}"
            f"{mem(r.get('peak_memory_gb'))}{util}"
        )
    if step.startswith("search"):
        util = ""
        if gpu:
            smi = r.get("nvidia_smi_trials", {}).get("utilization_mean")
            util = f", GPU util {_fmt(r.get('gpu_utilization_trials'), ' %')} trials / {_fmt(smi, ' %')} smi"
            util += mem(r.get("gpu_memory_peak_gb_trials"))
        return (
            f"{r.get('finished')}/{r.get('trials')} trials, {_fmt(r.get('trials_per_min'), ' trials/min', 2)} "
            f"(span {_fmt(r.get('span_s'), ' s')}, search {_fmt(r.get('search_wall_s'), ' s')}){util}"
        )
    if step == "promote":
        return f"v{r.get('model_version')} ({r.get('alias')}): {r.get('check')}"
    return ""


def label(step: str, gpu: bool) -> str:
    return LABELS[step] if gpu else CPU_LABELS.get(step, LABELS[step])


def print_table(report: dict) -> None:
    gpu = report["gpu_figures"]
    rows = []
    for step, rec in report["steps"].items():
        status = "ok" if rec.get("ok") else "FAILED"
        cell = describe(step, rec, gpu)
        if rec.get("ok") is False and rec.get("result") and rec.get("error"):
            cell += f"  [{str(rec['error'])[:120]}]"
        rows.append((label(step, gpu), status, f"{rec.get('wall_s', 0):.0f} s", cell))
    width = max(len(r[0]) for r in rows)
    for name, status, wall, cell in rows:
        print(f"{name:{width}s}  {status:6s} {wall:>6s}  {cell}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_check_report.json", help="the JSON report (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="every step with a tiny encoder and tiny data (quick)")
    ap.add_argument("--gpu", default=None, help="the GPU to use (default: first of CUDA_VISIBLE_DEVICES, else 0)")
    ap.add_argument("--only", default=None, help="comma-separated steps: step, epoch, search, promote (needs search)")
    ap.add_argument(
        "--budget-s", type=float, default=None, help="end the run's last step by this many seconds (default 450)"
    )
    ap.add_argument("--workdir", default=None, help="work folder, kept (default: a new temp folder, deleted)")
    ap.add_argument("--keep", action="store_true", help="keep the temp work folder (logs, MLflow store, checkpoints)")
    # hidden: run the code paths on the CPU (to test the script; never GPU figures), a tiny alias of --smoke,
    # and the child-process entry
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-step", choices=CHILD_STEPS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.smoke = args.smoke or args.tiny
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - {"step", "epoch", "search", "promote"}
        if unknown:
            ap.error(f"--only: unknown step(s) {', '.join(sorted(unknown))}; choose from step, epoch, search, promote")
        if "promote" in wanted and "search" not in wanted:
            ap.error("--only promote needs search too (it promotes the search's best trial)")
        args.steps = [s for s in CHILD_STEPS if s == "prepare" or s in wanted or s.split("_")[0] in wanted]
    else:
        args.steps = list(CHILD_STEPS)
    return args


def orchestrate(args: argparse.Namespace, gpu: str | None) -> int:
    began = START
    mode = "smoke" if args.smoke else "full"
    factor = CPU_FACTOR if args.device == "cpu" else 1
    budget = args.budget_s if args.budget_s is not None else BUDGET_S[mode] * factor
    if args.workdir and Path(args.workdir).exists() and any(Path(args.workdir).iterdir()):
        print(f"--workdir {args.workdir} is not empty: give a new or empty folder", file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="sati-gpu-check-"))
    for sub in ("logs", "tmp"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    plan = {"mode": mode, "device": args.device, "gpu": gpu, "workdir": str(workdir)}
    (workdir / "plan.json").write_text(json.dumps(plan))
    env = _child_env(workdir, gpu)
    out = Path(args.out).resolve()
    gpu_figures = args.device == "cuda"
    report: dict = {
        "check": "benchmarks/gpu_check.py",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "argv": sys.argv[1:],
        "mode": mode,
        "device": args.device,
        "gpu": gpu,
        "gpu_figures": gpu_figures,
        "budget_s": budget,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "steps": {},
    }
    if not gpu_figures:
        report["note"] = "hidden --device cpu run: the code paths on the CPU, not GPU figures"
    elif gpu != "0":
        report["note"] = (
            f"GPU {gpu}: the trials' gpu/utilization (sati.devices.GpuMonitor) reads NVML device 0, another GPU "
            "here; trust the nvidia-smi utilization figures"
        )
    title = f"SATI GPU check, {mode} mode, GPU {gpu}" if gpu_figures else f"SATI GPU check, {mode} mode, ON THE CPU"
    print(f"{title}; work folder {workdir}; report {out}", flush=True)
    code, step = 0, None

    def terminated(signum, frame):  # a scheduler's SIGTERM ends the running step too (it has its own session)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        for i, step in enumerate(args.steps):
            remaining = began + budget - time.time()
            limit = min(CAPS[mode][step] * factor, remaining)
            if step != "prepare" and not report["steps"].get("prepare", {}).get("ok"):
                rec = {"ok": False, "error": "skipped: step 0 (prepare) failed"}
            elif step == "promote" and not any(
                report["steps"].get(s, {}).get("result", {}).get("finished") for s in ("search_1", "search_4")
            ):
                rec = {"ok": False, "error": "skipped: no search of step 3 finished a trial"}
            elif limit < MIN_STEP_S:
                rec = {"ok": False, "error": f"skipped: the time budget ({budget:.0f} s, --budget-s) ran out"}
            else:
                print(f"[{i}/{len(args.steps) - 1}] {label(step, gpu_figures)} (limit {limit:.0f} s) ...", flush=True)
                rec = run_step(step, workdir, env, limit)
            rec.setdefault("wall_s", 0.0)
            report["steps"][step] = rec
            if step == "prepare" and rec.get("ok"):
                report["environment"] = {k: rec["result"][k] for k in ("device", "versions")}
            print(f"    {'ok' if rec['ok'] else 'FAILED'} in {rec['wall_s']:.0f} s: {describe(step, rec, gpu_figures)}")
            _write(out, report, began)
    except KeyboardInterrupt:
        report["interrupted"] = f"during step {step}"
        if step is not None and step not in report["steps"]:
            report["steps"][step] = {"ok": False, "error": "interrupted (Ctrl-C or SIGTERM)", "wall_s": 0.0}
        code = 130
    report["failed"] = [s for s, r in report["steps"].items() if not r.get("ok")]
    s1, s4 = (report["steps"].get(s, {}).get("result", {}) for s in ("search_1", "search_4"))
    if s1.get("trials_per_min") and s4.get("trials_per_min"):
        report["search_throughput_ratio_4_vs_1"] = round(s4["trials_per_min"] / s1["trials_per_min"], 2)
    keep = args.keep or args.workdir is not None  # a folder the user named is never deleted
    if keep:
        report["workdir"] = str(workdir)
    _write(out, report, began)
    print()
    print(title + (" (CPU figures of the code paths, NOT GPU figures)" if not gpu_figures else ""))
    print_table(report)
    if "search_throughput_ratio_4_vs_1" in report:
        what = "4 trials on 1 GPU vs 1 per GPU" if gpu_figures else "4 trials at once vs 1 at a time (CPU)"
        print(f"{what}: {report['search_throughput_ratio_4_vs_1']}x trials/min")
    print(f"report: {out} ({report['wall_s']:.0f} s in all)" + (f"; work folder kept: {workdir}" if keep else ""))
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return code or (1 if report["failed"] else 0)


def _write(out: Path, report: dict, began: float) -> None:
    report["wall_s"] = round(time.time() - began, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run_step:
        return run_child(args.run_step, Path(args.workdir))
    if args.device == "cpu":
        return orchestrate(args, None)
    reason = no_cuda_reason()
    if reason:
        print(f"no CUDA: {reason}; nothing to check here (run on a GPU node: {HOW})")
        return 0
    gpu = choose_gpu(args.gpu)
    # one GPU for everything, numbered as nvidia-smi numbers it (Ray, torch and the samplers then agree)
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return orchestrate(args, gpu)


if __name__ == "__main__":
    sys.exit(main())
