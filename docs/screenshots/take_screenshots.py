"""Screenshots of what a user sees after a quickstart search, promotion and evaluation: the MLflow runs
table (the link `sati search` prints), the search run's page, a trial's page, the model version's
page, and optuna-dashboard on the search's study. Taken in headless Chromium driven by Playwright.

    apt-get install chromium && pip install playwright     # Playwright drives the system's Chromium
    python docs/screenshots/take_screenshots.py            # writes docs/screenshots/*.png

It runs the quickstart pipeline (smaller: 8 trials on a tenth of the generated data) in a temporary
folder, starts `mlflow ui` and `optuna-dashboard` there on 127.0.0.1, and stops both afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SIZE = {"width": 1600, "height": 1000}


def _run(args: list[str], cwd: Path, env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "sati.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"sati {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def _serve(argv: list[str], url: str, cwd: Path, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{argv[0]} did not answer at {url}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="sati-screenshots-"))
    pipeline = REPO / "pipelines" / "quickstart.yaml"
    small = ["--set", "search.num_samples=8", "--set", "data.generate_scale=0.1"]
    out = _run(["search", str(pipeline), *small], work, env)
    parent = re.search(r"MLflow parent run: ([0-9a-f]{32})", out).group(1)
    runs_link = re.search(r"runs, best first: (\S+)", out).group(1)
    study = re.search(r"\(study '([^']+)'\)", out).group(1)
    _run(["promote", "sati-quickstart"], work, env)
    _run(["evaluate", "models:/sati-quickstart@champion", "--split", "test", "--noise", "0.5"], work, env)

    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(store)
    experiment = client.get_run(parent).info.experiment_id
    best = client.get_run(parent).data.tags.get("sati.best_trial_run_id")
    version = client.get_model_version_by_alias("sati-quickstart", "champion").version
    ui_port, dash_port = _free_port(), _free_port()
    ui = f"http://127.0.0.1:{ui_port}"
    servers = [
        _serve([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(ui_port), "--workers", "1",
                "--backend-store-uri", store], ui + "/health", work, env),
        _serve([shutil.which("optuna-dashboard") or "optuna-dashboard", "--host", "127.0.0.1", "--port", str(dash_port),
                f"sqlite:///{work / 'optuna.db'}"], f"http://127.0.0.1:{dash_port}/api/studies", work, env),
    ]  # fmt: skip
    studies = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/api/studies").read())["studies"]
    study_id = next(s["study_id"] for s in studies if s["study_name"] == study)
    pages = {
        "01-runs-table.png": runs_link.replace("http://127.0.0.1:5000", ui),
        "02-search-run.png": f"{ui}/#/experiments/{experiment}/runs/{parent}",
        "03-search-run-plots.png": f"{ui}/#/experiments/{experiment}/runs/{parent}/artifacts/plots",
        "04-best-trial.png": f"{ui}/#/experiments/{experiment}/runs/{best}/model-metrics",
        "05-model-version.png": f"{ui}/#/models/sati-quickstart/versions/{version}",
        "06-optuna-dashboard.png": f"http://127.0.0.1:{dash_port}/dashboard/studies/{study_id}",
    }
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu",
                                         "--disable-background-networking", "--disable-component-update"])  # fmt: skip
            page = browser.new_page(viewport=SIZE)
            for name, url in pages.items():
                page.goto(url)
                page.wait_for_load_state("networkidle")
                time.sleep(4)  # charts and tables render after the data arrives
                page.screenshot(path=str(args.out / name))
                print(f"{name}: {url}")
            browser.close()
    finally:
        for proc in servers:
            os.killpg(proc.pid, 15)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
