"""``sati reproduce --rerun RUN_ID``: train a logged run again from its ``rerun.json`` and compare it,
epoch by epoch, with what the run logged.

Every trial run logs ``rerun.json`` (``sati.provenance.rerun_record``): the resolved config with its
seed, the data file's content checksum, the git commit (and whether the tree was dirty), library
versions and the installed packages. A re-run trains that config in this process (``sati.trainer.fit``,
no Ray), after two checks that refuse with the reason:

- **data**: the data file's checksum, recomputed from its contents, must equal the recorded one;
- **code**: ``sati.provenance.git_commit()`` must equal the recorded commit, dirty flag included
  (uncommitted edits themselves are not compared: two dirty trees at one commit pass).

``--force`` trains anyway and records each difference as a tag on the new run (``sati.rerun_forced.*``).
Differences in library versions are printed, not refused.

**Tolerance.** On CPU a re-run is exact: the trainer reseeds model init, dropout and the shuffle order
from the seed, so every per-epoch metric must be *equal* to the logged one. The trial ran in a Ray
worker, whose torch used as many threads as the trial's whole CPUs (Ray sets ``OMP_NUM_THREADS``), and
a float sum can change with the thread count, so the re-run uses that many threads too. On a GPU (the
original or the re-run; bf16 autocast, non-deterministic cuDNN/cuBLAS reductions and atomics in the
backward pass) values may drift apart over epochs: they must agree within ``GPU_ATOL`` + ``GPU_RTOL``
× |logged|. That tolerance is a bound chosen for bf16 training of a few epochs, not one measured here.

The re-run is an MLflow run nested under the original (``sati.role`` = rerun, ``sati.rerun_of``) with
its own per-epoch metrics, its own ``rerun.json`` and the comparison (``rerun_comparison.md`` / ``.csv``,
tag ``sati.rerun_match``: exact, within tolerance, or differs).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sati.config import from_dict
from sati.data.h5format import DataError, content_checksum, list_splits, read_split, verify_checksum
from sati.tables import rows_csv, rows_markdown
from sati.tracking.store import RunInfo, TrackingStore

COMPARED_PREFIXES = ("train/", "valid/", "best/")  # not time/, gpu/ or cost/: they measure the machine
GPU_ATOL, GPU_RTOL = 0.02, 0.05
EXACT, WITHIN, DIFFERS = "exact", "within tolerance", "differs"


class RerunRefused(ValueError):
    """A re-run that cannot be exact (other data or other code) and was not forced, or has no record."""


@dataclass
class RerunOutcome:
    run_id: str  # the re-run's MLflow run
    original_run_id: str
    match: str  # EXACT, WITHIN or DIFFERS
    rows: list[dict[str, Any]]  # epoch, metric, logged, rerun, difference, ok


def data_checksum(path: str | Path) -> str:
    """The data file's content checksum, recomputed (``verify_checksum``); for a file edited after it was
    written, what its contents hash to now."""
    try:
        return verify_checksum(path)
    except DataError:
        if not Path(path).is_file():
            raise
        return content_checksum({s: read_split(path, s, verify=False) for s in list_splits(path)})


def check_provenance(record: dict[str, Any], data_path: str, force: bool, console: Callable[[str], None]) -> dict:
    """Refuse (``RerunRefused``, naming both sides) other data or other code, unless ``force``; returns
    the forced differences ({"data"|"code": "recorded → now"}) for the new run's tags."""
    from sati.provenance import git_commit, versions

    forced = {}
    recorded, now = record.get("data_checksum", ""), data_checksum(data_path)
    if recorded != now:
        why = (
            f"data.path = {data_path} has changed since the run was trained: its contents hash to {now}, "
            f"the run recorded {recorded or '(nothing)'}"
        )
        if not force:
            raise RerunRefused(f"{why}; --force trains on it anyway and records the difference")
        console(f"warning: {why} (--force)")
        forced["data"] = f"{recorded} → {now}"
    then = str(record.get("git_commit", "unknown")) + ("-dirty" if record.get("git_dirty") else "")
    code = git_commit()
    if then != code:
        why = f"the code differs: the run was trained at commit {then}, this checkout is at {code}"
        if not force:
            raise RerunRefused(f"{why}; check out {then.removesuffix('-dirty')} or pass --force")
        console(f"warning: {why} (--force)")
        forced["code"] = f"{then} → {code}"
    elif code.endswith("-dirty") or code == "unknown":
        console(f"note: commit {code}: uncommitted edits (or a tree outside git) are not compared")
    for lib, version in versions().items():
        old = record.get("versions", {}).get(lib)
        if old and old != version:
            console(f"note: {lib} {old} when the run was trained, {version} now")
    return forced


