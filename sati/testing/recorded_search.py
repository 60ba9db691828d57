"""A finished search recorded in MLflow without Ray: one really trained trial, logged through the
project's own run API (``start_search_run``, ``TrialRuns``), ready for ``sati promote``. For tests
of what happens after a search (promotion, loading, who may write where), where starting Ray would
only cost time."""

from __future__ import annotations

from pathlib import Path

from sati.config import from_dict
from sati.data.h5format import read_info
from sati.testing.pipelines import small_pipeline
from sati.tracking.searches import TrialRuns, start_search_run
from sati.tracking.store import TrackingStore
from sati.trainer import fit


def record_trained_search(
    store: TrackingStore, experiment: str, data: Path, encoder: Path, out_dir: Path, **sections
) -> str:
    """Train the small pipeline (one epoch unless ``sections`` say otherwise) into ``out_dir`` and
    record it as a finished search of one finished trial in ``experiment``; returns the search run id."""
    train = {"epochs": 1, "out_dir": str(out_dir), **sections.pop("train", {})}
    cfg = from_dict(small_pipeline(data, encoder, train=train, **sections), "record_trained_search")
    result = fit(cfg)
    checksum = read_info(data).checksum
    metric, mode = cfg.train.selection_metric, cfg.train.selection_direction
    search = start_search_run(
        store,
        experiment,
        name="recorded-search",
        pipeline=cfg.to_dict(),
        params={},
        space_path=None,
        data_checksum=checksum,
        search_dir=str(out_dir),
        metric=metric,
        mode=mode,
        model_name=None,
        git_commit="unknown",
        versions={},
    )
    trials = TrialRuns(store, search, checksum)
    trials.start("trial_0", "trial_0", cfg.to_dict(), {})
    for row in result.history:
        trials.log_epoch("trial_0", row)
    trials.log_checkpoint("trial_0", result.best_checkpoint)
    trials.finish("trial_0", "finished", None, metric)
    store.end_run(search)
    return search
