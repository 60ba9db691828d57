"""A Ray cluster on one machine, for tests/test_cluster_one_machine.py and benchmarks/bench_cluster.py.

Everything runs in ONE loopback-only network namespace (``unshare -n``): a private Postgres, a
Postgres-backed ``mlflow server``, a Ray head with 0 CPUs, worker raylets with 1 CPU each, and the
``sati search`` driver. Nothing in the namespace can be reached from outside it, so the orchestration
runs in it too::

    unshare -n python -m sati.testing.cluster lose-a-worker --pipeline p.yaml --root DIR --report r.json
    unshare -n python -m sati.testing.cluster throughput --workers 2 --pipeline p.yaml --root DIR --report r.json

and writes a JSON report that the caller checks (``run_in_netns`` does both steps).

Cleanup never uses ``ray stop`` (``sati.testing.processes``): each Ray node is a ``ray start --block``
in its own session, stopped by killing that process group and its descendants; every process started
here carries ``SATI_CLUSTER_MARK=<random id>``, and teardown finally kills whatever still carries it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sati.testing.processes import (
    MARK,
    REPO,
    Service,
    alive,
    descendants,
    free_port,
    kill_tree,
    loopback_env,
    sweep,
    wait_for,
)
from sati.testing.servers import MlflowServer, Postgres
from sati.tracking import contract
from sati.tracking.searches import STEP_METRIC

RAY = Path(sys.executable).parent / "ray"


# ---------------------------------------------------------------------------------------------
# What the machine must have


def can_unshare() -> bool:
    """A loopback-only network namespace can be made (root, or CAP_SYS_ADMIN) and `ip` is there."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class CpuSampler:
    """CPU seconds used while it runs: by the marked processes (trial workers, the `sati search`
    driver, Ray's daemons) and by the whole machine (/proc/stat), so other load shows up."""

    def __init__(self, mark: str, every_s: float = 1.0):
        import threading

        self.needle, self.every_s = f"{MARK}={mark}".encode(), every_s
        self.tick = os.sysconf("SC_CLK_TCK")
        self.last: dict[int, tuple[str, int]] = {}  # pid → (kind, utime + stime ticks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _machine() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]) - idle, sum(fields[:8])

    def _kind(self, pid: str) -> str:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if "sati.cli" in args:
            return "driver"
        if args.startswith("ray::") and not args.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
            return "trial workers"
        return "Ray daemons"

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if self.needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    continue
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                self.last[int(entry)] = (self._kind(entry), int(stat[11]) + int(stat[12]))
            except (OSError, IndexError, ValueError):
                continue

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def start(self) -> CpuSampler:
        self._sample()
        self.base = dict(self.last)
        self.t0, self.m0 = time.time(), self._machine()
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        busy, _total = (b - a for a, b in zip(self.m0, self._machine()))
        by_kind: dict[str, float] = {}
        for pid, (kind, ticks) in self.last.items():
            by_kind[kind] = by_kind.get(kind, 0.0) + (ticks - self.base.get(pid, (kind, 0))[1]) / self.tick
        ours = sum(by_kind.values())
        wall = time.time() - self.t0
        return {
            "wall_s": round(wall, 1),
            "cores": len(os.sched_getaffinity(0)),
            "machine_busy_cpu_s": round(busy / self.tick, 1),
            **{f"{k} cpu_s": round(v, 1) for k, v in sorted(by_kind.items())},
            "other processes cpu_s": round(max(busy / self.tick - ours, 0.0), 1),
        }


