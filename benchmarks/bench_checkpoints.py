"""Bytes per trial-epoch with a roberta-base-sized encoder fine-tuned: what each epoch of a trial copies
to the search's storage, against the size of one model plus one optimizer state, this tree and
another (``--base``).

A random roberta-base-sized encoder (``RobertaConfig()``: 12 layers, 768 wide, ~125M parameters;
built offline from its config) is fine-tuned (``model.freeze_text_layers: 0``) in a search of 4 trials
× 3 epochs (FIFO) on a tiny generated dataset, on the CPU. This tree reports, per epoch, the size of
the checkpoint it hands to Tune (``storage/checkpoint_mb``); the base tree hands Tune ``last.pt`` and
``best.pt`` every epoch, whose sizes are read from its storage.

    python benchmarks/bench_checkpoints.py --base ../sati-base  # git worktree add ../sati-base <commit>
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0")
    from mlflow.tracking import MlflowClient
    from transformers import RobertaConfig, RobertaModel

    from sati.data.synth import write_synthetic
    from sati.testing.pipelines import write_search_pipeline
    from sati.testing.processes import loopback_env
    from sati.testing.tiny_encoder import build_tiny_text_encoder

    work = Path(tempfile.mkdtemp(prefix="bench-checkpoints-"))
    encoder = build_tiny_text_encoder(work / "roberta-base-sized")  # the tokenizer; the model is replaced
    config = RobertaConfig(vocab_size=RobertaConfig.from_pretrained(encoder).vocab_size, pad_token_id=1)
    model = RobertaModel(config)
    model.save_pretrained(encoder)
    params = sum(p.numel() for p in model.parameters())
    del model
    data = work / "synth.h5"
    write_synthetic(data, "mosi", seed=0, scale=0.01)
    print(f"bench_checkpoints {time.strftime('%Y-%m-%d %H:%M')}: encoder {params / 1e6:.0f}M parameters, work {work}")
    rows = []
    for label, tree in [("this tree", ROOT)] + ([("base", args.base.resolve())] if args.base else []):
        folder = work / label.replace(" ", "-")
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        pipeline = write_search_pipeline(
            folder / "p.yaml", data, encoder, uri, folder / "ray", {"train.lr": {"loguniform": [1.0e-5, 1.0e-4]}},
            model={"freeze_text_layers": 0, "hidden_size": 32}, train={"epochs": args.epochs, "batch_size": 16},
            search={"num_samples": args.trials, "max_concurrent": 1, "scheduler": "fifo"},
        )  # fmt: skip
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "sati.cli", "search", str(pipeline)], cwd=folder,
                             env=loopback_env(PYTHONPATH=str(tree)), capture_output=True, text=True)  # fmt: skip
        if out.returncode:
            print(out.stderr[-3000:])
            return 1
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("test-search")
        trials = client.search_runs([exp.experiment_id], "tags.`sati.role` = 'trial'")
        if label == "this tree":
            per_epoch = [
                m.value for r in trials for m in client.get_metric_history(r.info.run_id, "storage/checkpoint_mb")
            ]
        else:  # every epoch copies last.pt and best.pt
            sizes = {n: max(p.stat().st_size for p in (folder / "ray").rglob(n)) / 1e6 for n in ("last.pt", "best.pt")}
            per_epoch = [sizes["last.pt"] + sizes["best.pt"]] * (len(trials) * args.epochs)
        stored = sum(p.stat().st_size for p in (folder / "ray").rglob("*") if p.is_file()) / 1e6
        rows.append((label, len(trials), len(per_epoch), sum(per_epoch) / len(per_epoch), max(per_epoch), stored,
                     time.time() - t0))  # fmt: skip
    model_mb, optimizer_mb = params * 4 / 1e6, params * 8 / 1e6  # fp32 weights; Adam's two moments
    print(f"\none model: {model_mb:.0f} MB (fp32), one Adam state: {optimizer_mb:.0f} MB\n")
    print("| tree | trials | trial-epochs | MB per trial-epoch (mean) | largest trial-epoch MB | "
          "≤ one model + one optimizer? | left in storage MB | search s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for label, n, epochs, mean, largest, stored, wall in rows:
        ok = "yes" if largest <= (model_mb + optimizer_mb) * 1.02 else "no"
        print(f"| {label} | {n} | {epochs} | {mean:,.0f} | {largest:,.0f} | {ok} | {stored:,.0f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