def trial_threads(cfg) -> int:
    """The torch threads a trial of ``cfg`` had: ``OMP_NUM_THREADS`` when the environment sets it (Ray
    keeps it then), else what Ray sets, the trial's whole CPUs, at least 1."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, math.floor(cfg.search.resources.cpu))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _EpochLog:
    """The trainer's reporter for a re-run: each epoch's metrics to its run (as a trial logs them) and
    one line on the console; the history kept for the comparison."""

    def __init__(self, runs, key: str, epochs: int, console: Callable[[str], None]):
        self.runs, self.key, self.epochs, self.console = runs, key, epochs, console
        self.history: list[dict[str, float]] = []

    def progress(self, batches, total, desc):
        return batches

    def on_epoch_end(self, epoch, metrics, checkpoint, is_best):
        self.history.append(dict(metrics))
        self.runs.log_epoch(self.key, metrics)
        valid = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("valid/"))
        self.console(f"epoch {epoch}/{self.epochs}  train/loss {metrics['train/loss']:.4f}  {valid}")


def rerun(
    store: TrackingStore,
    run_id: str,
    *,
    force: bool = False,
    data: str | None = None,
    console: Callable[[str], None] = print,
) -> RerunOutcome:
    """Train run ``run_id`` again from its ``rerun.json`` (module docstring); ``data`` names where its
    data file is now, if it moved (its checksum is checked all the same)."""
    from sati.devices import resolve_device
    from sati.provenance import git_commit
    from sati.tracking.reproductions import log_rerun_outcome, metric_histories, read_rerun_record, rerun_tags
    from sati.tracking.searches import RERUN_ARTIFACT, TrialRuns
    from sati.trainer import fit

    original = store.run(run_id)
    record = read_rerun_record(store, run_id)
    if record is None:
        raise RerunRefused(
            f"MLflow run {run_id} has no {RERUN_ARTIFACT} artifact: only trial runs logged by a search, a "
            "confirmation or a reproduction carry what a re-run needs"
        )
    config = dict(record["config"])
    if data:
        config["data"] = {**config["data"], "path": str(Path(data).resolve())}
    cfg = from_dict(config, f"run {run_id} ({RERUN_ARTIFACT})")
    forced = check_provenance(record, cfg.data.path, force, console)
    threads = trial_threads(cfg)
    gpu = original_device(original) != "cpu" or resolve_device(cfg.train.device).type != "cpu"
    console(
        f"re-running {original.name} (run {run_id}, seed {cfg.seed}) in this process with {threads} torch "
        f"thread(s); per-epoch metrics must be {'within tolerance' if gpu else 'equal'}"
    )
    runs = TrialRuns(store, run_id, data_checksum(cfg.data.path), git_commit())
    key = f"rerun-{time.strftime('%Y%m%d-%H%M%S')}"
    new_id = runs.start(key, f"{original.name}-rerun", config, tags=rerun_tags(original, forced))
    reporter = _EpochLog(runs, key, cfg.train.epochs, console)
    metric = cfg.train.selection_metric
    with tempfile.TemporaryDirectory(prefix="sati-rerun-") as work:
        try:
            with torch_threads(threads):
                fit(cfg.replace({"train.out_dir": work}), reporter)
        except BaseException as err:
            runs.finish(key, "failed", f"{type(err).__name__}: {err}", metric)
            raise
    runs.finish(key, "finished", None, metric)
    rows = compare_histories(metric_histories(store, original, COMPARED_PREFIXES), reporter.history, gpu)
    match = EXACT if all(r["difference"] == 0 for r in rows) else (WITHIN if all(r["ok"] for r in rows) else DIFFERS)
    log_rerun_outcome(
        store, new_id, match, {"rerun_comparison.md": rows_markdown(rows), "rerun_comparison.csv": rows_csv(rows)}
    )
    console(comparison_summary(rows, match, metric, gpu))
    console(f"re-run logged as MLflow run {new_id}, nested under {run_id}")
    return RerunOutcome(new_id, run_id, match, rows)


def compare_histories(logged: dict[str, dict[int, float]], history: list[dict], gpu: bool) -> list[dict[str, Any]]:
    """One row per (epoch, metric) the original logged or the re-run computed: both values, their
    difference and whether it is within the tolerance (0 on CPU)."""
    rerun_values = {
        (int(h["epoch"]), k): float(v)
        for h in history
        for k, v in h.items()
        if k.startswith(COMPARED_PREFIXES) and isinstance(v, (int, float)) and math.isfinite(v)
    }
    keys = {(e, k) for k, steps in logged.items() for e in steps} | set(rerun_values)
    rows = []
    for epoch, key in sorted(keys):
        a, b = logged.get(key, {}).get(epoch), rerun_values.get((epoch, key))
        diff = abs(a - b) if a is not None and b is not None else math.inf
        limit = GPU_ATOL + GPU_RTOL * abs(a) if gpu and a is not None else 0.0
        rows.append(
            {
                "epoch": epoch,
                "metric": key,
                "logged": a if a is not None else "—",
                "rerun": b if b is not None else "—",
                "difference": diff,
                "ok": diff <= limit,
            }
        )
    return rows


def comparison_summary(rows: list[dict[str, Any]], match: str, metric: str, gpu: bool) -> str:
    """The selection metric and the training loss per epoch, logged next to re-run, and the verdict."""
    shown = [r for r in rows if r["metric"] in (metric, "train/loss")]
    table = rows_markdown([{k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in r.items()} for r in shown])
    bad = [r for r in rows if not r["ok"]]
    epochs = len({r["epoch"] for r in rows})
    keys = len({r["metric"] for r in rows})
    rule = f"|Δ| ≤ {GPU_ATOL} + {GPU_RTOL}·|logged| (GPU)" if gpu else "equality (CPU)"
    verdict = f"{len(rows)} values ({keys} metrics × {epochs} epochs) compared by {rule}: {match}"
    if bad:
        verdict += "\n" + "\n".join(
            f"  epoch {r['epoch']} {r['metric']}: logged {r['logged']}, re-run {r['rerun']}" for r in bad[:10]
        )
        verdict += f"\n  … and {len(bad) - 10} more" if len(bad) > 10 else ""
    return f"{table}\n{verdict}"


def original_device(run: RunInfo) -> str:
    """``cuda`` when the run logged GPU memory (the trainer does on CUDA only), else ``cpu``."""
    return "cuda" if "gpu/memory_peak_gb" in run.metrics else "cpu"