class RayCluster:
    """A Ray head with 0 CPUs and worker raylets, each a `ray start --block` in a session of its own."""

    def __init__(self, env: dict, log_dir: Path, object_store_bytes: int = 150 * 1024**2):
        self.env, self.log_dir = env, log_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # a short path: Ray's unix sockets live under it (108-byte limit)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="satic", dir="/tmp"))
        self.object_store = object_store_bytes
        self.head: Service | None = None
        self.workers: list[Service] = []

    def _common(self) -> list:
        # Several nodes on one IP: each its own dashboard-agent port and random worker ports, as
        # ray.cluster_utils does for its test clusters (by default every node would take 52365
        # and hand out worker ports from the same 10002-19999 range).
        return [
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            f"--object-store-memory={self.object_store}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--block",
        ]

    def start_head(self) -> Service:
        self.head = Service(
            "ray-head",
            [
                RAY,
                "start",
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                "--num-gpus=0",
                "--include-dashboard=false",
                *self._common(),
            ],
            self.log_dir / "ray-head.log",
            self.env,
        )
        return self.head

    def add_worker(self, num_cpus: int = 1, hide: tuple[Path, ...] = ()) -> Service:
        """A worker raylet; ``hide``: folders it sees empty (a private mount namespace with a tmpfs over
        each), as a machine without the shared mount would."""
        i = len(self.workers) + 1
        argv = [RAY, "start", f"--address={self.address}", f"--num-cpus={num_cpus}", "--num-gpus=0", *self._common()]
        if hide:
            mounts = " && ".join(f"mkdir -p '{d}' && mount -t tmpfs none '{d}'" for d in hide)
            command = " ".join(f"'{a}'" for a in argv)
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && exec {command}"]
        worker = Service(f"ray-worker-{i}", argv, self.log_dir / f"ray-worker-{i}.log", self.env)
        self.workers.append(worker)
        return worker

    @staticmethod
    def wait_started(node: Service, timeout_s: float = 180) -> None:
        wait_for(lambda: "Ray runtime started" in node.log_text(), timeout_s, node.name, node.proc, node.log_path)

    @staticmethod
    def node_id(node: Service) -> str:
        """The Ray node id of a `ray start` process: its raylet's --node_id argument."""
        for pid in descendants(node.proc.pid):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"/raylet"):
                for a in args:
                    if a.startswith(b"--node_id="):
                        return a.split(b"=", 1)[1].decode()
        raise RuntimeError(f"{node.name}: no raylet process found")

    def status(self) -> str:
        try:
            return subprocess.run(
                [str(RAY), "status", f"--address={self.address}"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        except subprocess.TimeoutExpired:  # a loaded machine: the caller polls again
            return ""

    def active_nodes(self) -> list[str]:
        text = self.status()
        active = text.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in text else ""
        return re.findall(r"node_([0-9a-f]{20,})", active)

    def wait_nodes(self, ids: list[str], timeout_s: float = 180) -> float:
        """Wait until every node in ``ids`` is active in `ray status`; returns the seconds waited."""
        start = time.time()
        wait_for(lambda: set(ids) <= set(self.active_nodes()), timeout_s, f"ray nodes {ids}", every_s=2)
        return time.time() - start

    def stop(self) -> None:
        for node in self.workers + ([self.head] if self.head else []):
            if node.proc.returncode is None:
                node.stop(grace_s=5)  # the head drains for up to 30 s on SIGTERM; no need here
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def cluster_env(mark: str) -> dict:
    """One environment for every process of the cluster: the same RAY_AUTH_MODE and a private token."""
    env = loopback_env(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        **{MARK: mark},
        PYTHONPATH=str(REPO),
        TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0",
    )
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # it forbids `ray start --address`
    return env


def start_search(
    pipeline: Path, address: str, env: dict, log_dir: Path, cwd: Path, *overrides: str, extra: tuple[str, ...] = ()
) -> Service:
    sets = [a for o in overrides for a in ("--set", o)] + list(extra)
    return Service(
        "sati-search",
        [sys.executable, "-m", "sati.cli", "search", pipeline, "--address", address, *sets],
        log_dir / "sati-search.log",
        env,
        cwd=cwd,
    )


def _run_record(run) -> dict:
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "name": run.info.run_name,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "tags": dict(run.data.tags),
    }


def _trial_runs(client, experiment: str, extra: str = "") -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id], f"tags.`{contract.ROLE}` = '{contract.Role.TRIAL.value}'" + extra, max_results=1000
    )


# ---------------------------------------------------------------------------------------------
# Scenarios (run inside the namespace)


