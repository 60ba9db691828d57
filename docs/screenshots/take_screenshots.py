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
import contextlib
import json
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


def _serve(name: str, argv: list, url: str, work: Path, env: dict):
    """Start a server in a session of its own and wait until ``url`` answers."""
    from sati.testing.processes import Service, wait_for
    from sati.testing.servers import answers

    service = Service(name, argv, work / f"{name}.log", env, cwd=work)
    try:
        wait_for(answers(url), 120, name, service.proc, service.log_path)
    except RuntimeError:
        service.stop()
        raise
    return service


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--work", type=Path, help="a folder of an earlier run (kept when a run fails): reuse its search")
    args = ap.parse_args()
    from sati.config import metric_direction
    from sati.testing.processes import free_port, loopback_env
    from sati.tracking import contract as c
    from sati.tracking.leaderboard import MODEL_TRAINING_VIEW, run_link, runs_table_link

    env = loopback_env()
    work = args.work or Path(tempfile.mkdtemp(prefix="sati-screenshots-"))
    if (work / "search.out").exists():  # a folder of an earlier run: take the pictures again
        out = (work / "search.out").read_text()
    else:
        pipeline = REPO / "pipelines" / "quickstart.yaml"
        small = ["--set", "search.num_samples=8", "--set", "data.generate_scale=0.1"]
        out = _run(["search", str(pipeline), *small], work, env)
        _run(["promote", "sati-quickstart"], work, env)
        _run(["evaluate", "models:/sati-quickstart@champion", "--split", "test", "--noise", "0.5"], work, env)
        (work / "search.out").write_text(out)
    parent = re.search(r"MLflow parent run: ([0-9a-f]{32})", out).group(1)
    study = re.search(r"\(study '([^']+)'\)", out).group(1)

    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(store)
    experiment = client.get_run(parent).info.experiment_id
    metric = client.get_run(parent).data.params["train.selection_metric"]
    best = client.get_run(parent).data.tags.get(c.BEST_TRIAL_RUN)
    version = client.get_model_version_by_alias("sati-quickstart", "champion").version
    ui_port, dash_port = free_port(), free_port()
    ui = f"http://127.0.0.1:{ui_port}"
    dashboard = Path(sys.executable).with_name("optuna-dashboard")  # installed beside this Python (the dev extra)
    servers = [
        _serve("mlflow-ui", [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", ui_port,
                             "--workers", 1, "--backend-store-uri", store], ui + "/health", work, env),
    ]  # fmt: skip
    try:
        servers.append(_serve("optuna-dashboard", [dashboard, "--host", "127.0.0.1", "--port", dash_port,
                                                   f"sqlite:///{work / 'optuna.db'}"],
                              f"http://127.0.0.1:{dash_port}/api/studies", work, env))  # fmt: skip
        studies = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/api/studies").read())[
            "study_summaries"
        ]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == study)

        def tab(run: str, name: str) -> str:
            return run_link(experiment, run).replace("?", f"/{name}?")

        pages = {
            "01-runs-table.png": runs_table_link(ui, experiment, parent, metric, metric_direction(metric)),
            "02-search-run.png": f"{ui}/{run_link(experiment, parent)}",
            "03-search-run-plots.png": f"{ui}/{tab(parent, 'artifacts/plots/optimization_history.png')}",
            "04-best-trial.png": f"{ui}/{tab(best, 'model-metrics')}",
            "05-model-version.png": f"{ui}/#/models/sati-quickstart/versions/{version}?{MODEL_TRAINING_VIEW}",
            "06-optuna-dashboard.png": f"http://127.0.0.1:{dash_port}/dashboard/studies/{study_id}",
        }
        _shoot(pages, args.chromium, args.out)
    finally:
        for service in servers:
            service.stop()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _shoot(pages: dict[str, str], chromium: str, out: Path) -> None:
    """Open each page in headless Chromium and save it as ``out/<name>``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                     "--disable-background-networking", "--disable-component-update"])  # fmt: skip
        page = browser.new_page(viewport=SIZE)
        for name, url in pages.items():
            page.goto(url, wait_until="load")
            with contextlib.suppress(PlaywrightTimeout):  # the runs table polls: the network may never go quiet
                page.wait_for_load_state("networkidle", timeout=15_000)
            time.sleep(4)  # charts and tables render after the data arrives
            assistant = page.locator('button[aria-label="Close"]').filter(visible=True)
            if "#/" in url and assistant.count():  # MLflow's Assistant side panel covers the right third
                with contextlib.suppress(PlaywrightTimeout):
                    assistant.first.click(timeout=5_000)
                    time.sleep(1)
            page.screenshot(path=str(out / name))
            print(f"{name}: {url}")
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
