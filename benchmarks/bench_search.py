"""Per-trial overhead of `sati search` against the same trainings run in a plain loop.

Workload: N trials of a fixed tiny training (tiny RoBERTa, a small generated dataset, 2 epochs),
one trial at a time (max_concurrent 1, FIFO) so the comparison is like for like. Prints:
- plain loop: seconds per training (build + fit in one process);
- search: wall seconds per trial, overhead per trial = (search wall − plain loop) / N;
- share of worker time spent training = Σ trainer epoch time / Σ trial time (Tune's time_total_s).

    python benchmarks/bench_search.py [--trials 6]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    from sati.config import from_dict
    from sati.data.synth import write_synthetic
    from sati.search.runner import run_search
    from sati.trainer import fit
    from tests.tiny_text_encoder import build_tiny_text_encoder

    tmp = Path(tempfile.mkdtemp(prefix="bench_search_"))
    data = tmp / "synth.h5"
    write_synthetic(data, "mosi", seed=0, scale=0.1)
    encoder = build_tiny_text_encoder(tmp / "enc")
    space = tmp / "space.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    raw = {"name": "bench", "seed": 1, "data": {"path": str(data)},
           "model": {"text_encoder": str(encoder), "hidden_size": 32, "encoder_feedforward": 64,
                     "fusion_feedforward": 64, "fbp_hidden": 8},
           "train": {"epochs": 2, "batch_size": 32, "lr": 5.0e-4, "device": "cpu", "patience": 0,
                     "out_dir": str(tmp / "plain")},
           "search": {"space": str(space), "num_samples": args.trials, "max_concurrent": 1, "scheduler": "fifo",
                      "storage_path": str(tmp / "ray"), "resources": {"cpu": 2}},
           "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "bench"}}
    cfg = from_dict(raw, "bench")

    import torch
    torch.set_num_threads(2)
    start = time.perf_counter()
    train_time = 0.0
    for i in range(args.trials):
        result = fit(cfg.replace({"train.out_dir": str(tmp / f"plain{i}")}))
        train_time += sum(h["time/epoch_s"] for h in result.history)
    plain = time.perf_counter() - start

    start = time.perf_counter()
    outcome = run_search(cfg, console=lambda s: None)
    search = time.perf_counter() - start

    import json
    trial_total, trial_train = 0.0, 0.0
    for result_file in Path(outcome.search_dir).rglob("result.json"):
        lines = [json.loads(x) for x in result_file.read_text().splitlines() if x.strip()]
        if lines:
            trial_total += lines[-1]["time_total_s"]
            trial_train += sum(x["time/epoch_s"] for x in lines)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"plain loop : {args.trials} trainings in {plain:.1f} s ({plain / args.trials:.2f} s each; "
          f"{train_time / args.trials:.2f} s of it in epochs)")
    print(f"sati search: {args.trials} trials in {search:.1f} s ({search / args.trials:.2f} s each) "
          f"incl. Ray start, MLflow parent run and summary")
    print(f"overhead per trial: {(search - plain) / args.trials:.2f} s (goal <= 2 s)")
    print(f"worker time spent training: {100 * trial_train / max(trial_total, 1e-9):.0f} % "
          f"({trial_train:.1f} s of {trial_total:.1f} s)")


if __name__ == "__main__":
    main()
