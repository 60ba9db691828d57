"""The search driver at hundreds of trials: throughput, driver CPU and memory, MLflow requests, the
end-of-search summary and resuming, this tree against another one (``--base``).

A search of N short trials (the tiny RoBERTa of ``sati.testing.tiny_encoder``, a small generated
dataset, 1 epoch, FIFO, 2 at a time) against a real ``mlflow server`` (SQLite) with a real local Ray
and Optuna. The driver runs in a launcher that records its own CPU time and peak memory at exit; the
server's access log counts MLflow requests. Then ``sati search --resume <dir>`` of the finished search.

    python benchmarks/bench_throughput.py --base ../sati-base --trials 300
    python benchmarks/bench_throughput.py --trials 100 --trials 300     # this tree only: growth with N
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = """
import atexit, json, resource, sys
STATS = sys.argv.pop(1)
def _dump():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    json.dump({"cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak_kb / 1024}, open(STATS, "w"))
atexit.register(_dump)
from sati.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _requests(log: Path) -> int:
    return sum(
        1 for line in log.read_text(errors="replace").splitlines() if re.search(r'"(GET|POST|PATCH|DELETE) /', line)
    )


def run(tree: Path, work: Path, trials: int, data: Path, encoder: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from sati.testing.pipelines import write_search_pipeline
    from sati.testing.processes import loopback_env
    from sati.testing.servers import MlflowServer

    work.mkdir(parents=True)
    server = MlflowServer(work / "mlflow")
    report: dict = {"tree": str(tree), "trials": trials}
    try:
        pipeline = write_search_pipeline(
            work / "p.yaml", data, encoder, server.uri, work / "ray", {"train.lr": {"loguniform": [1.0e-4, 3.0e-3]}},
            search={"num_samples": trials, "max_concurrent": 2, "scheduler": "fifo"}, train={"epochs": 1},
        )  # fmt: skip
        env = loopback_env(PYTHONPATH=str(tree))
        (work / "launch.py").write_text(LAUNCHER)
        before = _requests(server.service.log_path)
        for step, args in (("search", ["search", str(pipeline)]), ("resume", None)):
            if args is None:
                search_dir = next(
                    p for p in (work / "ray").iterdir() if p.is_dir() and (p / "sati_search.json").exists()
                )
                args = ["search", "--resume", str(search_dir)]
            stats = work / f"{step}.json"
            t0, fit_end = time.time(), None
            proc = subprocess.Popen([sys.executable, str(work / "launch.py"), str(stats), *args], cwd=work, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if "Total run time" in line:
                    fit_end = time.time()
            proc.wait()
            end = time.time()
            report[step] = {"rc": proc.returncode, "wall_s": round(end - t0, 1), **json.loads(stats.read_text())}
            if fit_end:
                report[step]["after_fit_s"] = round(end - fit_end, 1)  # summary + shutdown
            summarized = [m.group(1) for ln in lines if (m := re.search(r"summarized \d+ trials in ([\d.]+) s", ln))]
            if summarized:
                report[step]["summary_s"] = float(summarized[-1])
            if proc.returncode:
                report[step]["tail"] = "".join(lines[-40:])
                break
            if step == "search":
                report["mlflow_requests"] = _requests(server.service.log_path) - before
                client = MlflowClient(server.uri)
                exp = client.get_experiment_by_name("test-search")
                runs = client.search_runs([exp.experiment_id], "tags.`sati.role` = 'trial'", max_results=10000)
                span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
                report["trial_runs"] = len(runs)
                report["trials_per_min"] = round(60 * len(runs) / span, 1)
                report["driver_cpu_s_per_trial"] = round(report["search"]["cpu_s"] / len(runs), 3)
                report["requests_per_trial_epoch"] = round(report["mlflow_requests"] / len(runs), 1)
    finally:
        server.stop()
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, action="append", help="search sizes (repeatable; default 300)")
    ap.add_argument("--base", type=Path, help="another checkout to compare with (same sizes)")
    args = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0")
    from sati.data.synth import write_synthetic
    from sati.testing.tiny_encoder import build_tiny_text_encoder

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    data = work / "synth.h5"
    write_synthetic(data, "mosi", seed=0, scale=0.02)
    encoder = build_tiny_text_encoder(work / "encoder")
    print(f"bench_throughput {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, work folder {work}")
    trees = [("this tree", ROOT)] + ([("base", args.base.resolve())] if args.base else [])
    results = []
    for n in args.trials or [300]:
        for label, tree in trees:
            r = run(tree, work / f"{label.replace(' ', '-')}-{n}", n, data, encoder)
            r["label"] = label
            results.append(r)
            print(json.dumps(r, indent=1))
    print("\n| tree | trials | trials/min | driver CPU s/trial | MLflow requests/trial-epoch | summary s | "
          "after fit s | resume s | driver peak RSS MB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for r in results:
        s, res = r.get("search", {}), r.get("resume", {})
        cells = [r["label"], r.get("trial_runs"), r.get("trials_per_min"), r.get("driver_cpu_s_per_trial"),
                 r.get("requests_per_trial_epoch"), s.get("summary_s", "–"), s.get("after_fit_s"), res.get("wall_s"),
                 f"{s.get('peak_rss_mb', 0):.0f}"]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
