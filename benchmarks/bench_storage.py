"""Bytes a search leaves in its storage and in MLflow: the quickstart, this tree against another one.

Runs the README's main job (`sati search pipelines/quickstart.yaml`, then `sati promote sati-quickstart`
and `sati evaluate models:/sati-quickstart@champion --split test`) on the embedded defaults, in a
fresh folder per tree, and reports what is on disk afterwards:

- the search's storage (``runs/search/<name>``: Tune's experiment state and checkpoints),
- MLflow's artifacts (``mlruns/``: trial checkpoints, plots, the registered model),
- per checkpoint kind, the largest ``best.pt`` / ``last.pt`` in the search storage,

side by side with another checkout of the project (``--base``, e.g. a ``git worktree`` of the main
it started from), as a ratio. Both trees run with the same interpreter (the base via ``PYTHONPATH``).

    python benchmarks/bench_storage.py --base ../sati-base
    python benchmarks/bench_storage.py --base ../sati-base --set model.text_encoder=... --set ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_tree(tree: Path, work: Path, sets: list[str]) -> dict:
    """The quickstart in ``work`` with the code of ``tree``; bytes on disk after each step."""
    from sati.testing.processes import loopback_env

    work.mkdir(parents=True)
    for folder in ("pipelines", "search_spaces"):
        shutil.copytree(tree / folder, work / folder)
    env = loopback_env(PYTHONPATH=str(tree))
    cli = [sys.executable, "-m", "sati.cli"]
    overrides = [a for s in sets for a in ("--set", s)]
    steps = {
        "search": [*cli, "search", "pipelines/quickstart.yaml", *overrides],
        "promote": [*cli, "promote", "sati-quickstart"],
        "evaluate": [*cli, "evaluate", "models:/sati-quickstart@champion", "--split", "test"],
    }
    report: dict = {"tree": str(tree)}
    for step, argv in steps.items():
        t0 = time.time()
        out = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
        report[f"{step}_s"] = round(time.time() - t0, 1)
        report[f"{step}_rc"] = out.returncode
        if out.returncode:
            report[f"{step}_error"] = out.stderr[-2000:]
            break
        report[f"after_{step}"] = {
            "search storage": du(work / "runs" / "search"),
            "mlflow artifacts": du(work / "mlruns"),
        }
    for kind in ("best.pt", "last.pt"):
        sizes = [p.stat().st_size for p in (work / "runs" / "search").rglob(kind)]
        report[f"largest {kind}"] = max(sizes, default=0)
        report[f"{kind} files"] = len(sizes)
    return report


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="another checkout to compare with")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="pipeline overrides for both trees")
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    print(f"bench_storage {time.strftime('%Y-%m-%d %H:%M')}, work folder {work}, overrides {args.sets or 'none'}")
    results = {}
    for label, tree in (("base", args.base.resolve()), ("this tree", ROOT)):
        results[label] = run_tree(tree, work / label.replace(" ", "-"), args.sets)
        print(json.dumps(results[label], indent=1))
    print("\n| | base | this tree | base / this |\n|---|---:|---:|---:|")
    for where in ("search storage", "mlflow artifacts"):
        for step in ("search", "evaluate"):
            a, b = (results[k].get(f"after_{step}", {}).get(where, 0) for k in ("base", "this tree"))
            print(f"| {where} after {step} | {mb(a)} | {mb(b)} | {a / b if b else float('nan'):.1f}× |")
    a = sum(results["base"].get("after_evaluate", {}).values())
    b = sum(results["this tree"].get("after_evaluate", {}).values())
    print(f"| **total after evaluate** | {mb(a)} | {mb(b)} | **{a / b if b else float('nan'):.1f}×** |")
    for kind in ("best.pt", "last.pt"):
        a, b = (results[k][f"largest {kind}"] for k in ("base", "this tree"))
        print(f"| largest {kind} in storage | {mb(a)} | {mb(b)} | {a / b if b else float('nan'):.1f}× |")
    for step in ("search", "promote", "evaluate"):
        print(f"| {step} (s, rc) | {results['base'].get(f'{step}_s')} ({results['base'].get(f'{step}_rc')}) | "
              f"{results['this tree'].get(f'{step}_s')} ({results['this tree'].get(f'{step}_rc')}) | |")  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.get("evaluate_rc") == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
