"""Retraining the best configurations of a search with fresh seeds (``sati promote --seeds``).

Each candidate trial's resolved pipeline is retrained once per seed as Ray trials (a grid, FIFO)
under a ``confirm`` run nested in the search. The configuration with the best pessimistic score
(mean + std for a minimized metric, mean − std otherwise) wins, so a lucky seed does not; its best
seed run is what promotion registers.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sati.checkpoint import load_checkpoint
from sati.config import from_dict
from sati.provenance import git_commit
from sati.search.ray_session import ray_session
from sati.seeding import derive_seed
from sati.selection import better, pessimistic_score, rank_trials
from sati.tracking import contract
from sati.tracking.contract import Confirmation
from sati.tracking.runs import log_confirm_summary, start_confirm_run
from sati.tracking.searches import TrialRuns, download_checkpoint, finished_trials
from sati.tracking.store import RunInfo, TrackingStore


class RetrainError(RuntimeError):
    """No retrained run finished; nothing can be chosen."""


def confirm_candidates(
    store: TrackingStore,
    search: RunInfo,
    candidates: list[tuple[RunInfo, float]],
    n_seeds: int,
    metric: str,
    mode: str,
    address: str | None = None,
    console: Callable[[str], None] = print,
) -> tuple[RunInfo, float, Confirmation]:
    """Retrain each candidate trial (with its search value) ``n_seeds`` times under ``search``.

    Returns the chosen configuration's best seed run, its value, and the confirmation evidence."""
    with tempfile.TemporaryDirectory(prefix="sati-confirm-") as tmp:
        bases = [
            load_checkpoint(download_checkpoint(store, trial.run_id, Path(tmp) / trial.run_id))["config"]
            for trial, _ in candidates
        ]
    first = from_dict(bases[0], f"candidate {candidates[0][0].run_id}")
    seeds = [derive_seed(first.seed, "confirm", j) for j in range(n_seeds)]
    confirm_id = start_confirm_run(store, search, [t for t, _ in candidates], seeds, metric)
    console(f"confirming {len(candidates)} configuration(s) × {n_seeds} seed(s) on Ray: MLflow run {confirm_id}")
    try:
        with ray_session(address or first.search.ray_address):
            from sati.search.tuner import build_retrain_tuner

            name = f"{search.name}-confirm-{time.strftime('%Y%m%d-%H%M%S')}"
            sources = [t.run_id for t, _ in candidates]
            runs = TrialRuns(store, confirm_id, search.tags.get(contract.DATA_CHECKSUM, ""), git_commit())
            build_retrain_tuner(first, bases, sources, seeds, name, runs).fit()
    except BaseException:
        log_confirm_summary(store, confirm_id, [], None)
        raise
    runs = rank_trials(finished_trials(store, [confirm_id]), metric, mode)
    rows, best = [], None
    for trial, search_value in candidates:
        own = [(r, v) for r, v in runs if r.tags.get(contract.CANDIDATE_RUN) == trial.run_id]
        mean = std = score = float("nan")
        if own:
            mean, std, score = pessimistic_score([v for _, v in own], mode)
        row = {"candidate": trial.run_id, "search_value": search_value, "seeds": len(own), "mean": mean, "std": std}
        rows.append({**row, "score": score})
        if own and (best is None or better(score, best[1]["score"], mode)):
            best = (own[0], rows[-1])  # own is ranked: its first run is the best seed
    log_confirm_summary(store, confirm_id, rows, best[0][0].run_id if best else None)
    console(
        "\n".join(
            f"  {r['candidate']}: search {metric} {r['search_value']:.4f}; {r['seeds']} seeds "
            f"{r['mean']:.4f} ± {r['std']:.4f}, score {r['score']:.4f}"
            for r in rows
        )
    )
    if best is None:
        raise RetrainError(f"no confirmation trial finished (MLflow run {confirm_id}); nothing was promoted")
    (run, value), row = best
    seed_runs = " ".join(f"runs:/{r.run_id}" for r, _ in runs if r.tags.get(contract.CANDIDATE_RUN) == row["candidate"])
    console(
        f"chosen by {'mean + std' if mode == 'min' else 'mean − std'}: configuration of {row['candidate']} "
        f"({row['mean']:.4f} ± {row['std']:.4f}); registering its best seed, run {run.run_id}\n"
        f"all its seeds on the test split: sati evaluate {seed_runs} --split test"
    )
    confirmation = Confirmation(
        confirm_run_id=confirm_id,
        source_trial_run_id=row["candidate"],
        mean=row["mean"],
        std=row["std"],
        score=row["score"],
        seeds=row["seeds"],
    )
    return run, value, confirmation
