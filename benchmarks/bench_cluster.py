"""Trial throughput of one fixed `sati search` on a Ray cluster with 1 worker raylet vs 2.

Each configuration is a fresh cluster on this machine, in a loopback-only network namespace
(`unshare -n`, as in tests/test_cluster_one_machine.py): a Ray head with 0 CPUs, so no trial runs
there, and N worker raylets with 1 CPU each (`ray start --address ... --num-cpus=1`); every trial
asks for 1 CPU (`search.resources.cpu=1`, so Ray also runs its torch with 1 thread). The search is
the same each time: FIFO, a fixed number of trials and epochs, tiny RoBERTa on a MOSI-like generated
dataset, MLflow in a SQLite file (written by the driver only).

Two ways to share the machine's cores (`--mode`):
- pinned: the whole cluster (head, raylets, trials, the driver) is confined to N cores for N worker
  raylets (CPU affinity), as if each raylet brought its own core and the driver rode along;
- unpinned: every configuration may use every core, so with 1 worker the driver and Ray's daemons
  have a core of their own, and with 2 workers they share the cores with the trials.

Prints, for each configuration:
- trial throughput = trials / (last trial run's end - first trial run's start), from MLflow;
- the wall time of the whole `sati search` command (driver start, Ray connect, summary included);
- the CPU seconds used meanwhile by the trial workers, the driver, Ray's daemons, and by other
  processes on the machine (the whole machine's busy time from /proc/stat minus ours);
and the 2-vs-1 ratio of both (goal: >= 1.8x for the trial throughput).

    python benchmarks/bench_cluster.py [--trials 6] [--epochs 5] [--scale 0.3] [--repeats 1] [--mode both]

Needs root (or CAP_SYS_ADMIN) for `unshare -n`. Another busy process on the machine lowers the
2-worker figure first: check the load line and the "other processes" CPU it prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--scale", type=float, default=0.3, help="dataset size relative to MOSI")
    ap.add_argument("--repeats", type=int, default=1, help="clusters per configuration (medians are printed)")
    ap.add_argument("--mode", choices=["pinned", "unpinned", "both"], default="both")
    args = ap.parse_args()
    from sati.data.synth import write_synthetic
    from sati.testing.cluster import can_unshare, run_in_netns
    from sati.testing.pipelines import write_search_pipeline
    from sati.testing.tiny_encoder import build_tiny_text_encoder

    if not can_unshare():
        sys.exit("needs `unshare -n` (root or CAP_SYS_ADMIN) and iproute2")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs at least 2 cores")

    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    data = tmp / "synth.h5"
    write_synthetic(data, "mosi", seed=0, scale=args.scale)
    encoder = build_tiny_text_encoder(tmp / "enc")
    pipeline = write_search_pipeline(
        tmp / "p.yaml",
        data,
        encoder,
        "sqlite:///unused.db",
        tmp / "ray",
        {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
        search={
            "num_samples": args.trials,
            "max_concurrent": 2,
            "scheduler": "fifo",
            "max_failures": 0,
            "resources": {"cpu": 1, "gpu": 0},
        },
        train={"epochs": args.epochs},
        tracking={"experiment": "bench-cluster"},
    )

    print(
        f"machine: {os.cpu_count()} CPUs, load {_load()}; search: {args.trials} trials x {args.epochs} epochs, "
        f"data scale {args.scale}, FIFO, 1 CPU per trial; head 0 CPUs",
        flush=True,
    )
    modes = ["pinned", "unpinned"] if args.mode == "both" else [args.mode]
    figures: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.repeats):
        for mode in modes:
            for workers in (1, 2):
                start = time.time()
                report = run_in_netns(
                    "throughput",
                    pipeline,
                    tmp / f"{mode}-w{workers}-{r}",
                    timeout_s=1200,
                    workers=workers,
                    experiment="bench-cluster",
                    search_timeout=1100,
                    cpus=workers if mode == "pinned" else 0,
                )
                if report.get("error") or report.get("search_rc") != 0 or "trials_per_min" not in report:
                    sys.exit(
                        f"{mode}, {workers} worker(s): {report.get('error')} rc={report.get('search_rc')}\n"
                        f"{report.get('traceback', '')}\n{report.get('search_log_tail', '')[-2000:]}"
                    )
                figures.setdefault((mode, workers), []).append(report)
                cpu = report["cpu"]
                print(
                    f"{mode:8s} {workers} worker raylet(s), cores {report['cpus']}: {len(report['runs'])} trials in "
                    f"{report['trial_span_s']:.1f} s = {report['trials_per_min']:.2f} trials/min; whole "
                    f"`sati search` {report['search_s']:.1f} s (nodes used: {len(report['nodes_used'])}; "
                    f"cluster up and down {time.time() - start:.0f} s in all)",
                    flush=True,
                )
                print(
                    "    CPU seconds during the search: "
                    + ", ".join(
                        f"{k.replace(' cpu_s', '').replace('_cpu_s', '')} {v:.0f}"
                        for k, v in cpu.items()
                        if k.endswith("cpu_s")
                    )
                    + f" (the cluster's {cpu['cores']} core(s) x {cpu['wall_s']:.0f} s = "
                    f"{cpu['cores'] * cpu['wall_s']:.0f}); load {_load()}",
                    flush=True,
                )

    def med(mode: str, workers: int, key: str) -> float:
        return statistics.median(r[key] for r in figures[(mode, workers)])

    for mode in modes:
        tpm1, tpm2 = med(mode, 1, "trials_per_min"), med(mode, 2, "trials_per_min")
        wall1, wall2 = med(mode, 1, "search_s"), med(mode, 2, "search_s")
        print(
            f"{mode}: trial throughput 1 worker {tpm1:.2f} trials/min, 2 workers {tpm2:.2f} trials/min, "
            f"ratio {tpm2 / tpm1:.2f}x (goal >= 1.8x: {'met' if tpm2 / tpm1 >= 1.8 else 'NOT met'}); "
            f"whole search wall {wall1:.1f} s vs {wall2:.1f} s, ratio {wall1 / wall2:.2f}x"
        )
    print(f"load after: {_load()}")


if __name__ == "__main__":
    main()
