"""Driver-side Tune callback: MLflow runs follow Tune's trial events, so a run ends properly even
when a scheduler stops its trial (code after a trial's last report never runs then).

Tune keeps every checkpoint directory (``num_to_keep`` would let it delete the one its last
experiment snapshot names before the next snapshot is written, and a driver killed in between leaves
a search that cannot resume). This callback empties the files of all but the two newest instead,
keeping the directories: a snapshot that names an emptied one restarts that trial from scratch.
When a trial ends, only its newest checkpoint keeps files, and its resume state (``last.pt``:
optimizer and bookkeeping) is deleted too, unless the trial failed and may be resumed. Its ``best.pt`` is uploaded to
MLflow per ``search.log_checkpoints`` (finished trials only, by default); every trial run records
where its Tune checkpoint is (``sati.checkpoint_uri``), from which promotion can read it too.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune

from sati import storage
from sati.search.trainable import FINISHED, RESUME_FILES, TrialResolver
from sati.tracking.leaderboard import LiveBoard
from sati.tracking.searches import TrialRuns


class TrackingCallback(tune.Callback):
    """One MLflow child run per trial: params, per-epoch metrics, best checkpoint."""

    def __init__(
        self,
        runs: TrialRuns,
        resolve: TrialResolver,
        board: LiveBoard,
        experiment_uri: str,
        upload: str,
        first_number: int = 1,
    ):
        self.runs, self.resolve, self.board = runs, resolve, board
        self.metric = board.metric
        self.experiment_uri = experiment_uri  # the search dir as the user named it (local path or URI)
        self.upload = upload  # search.log_checkpoints
        self.first_number = first_number  # trials are named t001, t002, …; an extension continues the count
        self.resources: dict[str, tuple[float, float]] = {}  # trial id → (CPUs, GPUs) it holds

    def trial_name(self, trial) -> str:
        """``t007-fa3a39a8``: the trial's number in the search, then its Tune id."""
        index = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
        number = self.first_number - 1 + (int(index) if index.isdigit() else len(self.runs.runs) + 1)
        return f"t{number:03d}-{trial.trial_id}"

    def on_trial_start(self, iteration, trials, trial, **info):
        resolved, tags = self.resolve(trial.config)
        self.resources[trial.trial_id] = (resolved.search.resources.cpu, resolved.search.resources.gpu)
        name = self.trial_name(trial)
        run_id = self.runs.start(trial.trial_id, name, resolved.to_dict(), tags=tags)
        self.board.add(trial.trial_id, name, run_id, trial.config)

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.runs.runs or trial.trial_id not in self.resources:
            self.on_trial_start(iteration, trials, trial)
        self.runs.log_epoch(trial.trial_id, {**result, **trial_cost(result, *self.resources[trial.trial_id])})
        if result.get("node_id") and result.get("iterations_since_restore") == 1:
            self.runs.record_node(trial.trial_id, result["node_id"])
        value = result.get(f"best/{self.metric}")
        if isinstance(value, (int, float)):
            self.board.result(trial.trial_id, int(result.get("epoch", 0)), float(value))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Tune calls this once it holds the checkpoint (a save round trip after the result), so the tag
        # says from where a restart goes on; results past it are redone after a lost node
        self.runs.record_checkpoint_epoch(trial.trial_id, int((trial.last_result or {}).get("epoch", 0)))
        _prune(checkpoint, keep=2)

    def _finish(self, trial, status: str, reason: str | None):
        ckpt = trial.checkpoint
        if ckpt is not None:
            try:
                rel = Path(ckpt.path).relative_to(Path(trial.storage.experiment_fs_path)).as_posix()
                self.runs.record_checkpoint(trial.trial_id, storage.join(self.experiment_uri, rel, "best.pt"))
                _prune(ckpt, keep=1)
                if status != "failed":  # finished or stopped: it can never resume
                    storage.delete_files(ckpt.filesystem, ckpt.path, RESUME_FILES)
                if status == "finished" and self.upload == "finished":
                    with ckpt.as_directory() as d:
                        if (Path(d) / "best.pt").exists():
                            self.runs.log_checkpoint(trial.trial_id, Path(d) / "best.pt")
            except Exception as err:  # the search goes on; the run says what is missing
                reason = (reason or "") + f" (checkpoint bookkeeping failed: {err})"
        self.runs.finish(trial.trial_id, status, reason, self.metric)
        self.board.done(trial.trial_id, status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        finished = bool(last.get(FINISHED))
        self._finish(
            trial, "finished" if finished else "stopped", None if finished else "stopped early by the scheduler"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "failed", _error_text(trial))

    def get_state(self):
        return {"runs": self.runs.runs, "entries": self.board.entries, "best": self.board.best}

    def set_state(self, state):
        self.runs.runs.update(state.get("runs", {}))
        self.board.entries.update(state.get("entries", {}))
        self.board.best = state.get("best", self.board.best)


def _prune(checkpoint, keep: int) -> None:
    """Empty the trial's checkpoint directories older than the ``keep`` newest (up to ``checkpoint``);
    the directories stay, so a restore that names one starts the trial afresh instead of failing."""
    import pyarrow.fs

    fs, trial_dir = checkpoint.filesystem, str(Path(checkpoint.path).parent)
    dirs = sorted(
        info.path
        for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_dir))
        if info.type == pyarrow.fs.FileType.Directory and Path(info.path).name.startswith("checkpoint_")
    )
    newest = dirs.index(checkpoint.path) if checkpoint.path in dirs else len(dirs) - 1
    for old in dirs[: max(0, newest + 1 - keep)]:
        for item in fs.get_file_info(pyarrow.fs.FileSelector(old)):
            if item.type == pyarrow.fs.FileType.File:
                fs.delete_file(item.path)


def trial_cost(result: dict, cpus: float, gpus: float) -> dict[str, float]:
    """What a trial has cost so far: its wall time (``time_total_s``, over restores) × what it holds."""
    hours = float(result.get("time_total_s", 0.0)) / 3600
    return {"cost/cpu_hours": hours * cpus, "cost/gpu_hours": hours * gpus}


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        text = Path(path).read_text().strip().splitlines()
        return " | ".join(text[-3:]) if text else "trial raised"
    return "trial raised an error"
