"""Helpers for tests that run `sati search` as a user does: find its runs in MLflow, and crash its
driver once a trial has logged an epoch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sati.testing.processes import loopback_env
from sati.tracking import contract as c


def parent_run_id(stdout: str) -> str:
    """The search's MLflow parent run id, from what `sati search` printed."""
    line = next(line for line in stdout.splitlines() if line.startswith("MLflow parent run:"))
    return line.split(":", 1)[1].strip()


def child_runs(client, parent_id: str) -> list:
    """The runs nested under ``parent_id``."""
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def crash_after_first_epoch(
    pipeline: Path, cwd: Path, client, search_dir_prefix: str, experiment: str = "test-search", **env: str
) -> str:
    """Start `sati search pipeline` in its own session, SIGKILL the driver and its local Ray (as a crash
    would) once a trial of the search whose storage starts with ``search_dir_prefix`` has logged a
    validation metric; returns the search's parent run id. The driver's output is in ``cwd/first.log``."""
    with open(cwd / "first.log", "w") as log:
        argv = [sys.executable, "-m", "sati.cli", "search", str(pipeline)]
        driver = subprocess.Popen(
            argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=loopback_env(**env), start_new_session=True
        )
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            time.sleep(1)
            exp = client.get_experiment_by_name(experiment)  # the driver creates it (a test may run first)
            if exp is None:
                continue
            parents = [
                r
                for r in client.search_runs([exp.experiment_id], f"tags.`{c.ROLE}` = '{c.Role.SEARCH.value}'")
                if r.data.tags[c.SEARCH_DIR].startswith(search_dir_prefix)
            ]
            if parents and any(
                client.get_metric_history(r.info.run_id, "valid/mae")
                for r in child_runs(client, parents[0].info.run_id)
            ):
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
                return parents[0].info.run_id
    raise AssertionError("the search was not seen logging an epoch:\n" + (cwd / "first.log").read_text()[-3000:])


def assert_resumed_cleanly(client, parent_id: str, trials: int, epochs: int) -> None:
    """What a user checks after resuming a crashed search: one finished run per trial, none left
    RUNNING or duplicated, each epoch's ``valid/mae`` logged once (also those a restored trial re-ran),
    and the parent run finished."""
    children = child_runs(client, parent_id)
    trial_ids = [r.data.tags[c.TRIAL_ID] for r in children]
    assert len(trial_ids) == len(set(trial_ids)) == trials, trial_ids
    reasons = [(r.info.status, r.data.tags.get(c.FAILURE_REASON)) for r in children]
    assert [r.info.status for r in children] == ["FINISHED"] * trials, reasons
    for run in children:
        history = sorted(client.get_metric_history(run.info.run_id, "valid/mae"), key=lambda m: (m.step, m.timestamp))
        assert [m.step for m in history] == list(range(1, epochs + 1)), (run.data.tags[c.TRIAL_ID], history)
    assert client.get_run(parent_id).info.status == "FINISHED"