def lose_a_worker(args, mark: str, report: dict, stack: contextlib.ExitStack) -> None:
    """Postgres + mlflow server + head (0 CPUs) + 2 worker raylets (1 CPU each); `sati search`; once a
    trial is RUNNING on a worker, that worker's process group is killed; the search must finish."""
    from mlflow.tracking import MlflowClient

    root, env = Path(args.root), cluster_env(mark)
    logs = root / "logs"
    t0 = time.time()
    pg = Postgres(env, logs)
    stack.callback(pg.stop)
    pg.wait_ready()
    server = MlflowServer(root / "mlflow", backend=pg.url, env=env, wait=False)
    stack.callback(server.stop)
    # Ray only after Postgres and the server hold their ports: its processes bind OS-chosen ports,
    # which can be the very port free_port() just picked for a service that has not bound it yet.
    server.wait_ready()
    ray = RayCluster(env, logs)
    stack.callback(ray.stop)
    ray.wait_started(ray.start_head())
    workers = []
    for _ in range(2):  # one after the other: no race for ports
        workers.append(ray.add_worker(1))
        ray.wait_started(workers[-1])
    ids = [ray.node_id(w) for w in workers]
    report["head_node"] = ray.node_id(ray.head)
    report["worker_nodes"] = ids
    report["nodes_joined_after_s"] = round(ray.wait_nodes(ids + [report["head_node"]], args.join_timeout), 1)
    report["setup_s"] = round(time.time() - t0, 1)

    search = start_search(Path(args.pipeline), ray.address, env, logs, root, f"tracking.uri={server.uri}")
    stack.callback(lambda: search.proc.poll() is None and search.stop())
    t_search = time.time()
    client = MlflowClient(server.uri)
    victim = None
    while search.proc.poll() is None and time.time() - t_search < args.kill_timeout:
        for run in _trial_runs(client, args.experiment, " and attributes.status = 'RUNNING'"):
            node = run.data.tags.get(contract.NODE_ID)
            # only once Tune holds its checkpoint: a node lost before that restarts the trial from scratch
            if node in ids and contract.CHECKPOINT_EPOCH in run.data.tags:
                victim = (run, node)
                break
        if victim:
            break
        time.sleep(0.5)
    if victim is None:
        report["error"] = (
            "no trial was seen RUNNING on a worker before the search ended"
            if search.proc.poll() is not None
            else f"no trial RUNNING on a worker within {args.kill_timeout} s"
        )
    else:
        run, node = victim
        worker = workers[ids.index(node)]
        epochs = client.get_metric_history(run.info.run_id, STEP_METRIC)  # logged every epoch, step = epoch
        killed = worker.stop(signal.SIGKILL, grace_s=5)  # the node crashes: raylet, agents, its trial
        time.sleep(1)
        report["kill"] = {
            "node": node,
            "worker": worker.name,
            "trial_id": run.data.tags.get(contract.TRIAL_ID),
            "run_id": run.info.run_id,
            "after_s": round(time.time() - t_search, 1),
            "epochs_done": max((m.step for m in epochs), default=0),
            "checkpoint_epoch": int(run.data.tags[contract.CHECKPOINT_EPOCH]),
            "pids": len(killed),
            "pids_alive_after": [p for p in killed if alive(p)],
        }

    try:
        report["search_rc"] = search.proc.wait(args.search_timeout)
    except subprocess.TimeoutExpired:
        report["search_rc"] = None
        report["error"] = report.get("error") or f"sati search still running after {args.search_timeout} s"
    report["search_s"] = round(time.time() - t_search, 1)
    report["search_log_tail"] = search.log_text()[-6000:]
    exp = client.get_experiment_by_name(args.experiment)
    report["runs"] = [_run_record(r) for r in client.search_runs([exp.experiment_id], max_results=1000)] if exp else []
    report["postgres_runs"] = [list(r) for r in pg.query("SELECT run_uuid, status FROM runs")]
    report["postgres_trial_tags"] = [
        list(r) for r in pg.query(f"SELECT run_uuid, value FROM tags WHERE key = '{contract.TRIAL_ID}'")
    ]
    report["worker_log_tails"] = {w.name: w.log_text()[-1500:] for w in workers}


def throughput(args, mark: str, report: dict, stack: contextlib.ExitStack) -> None:
    """Head (0 CPUs) + N worker raylets (1 CPU each); one `sati search` with a file tracking store;
    trial throughput from the trial runs' start and end times."""
    from mlflow.tracking import MlflowClient

    root, env = Path(args.root), cluster_env(mark)
    logs = root / "logs"
    ray = RayCluster(env, logs)
    stack.callback(ray.stop)
    ray.wait_started(ray.start_head())
    workers = []
    for _ in range(args.workers):
        workers.append(ray.add_worker(1))
        ray.wait_started(workers[-1])
    ids = [ray.node_id(w) for w in workers]
    ray.wait_nodes(ids, args.join_timeout)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    t0 = time.time()
    cpu = CpuSampler(mark).start()
    search = start_search(Path(args.pipeline), ray.address, env, logs, root, f"tracking.uri={uri}")
    stack.callback(lambda: search.proc.poll() is None and search.stop())
    report["search_rc"] = search.proc.wait(args.search_timeout)
    report["search_s"] = round(time.time() - t0, 2)
    report["cpu"] = cpu.stop()
    report["search_log_tail"] = search.log_text()[-3000:]
    runs = [_run_record(r) for r in _trial_runs(MlflowClient(uri), args.experiment)]
    report["runs"] = runs
    report["worker_nodes"] = ids
    if runs and all(r["end_time"] for r in runs):
        span = (max(r["end_time"] for r in runs) - min(r["start_time"] for r in runs)) / 1000
        report["trial_span_s"] = round(span, 2)
        report["trials_per_min"] = round(60 * len(runs) / span, 3)
        report["nodes_used"] = sorted({n for r in runs for n in r["tags"].get(contract.NODES, "").split(",") if n})


