"""Time the dataset path at MOSEI size: prepare, open, first batch, one pass over the training split.

    HF_HUB_OFFLINE=1 python benchmarks/bench_data.py [--scale 0.1] [--keep DIR]

1. Generates a MOSEI-sized dataset (``sati.data.synth.generate("mosei")``: 16326/1871/4659 segments,
   50 steps, audio 74-d, video 35-d) and writes it as an MMSA ``aligned_50.pkl`` (raw_text, id,
   text_bert, audio, vision, regression_labels; without the 768-d ``text`` BERT features, which would
   add 3.5 GB). Not timed.
2. ``sati data prepare --from mmsa … --tokenizer <tiny RoBERTa tokenizer>``: restricted unpickling,
   checks, tokenization of every text, writing the HDF5 file. Timed as a whole and per stage.
3. Open (attributes only), then from opening to the first shuffled training batch of 64 through
   ``load_split_datasets`` + ``make_loader`` (stored tokens used), and the same with tokenization at
   load (``data.max_text_tokens`` changed so the stored tokens do not apply), for comparison.
4. One pass over the training split with the DataLoader (collate only, no model).
Nothing is downloaded; the tokenizer is built by sati/testing/tiny_encoder.py.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.bench_step import machine  # noqa: E402
from sati.config import from_dict  # noqa: E402
from sati.data.h5format import read_info  # noqa: E402
from sati.data.loaders import load_split_datasets, make_loader  # noqa: E402
from sati.data.synth import generate  # noqa: E402
from sati.ingest.prepare import prepare_dataset  # noqa: E402
from sati.testing.tiny_encoder import build_tiny_text_encoder  # noqa: E402

BATCH = 64


def write_mmsa_pickle(path: Path, scale: float) -> int:
    """The generated MOSEI-like splits in MMSA's aligned_50 structure; returns the segment count."""
    data, total = {}, 0
    for split, s in generate("mosei", seed=0, scale=scale).items():
        n, t = len(s), s.audio.shape[1]
        mask = (np.arange(t)[None, :] < s.lengths[:, None]).astype(np.int64)  # mask row sum = A/V length
        data[split] = {
            "raw_text": np.array(s.text, dtype=object),
            "id": np.array([i.replace("_", "$_$") for i in s.ids], dtype=object),
            "text_bert": np.stack([mask * 101, mask, np.zeros_like(mask)], 1),
            "audio": s.audio,
            "vision": s.video,
            "regression_labels": s.labels,
        }
        total += n
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return total


def first_batch(cfg) -> tuple[float, float, object]:
    """Seconds from opening the file to the first shuffled training batch, and the load part alone."""
    t0 = time.perf_counter()
    datasets, _ = load_split_datasets(cfg, ("train",))
    t_load = time.perf_counter() - t0
    batch = next(iter(make_loader(datasets["train"], BATCH, shuffle=True, seed=0)))
    return time.perf_counter() - t0, t_load, (datasets, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of MOSEI's split sizes")
    parser.add_argument("--keep", help="write the files here instead of a temporary folder")
    args = parser.parse_args()
    import torch

    print("SATI data benchmark —", time.strftime("%Y-%m-%d %H:%M"))
    for k, v in machine(torch.device("cpu")):
        print(f"  {k:7s} {v}")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tiny = build_tiny_text_encoder(work / "tiny")
        pkl, out = work / "aligned_50.pkl", work / "mosei.h5"
        t0 = time.perf_counter()
        n = write_mmsa_pickle(pkl, args.scale)
        print(
            f"  source  {n} segments, {pkl.stat().st_size / 2**20:.0f} MiB MMSA pickle "
            f"(generated in {time.perf_counter() - t0:.1f} s, not timed below)\n"
        )

        stamps: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        prepare_dataset(
            "mmsa",
            pkl,
            out,
            tokenizer=str(tiny),
            max_text_tokens=50,
            log=lambda line: stamps.append((time.perf_counter(), line)),
        )
        t_prepare = time.perf_counter() - t0
        t_read = next(t for t, line in stamps if "aligned file" in line) - t0
        t_tok = next(t for t, line in reversed(stamps) if "tokenized" in line) - t0 - t_read
        t_write = t_prepare - t_read - t_tok
        size = out.stat().st_size / 2**20

        t0 = time.perf_counter()
        read_info(out)
        t_open = time.perf_counter() - t0
        base = {
            "format": 2,
            "name": "bench",
            "data": {"path": str(out), "max_text_tokens": 50},
            "model": {"text_encoder": str(tiny)},
            "train": {"device": "cpu"},
        }
        t_first, t_load, (datasets, _) = first_batch(from_dict(base, "bench"))
        base["data"]["max_text_tokens"] = 49  # stored tokens (cut at 50) no longer apply
        t_first_tok, t_load_tok, _ = first_batch(from_dict(base, "bench"))

        train = datasets["train"]
        t0 = time.perf_counter()
        batches = sum(1 for _ in make_loader(train, BATCH, shuffle=True, seed=0))
        t_pass = time.perf_counter() - t0

    rows = [
        ("prepare, total (`--from mmsa`, tiny tokenizer)", f"{t_prepare:.2f} s", f"{n} segments → {size:.0f} MiB .h5"),
        ("  read pickle (restricted) + convert + checks", f"{t_read:.2f} s", ""),
        ("  tokenize all texts (+ those at the budget again)", f"{t_tok:.2f} s", ""),
        ("  write HDF5 (temp file + rename, checksum)", f"{t_write:.2f} s", ""),
        ("open (attributes only)", f"{t_open * 1e3:.1f} ms", ""),
        (
            "open → first training batch, stored tokens",
            f"{t_first:.2f} s",
            f"load {t_load:.2f} s (tokenizer, train split {len(train)}); goal < 2 s: "
            + ("met" if t_first < 2 else "NOT met"),
        ),
        ("open → first training batch, tokenizing at load", f"{t_first_tok:.2f} s", f"load {t_load_tok:.2f} s"),
        (
            f"one pass over train, batch {BATCH}, collate only",
            f"{t_pass:.2f} s",
            f"{batches} batches, {t_pass / batches * 1e3:.1f} ms each",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'what':{width}s} | {'time':>9s} | note |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|------|")
    for what, t, note in rows:
        print(f"| {what:{width}s} | {t:>9s} | {note} |")


if __name__ == "__main__":
    main()
