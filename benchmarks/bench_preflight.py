"""How soon a search that cannot run says so: a GPU request on a machine without one, this tree
against another (``--base``), and the pre-flight on a 3-node cluster of this machine.

1. ``sati search pipelines/quickstart.yaml --set search.resources.gpu=1`` on this machine (no GPU), in a
   fresh folder per tree with that tree's ``pipelines/`` and ``search_spaces/``: seconds until the
   command exits (or is stopped at ``--wait-s``), its exit status, and whether an MLflow store was
   created.
2. (needs ``unshare -n``, i.e. root) a head with 0 CPUs and two worker raylets in a loopback-only
   network namespace, the second of which sees the data and storage folders empty
   (``sati.testing.cluster``'s ``preflight`` scenario): ``sati search --check`` on a good setup, with
   the data on the head and the first worker only, and with a storage path that is not shared. For
   each: the exit status, the pre-flight's own time (the line ``pre-flight passed in … s``, else the
   command's), and the refusal.

    python benchmarks/bench_preflight.py --base ../sati-base  # git worktree add ../sati-base <commit>
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}


def gpu_request(tree: Path, work: Path, wait_s: float) -> dict:
    """The quickstart with ``--set search.resources.gpu=1``, with the code of ``tree``, in ``work``."""
    from sati.testing.processes import Service, loopback_env

    work.mkdir(parents=True)
    for folder in ("pipelines", "search_spaces"):
        shutil.copytree(tree / folder, work / folder)
    argv = [sys.executable, "-m", "sati.cli", "search", "pipelines/quickstart.yaml", "--set", "search.resources.gpu=1"]
    t0 = time.time()
    search = Service("search", argv, work / "search.log", loopback_env(PYTHONPATH=str(tree)), cwd=work)
    try:
        rc = search.proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        rc = None
    seconds = time.time() - t0
    search.stop()
    log = (work / "search.log").read_text(errors="replace")
    said = [line for line in log.splitlines() if line.startswith("error:")]
    store = (work / "mlflow.db").exists() or (work / "mlruns").exists()
    return {"seconds": seconds, "rc": rc, "mlflow store": store, "said": said[:1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="another checkout to compare with")
    ap.add_argument("--wait-s", type=float, default=150, help="stop a search still waiting after this long")
    args = ap.parse_args()
    from sati.data.synth import write_synthetic
    from sati.testing.cluster import can_unshare, run_in_netns
    from sati.testing.pipelines import write_search_pipeline
    from sati.testing.tiny_encoder import build_tiny_text_encoder

    work = Path(tempfile.mkdtemp(prefix="bench-preflight-"))
    print(f"bench_preflight {time.strftime('%Y-%m-%d %H:%M')}, work folder {work}")
    encoder = build_tiny_text_encoder(work / "tiny-roberta")
    data = work / "synth.h5"
    write_synthetic(data, "mosi", seed=0, scale=0.1)

    print("\n1. `sati search pipelines/quickstart.yaml --set search.resources.gpu=1` on a machine without a GPU\n")
    print("| tree | exits after | exit status | MLflow store created | what it said |\n|---|---:|---:|---|---|")
    for label, tree in (("base", args.base.resolve()), ("this tree", ROOT)):
        r = gpu_request(tree, work / label.replace(" ", "-"), args.wait_s)
        exits = f"{r['seconds']:.1f} s" if r["rc"] is not None else f"still waiting, stopped at {r['seconds']:.0f} s"
        print(f"| {label} | {exits} | {r['rc']} | {'yes' if r['mlflow store'] else 'no'} | {' '.join(r['said'])} |")

    if not can_unshare():
        print("\n2. skipped: `unshare -n` is not allowed here (needs root)")
        return 0
    print("\n2. `sati search --check` on a 3-node cluster of this machine (head 0 CPUs, 2 worker raylets)\n")
    pipeline = write_search_pipeline(
        work / "cluster.yaml", data, encoder, "http://127.0.0.1:1", work / "shared-storage", SPACE
    )
    report = run_in_netns("preflight", pipeline, work / "cluster", timeout_s=600)
    if "error" in report:
        print(report["error"], report.get("traceback", ""))
        return 1
    print("| setup | exit status | pre-flight | whole `--check` command | refusal |\n|---|---:|---:|---:|---|")
    for case in ("good", "data_on_head_only", "storage_not_shared"):
        r = report[case]
        passed = re.search(r"pre-flight passed in ([\d.]+) s", r["output"])
        refusal = next((line for line in r["output"].splitlines() if line.startswith("✗")), "")
        own = f"{passed.group(1)} s" if passed else "–"
        print(f"| {case} | {r['rc']} | {own} | {r['seconds']} s | {refusal[:160]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
