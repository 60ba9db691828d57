"""Processes the tests and benchmarks start: an environment that keeps everything on 127.0.0.1,
free ports, background services in sessions of their own, and teardown by pid, never by name.

Cleanup never uses ``ray stop``, ``pkill`` or ``killall``: they stop every matching process on the
machine, other people's included. A service is a process group of its own; ``kill_tree`` signals the
group and every process that descends from it, and ``sweep`` kills whatever still carries a marker
in its environment (Ray's workers rename themselves, so their command line cannot be matched).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARK = "SATI_CLUSTER_MARK"


OFFLINE_LOOPBACK = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "PYTHONUNBUFFERED": "1",
}
"""Settings that keep a child process offline, without telemetry and with Ray on loopback only."""


# Not passed on from this process: ``mlflow.set_tracking_uri`` (which commands run in-process call) exports
# the URI, and a child started later by another test would log to that store instead of its own.
NOT_INHERITED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def loopback_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this one's but ``NOT_INHERITED``, with ``OFFLINE_LOOPBACK`` and then
    ``extra`` on top."""
    inherited = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    return {**inherited, **OFFLINE_LOOPBACK, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _signal(pids, sig) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 15.0) -> list[int]:
    """Signal the process group ``proc`` leads and every descendant; SIGKILL what outlives ``grace_s``.
    Returns the pids that were signalled."""
    pids = [proc.pid] + descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    _signal(pids, sig)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(alive(p) for p in pids):
        proc.poll()
        time.sleep(0.2)
    if any(alive(p) for p in pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _signal([p for p in pids if alive(p)], signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return pids


def sweep(mark: str) -> list[int]:
    """SIGKILL every process whose environment carries ``SATI_CLUSTER_MARK=<mark>``."""
    needle = f"{MARK}={mark}".encode()
    hit = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            hit.append(int(entry))
    _signal(hit, signal.SIGKILL)
    return hit


def wait_for(
    predicate,
    timeout_s: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    every_s: float = 0.5,
):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(every_s)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    state = (
        f"exited with {proc.returncode}"
        if proc is not None and proc.returncode is not None
        else f"not ready after {timeout_s:.0f} s"
    )
    raise RuntimeError(f"{what} {state}; log tail:\n{tail}")


class Service:
    """A background process in a session of its own, with its output in ``log``."""

    def __init__(self, name: str, argv: list, log: Path, env: dict, **popen):
        self.name, self.log_path = name, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [str(a) for a in argv], stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True, **popen
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 15.0) -> list[int]:
        pids = kill_tree(self.proc, sig, grace_s)
        self._log.close()
        return pids


def run_sati(args: list[str], cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sati.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=loopback_env(**env),
    )