def preflight(args, mark: str, report: dict, stack: contextlib.ExitStack) -> None:
    """Head (0 CPUs) + 2 worker raylets, the second seeing two folders empty (``hidden-data``,
    ``hidden-storage``); ``sati search --check`` on a good setup, with the data only in a hidden
    folder (present on the head and the first worker only), and with the storage in a hidden folder."""
    import yaml

    root, env = Path(args.root), cluster_env(mark)
    logs = root / "logs"
    hidden_data, hidden_storage = root / "hidden-data", root / "hidden-storage"
    for d in (hidden_data, hidden_storage):
        d.mkdir(parents=True, exist_ok=True)
    data = Path(yaml.safe_load(Path(args.pipeline).read_text())["data"]["path"])
    shutil.copy2(data, hidden_data / data.name)
    ray = RayCluster(env, logs)
    stack.callback(ray.stop)
    ray.wait_started(ray.start_head())
    workers = []
    for hide in ((), (hidden_data, hidden_storage)):  # one after the other: no race for ports
        workers.append(ray.add_worker(1, hide=hide))
        ray.wait_started(workers[-1])
    ids = [ray.node_id(w) for w in workers]
    report["worker_nodes"] = ids
    ray.wait_nodes([*ids, ray.node_id(ray.head)], args.join_timeout)
    report["nodes_joined"] = len(ray.active_nodes())
    common = [f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]
    cases = {
        "good": common,
        "data_on_head_only": [*common, f"data.path={hidden_data / data.name}"],
        "storage_not_shared": [*common, f"search.storage_path={hidden_storage}"],
    }
    for case, sets in cases.items():
        t0 = time.time()
        search = start_search(Path(args.pipeline), ray.address, env, logs, root, *sets, extra=("--check",))
        rc = search.proc.wait(args.search_timeout)
        report[case] = {"rc": rc, "seconds": round(time.time() - t0, 1), "output": search.log_text()[-6000:]}


def _exit_on_sigterm(signum, frame):
    raise SystemExit(143)  # a timeout above us: the ExitStack still cleans up


def _inner(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=["lose-a-worker", "throughput", "preflight"])
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--mark", required=True)
    ap.add_argument("--experiment", default="test-search")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--join-timeout", type=float, default=180)
    ap.add_argument("--kill-timeout", type=float, default=300)
    ap.add_argument("--search-timeout", type=float, default=480)
    ap.add_argument("--cpus", type=int, default=0, help="confine everything started here to the first N cores")
    args = ap.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cpus]))  # inherited by children
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    report: dict = {"scenario": args.scenario, "cpus": sorted(os.sched_getaffinity(0))}
    t0 = time.time()
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(lambda: report.__setitem__("swept", sweep(args.mark)))
            {"lose-a-worker": lose_a_worker, "throughput": throughput, "preflight": preflight}[args.scenario](
                args, mark=args.mark, report=report, stack=stack
            )
    except Exception as err:  # the report says what went wrong; the caller fails on it
        import traceback

        report["error"] = report.get("error") or f"{type(err).__name__}: {err}"
        report["traceback"] = traceback.format_exc()[-4000:]
    report["wall_s"] = round(time.time() - t0, 1)
    Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    return 0


def run_in_netns(scenario: str, pipeline: Path, root: Path, timeout_s: float = 900, **options) -> dict:
    """Run a scenario in a fresh loopback-only network namespace; return its report. Whatever it
    started is killed afterwards, also when it timed out."""
    root.mkdir(parents=True, exist_ok=True)
    report_path, mark = root / "report.json", secrets.token_hex(8)
    argv = [
        "unshare",
        "-n",
        sys.executable,
        "-m",
        "sati.testing.cluster",
        scenario,
        "--pipeline",
        str(pipeline),
        "--root",
        str(root),
        "--report",
        str(report_path),
        "--mark",
        mark,
    ]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = loopback_env(PYTHONPATH=str(REPO))
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    proc = subprocess.Popen(
        argv,
        cwd=root,
        env=env,
        stdout=open(root / "orchestrator.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc, signal.SIGTERM, grace_s=60)
    finally:
        sweep(mark)
    if not report_path.exists():
        log = (root / "orchestrator.log").read_text(errors="replace")[-4000:]
        return {"error": f"no report (orchestrator rc {proc.returncode}); log tail:\n{log}"}
    return json.loads(report_path.read_text())


if __name__ == "__main__":
    sys.exit(_inner())
