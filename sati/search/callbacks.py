"""Driver-side Tune callback: MLflow runs follow Tune's trial events, so a run ends properly even
when a scheduler stops its trial (code after a trial's last report never runs then)."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from sati.config import flatten
from sati.search.trainable import FINISHED, TrialResolver
from sati.tracking.searches import TrialRuns


class TrackingCallback(tune.Callback):
    """One MLflow child run per trial: params, per-epoch metrics, best checkpoint, learning curve."""

    def __init__(self, runs: TrialRuns, resolve: TrialResolver, metric: str):
        self.runs, self.resolve, self.metric = runs, resolve, metric

    def on_trial_start(self, iteration, trials, trial, **info):
        resolved, tags = self.resolve(trial.config)
        self.runs.start(trial.trial_id, str(trial), flatten(resolved.to_dict()), tags=tags)

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.runs.runs:
            self.on_trial_start(iteration, trials, trial)
        self.runs.log_epoch(trial.trial_id, result)
        if result.get("node_id") and result.get("iterations_since_restore") == 1:
            self.runs.record_node(trial.trial_id, result["node_id"])

    def _finish(self, trial, status: str, reason: str | None):
        ckpt = trial.checkpoint
        if ckpt is not None:
            try:
                with ckpt.as_directory() as d:
                    if (Path(d) / "best.pt").exists():
                        self.runs.log_checkpoint(trial.trial_id, Path(d) / "best.pt")
            except Exception as err:  # the search goes on; the run says what is missing
                reason = (reason or "") + f" (checkpoint upload failed: {err})"
        self.runs.finish(trial.trial_id, status, reason, self.metric)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        finished = bool(last.get(FINISHED))
        self._finish(
            trial, "finished" if finished else "stopped", None if finished else "stopped early by the scheduler"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "failed", _error_text(trial))

    def get_state(self):
        return {"runs": self.runs.runs}

    def set_state(self, state):
        self.runs.runs.update(state.get("runs", {}))


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        text = Path(path).read_text().strip().splitlines()
        return " | ".join(text[-3:]) if text else "trial raised"
    return "trial raised an error"
