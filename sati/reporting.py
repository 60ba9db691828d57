"""What the trainer tells the outside world. The trainer imports only this module.

A ``Reporter`` wraps the batch iterator (progress bars) and receives each epoch's metrics and
checkpoint. ``ConsoleReporter`` prints; the search will add one that reports to Ray Tune and MLflow.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")


class Reporter(Protocol):
    def progress(self, batches: Iterable[T], total: int, desc: str) -> Iterable[T]:
        """Wrap one epoch's batches."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint: Path, is_best: bool) -> None:
        """Called after the epoch's checkpoint is written; ``epoch`` counts from 1."""


class NullReporter:
    """Reports nothing."""

    def progress(self, batches, total, desc):
        return batches

    def on_epoch_end(self, epoch, metrics, checkpoint, is_best):
        pass


class ConsoleReporter:
    """A progress bar per epoch and the validation metrics after each epoch."""

    def __init__(self, epochs: int, stream=None):
        self.epochs, self.stream = epochs, stream

    def progress(self, batches, total, desc):
        from tqdm import tqdm

        return tqdm(batches, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)

    def on_epoch_end(self, epoch, metrics, checkpoint, is_best):
        shown = [f"train/loss {metrics['train/loss']:.4f}"]
        shown += [f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("valid/")]
        mark = "  * best" if is_best else ""
        print(f"epoch {epoch}/{self.epochs}  " + "  ".join(shown) + mark, file=self.stream or sys.stdout, flush=True)
