"""Per-trial overhead of `sati search` against the same trainings run in a plain loop.

Workload: trials of a fixed tiny training (tiny RoBERTa, a small generated dataset, 2 epochs),
one trial at a time (max_concurrent 1, FIFO) so the comparison is like for like. Searches of N and
2N trials separate the fixed cost (Ray start, MLflow parent run, summary plots) from the marginal
cost per trial. Prints:
- plain loop: seconds per training (build + fit in one process);
- overhead per trial = (Δ search wall − Δ plain loop) / N;
- share of worker time spent training = Σ trainer epoch time / Σ trial time (Tune's time_total_s).

    python benchmarks/bench_search.py [--trials 6]
"""

from __future__ import annotations

import argparse
import json
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
    from sati.testing.pipelines import small_pipeline
    from sati.testing.tiny_encoder import build_tiny_text_encoder
    from sati.trainer import fit

    tmp = Path(tempfile.mkdtemp(prefix="bench_search_"))
    data = tmp / "synth.h5"
    write_synthetic(data, "mosi", seed=0, scale=0.1)
    encoder = build_tiny_text_encoder(tmp / "enc")
    space = tmp / "space.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    raw = small_pipeline(
        data,
        encoder,
        name="bench",
        seed=1,
        model={"reverse_grad_weight": 1.0, "dropout": 0.6},  # the model defaults this benchmark always used
        train={"lr": 5.0e-4, "out_dir": str(tmp / "plain")},
        search={"space": str(space), "num_samples": args.trials, "max_concurrent": 1, "scheduler": "fifo",
                "storage_path": str(tmp / "ray"), "resources": {"cpu": 2}},
        tracking={"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "bench"},
    )  # fmt: skip
    cfg = from_dict(raw, "bench")

    import torch

    torch.set_num_threads(2)

    def plain_loop(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            fit(cfg.replace({"train.out_dir": str(tmp / f"plain{n}-{i}")}))
        return time.perf_counter() - start

    def search(n: int) -> tuple[float, float, float]:
        start = time.perf_counter()
        outcome = run_search(cfg.replace({"search.num_samples": n}), console=lambda s: None)
        wall = time.perf_counter() - start
        total = train = 0.0
        for result_file in Path(outcome.search_dir).rglob("result.json"):
            lines = [json.loads(x) for x in result_file.read_text().splitlines() if x.strip()]
            if lines:
                total += lines[-1]["time_total_s"]
                train += sum(x["time/epoch_s"] for x in lines)
        return wall, total, train

    n1, n2 = args.trials, 2 * args.trials
    p1, p2 = plain_loop(n1), plain_loop(n2)
    search(1)  # warm-up: file caches, first Ray start
    s1, _, _ = search(n1)
    s2, t2, r2 = search(n2)
    marginal = ((s2 - s1) - (p2 - p1)) / (n2 - n1)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; trials run one at a time")
    print(f"plain loop : {n1} trainings {p1:.1f} s, {n2} trainings {p2:.1f} s ({(p2 - p1) / (n2 - n1):.2f} s each)")
    print(
        f"sati search: {n1} trials {s1:.1f} s, {n2} trials {s2:.1f} s ({(s2 - s1) / (n2 - n1):.2f} s each; "
        f"the rest is fixed: Ray start, MLflow parent run, summary plots)"
    )
    print(f"overhead per trial (marginal): {marginal:.2f} s (goal <= 2 s)")
    print(f"fixed cost of a search: {s1 - n1 * (s2 - s1) / (n2 - n1):.1f} s")
    print(
        f"worker time spent training ({n2} trials): {100 * r2 / max(t2, 1e-9):.0f} % ({r2:.1f} s of {t2:.1f} s); "
        f"worker-side overhead {(t2 - r2) / n2:.2f} s per trial (model build, checkpoints, reports)"
    )


if __name__ == "__main__":
    main()
