"""What the dataset reader's checks cost at load: structure checks and checksum verification, this
tree against another (``--base``), on a MOSI-size and a MOSEI-size generated file.

    python benchmarks/bench_data_checks.py --base ../sati-base   # git worktree add ../sati-base <commit>

For each file, each tree reads the train and valid splits with ``read_split`` (what ``sati train``,
every search trial (once per worker process), ``evaluate`` and ``predict`` do), five times; the best
time is reported. This tree's ``read_split`` checks links, storage, dtypes, sizes and finiteness and
recomputes the split's SHA-256; ``verify=False`` leaves the checksum out, so the two rows separate
the checks from the hashing. The files are read from the page cache (written just before).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import inspect, json, sys, time
from sati.data.h5format import read_split
path = sys.argv[1]
kwargs = {"verify": sys.argv[2] == "1"} if "verify" in inspect.signature(read_split).parameters else {}
best = float("inf")
for _ in range(5):
    t0 = time.perf_counter()
    for split in ("train", "valid"):
        read_split(path, split, **kwargs)
    best = min(best, time.perf_counter() - t0)
print(json.dumps(best))
"""


def timed(python: Path, tree: Path, path: Path, verify: bool) -> float:
    out = subprocess.run(
        [str(python), "-c", CHILD, str(path), "1" if verify else "0"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="another tree with its own .venv (compared side by side)")
    args = ap.parse_args()
    from sati.data.synth import write_synthetic

    trees = [("this tree", Path(sys.executable), ROOT)]
    if args.base:
        base = args.base.resolve()
        trees.append((f"base ({args.base.name})", base / ".venv" / "bin" / "python", base))
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "MOSI size (2199 segments, audio 74-d, video 47-d)": ("mosi", 0),
            "MOSI size + 768-d text features": ("mosi", 768),
            "MOSEI size (22856 segments, audio 74-d, video 35-d)": ("mosei", 0),
        }
        print("| file | MiB | tree | read train+valid, s | of which checksum, s |")
        print("|---|---:|---|---:|---:|")
        for label, (preset, text_dim) in files.items():
            path = Path(tmp) / f"{preset}-{text_dim}.h5"
            write_synthetic(path, preset, seed=0, text_feature_dim=text_dim)
            mib = path.stat().st_size / 2**20
            for name, python, tree in trees:
                full = timed(python, tree, path, verify=True)
                unhashed = timed(python, tree, path, verify=False) if name == "this tree" else None
                share = f"{full - unhashed:.3f}" if unhashed is not None else "– (none)"
                print(f"| {label} | {mib:.0f} | {name} | {full:.3f} | {share} |")


if __name__ == "__main__":
    main()
