"""Harness e1: a search replayed on simulated time in one process, as Syne Tune's simulator does.

The real searcher and scheduler objects (``sati.search.strategy``: Optuna's sampler behind the
concurrency and budget gate; ASHA, HyperBand or FIFO) are called as Ray Tune's ``TuneController`` calls
them, in the same order, but the trials are recorded curves (``CurveStore``) and time is a number: an
event heap ordered by (simulated time, trial number) releases each epoch's result when the clock reaches
it. No training, no sleeping, no Ray workers; a replayed search costs about the searcher's own compute.

Mirrored from the controller (ray 2.60, ``tune/execution/tune_controller.py``): new trials are asked
for while fewer than the gate's ``max_concurrent`` are pending (``_maybe_update_trial_queue``), the
scheduler's ``choose_trial_to_run`` starts first and every other pending trial after it while slots are
free (``_maybe_add_actors``), a result goes to the scheduler and, unless it says STOP, to the searcher
(``_process_trial_result``), and ``stop_trial``/``pause_trial`` do what the controller's do. A trial's
last epoch is followed at once by its completion (the function trainable returns), or by its failure
when the recorded trial failed. A paused trial (HyperBand) resumes after its last epoch, as from a
checkpoint taken when it paused.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from sati.config import PipelineConfig
from sati.replay.store import CurveStore, LookupCounts, ReplayCurve
from sati.search.space import SearchSpace
from sati.search.strategy import TIME_ATTR, build_scheduler, build_searcher, tune_metric
from sati.search.trainable import FINISHED

COST_KEY = "replay/cost_s"  # resource-seconds of the epoch: its recorded seconds × the trial's GPUs (or CPUs)
TIME_KEY = "replay/time_s"  # simulated seconds since the search started, when the result is reported


@dataclass
class TrialOutcome:
    """How a replayed trial ended: ``completed`` (its trainer ended it), ``stopped`` (the scheduler did),
    ``error`` (the recorded trial failed), ``cut`` (the search's time budget ended it), ``waiting`` (still
    pending or paused when the search stalled)."""

    seq: int
    config: dict[str, Any]
    curve: ReplayCurve
    epochs: int = 0
    status: str = "waiting"


@dataclass
class Trajectory:
    """One replayed search: every reported epoch in the order the scheduler saw it (arrays [R]:
    simulated seconds, trial number, epoch, the trial's best-so-far value, resource-seconds of the
    epoch), and how each trial ended."""

    time_s: np.ndarray
    trial: np.ndarray
    epoch: np.ndarray
    value: np.ndarray
    cost_s: np.ndarray
    trials: dict[int, TrialOutcome]
    lookups: LookupCounts
    stalled: bool

    @classmethod
    def from_log(
        cls, log: list[tuple[float, int, int, float, float]], trials: dict[int, TrialOutcome], lookups: LookupCounts
    ) -> Trajectory:
        """From (time, trial number, epoch, value, cost) per result, in the order the scheduler saw them."""
        rows = np.array(log, dtype=float).reshape(-1, 5)
        return cls(
            time_s=rows[:, 0],
            trial=rows[:, 1].astype(int),
            epoch=rows[:, 2].astype(int),
            value=rows[:, 3],
            cost_s=rows[:, 4],
            trials=trials,
            lookups=lookups,
            stalled=any(o.status == "waiting" for o in trials.values()),
        )

    def incumbent(self, mode: str) -> np.ndarray:
        """The best value reported so far, after each result [R]."""
        pick = np.fmin if mode == "min" else np.fmax
        return pick.accumulate(self.value) if len(self.value) else self.value


class _Slot:
    """A trial's replay state beside Tune's ``Trial``: its curve, the epochs it reported, the time its
    current stretch started, and a token that voids its queued event when it stops or pauses."""

    def __init__(self, curve: ReplayCurve):
        self.curve, self.epoch, self.total_s, self.token = curve, 0, 0.0, 0


class VirtualTimeSearch:
    """Drives ``searcher`` and ``scheduler`` over the curves of ``store`` on simulated time.

    Args:
        metric, mode: what the scheduler reads (Tune's ``TuneConfig`` metric and mode).
        num_samples: trials the search creates at most (Tune's ``num_samples``).
        max_concurrent: trials that run at once at most (the cluster's slots).
        replay_seed: picks among repeats of a recorded configuration (the same in every strategy).
        time_budget_s: simulated seconds after which every trial is stopped (``search.time_budget_s``).
    """

    def __init__(
        self,
        searcher,
        scheduler,
        store: CurveStore,
        metric: str,
        mode: str,
        num_samples: int,
        max_concurrent: int,
        replay_seed: int = 0,
        time_budget_s: float | None = None,
    ):
        from ray.tune.search import ConcurrencyLimiter

        self.searcher, self.scheduler, self.store, self.metric = searcher, scheduler, store, metric
        scheduler.set_search_properties(metric, mode)  # as the Tuner does with TuneConfig's metric and mode
        self.num_samples, self.max_concurrent = num_samples, max_concurrent
        self.replay_seed, self.time_budget_s = replay_seed, time_budget_s
        # Tune lets as many trials be pending as the gate lets run, else 1 (tune_controller._get_max_pending_trials)
        self.max_pending = searcher.max_concurrent if isinstance(searcher, ConcurrencyLimiter) else 1
        self.now = 0.0
        self.trials: list[Any] = []  # Tune Trial objects, in creation order
        self.by_id: dict[str, Any] = {}
        self.slots: dict[str, _Slot] = {}
        self.outcomes: dict[int, TrialOutcome] = {}
        self.heap: list[tuple[float, int, int, str]] = []  # (time, trial number, token, trial id)
        self.search_finished = False
        self.lookups = LookupCounts()
        self.log: list[tuple[float, int, int, float, float]] = []

    # ---- the surface a scheduler may call on the controller (TuneController._wrapped)
    def get_trials(self) -> list:
        return self.trials

    def get_live_trials(self) -> set:
        from ray.tune.experiment import Trial

        return {t for t in self.trials if t.status not in (Trial.TERMINATED, Trial.ERROR)}

    def _set_trial_status(self, trial, status: str) -> None:
        trial.set_status(status)

    def stop_trial(self, trial) -> None:
        """TuneController.stop_trial: a pending or paused trial is removed from the scheduler, a running
        one completes with its last result; the searcher hears of both."""
        from ray.tune.experiment import Trial

        if trial.status in (Trial.ERROR, Trial.TERMINATED):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            self.searcher.on_trial_complete(trial.trial_id)
        else:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
            self.searcher.on_trial_complete(trial.trial_id, result=trial.last_result)
        self._end(trial, Trial.TERMINATED)

    def pause_trial(self, trial, should_checkpoint: bool = True) -> None:
        from ray.tune.experiment import Trial

        self.slots[trial.trial_id].token += 1
        trial.set_status(Trial.PAUSED)

    # ---- the loop
    def run(self) -> Trajectory:
        """Replay until every trial has ended (or nothing can move: ``stalled``)."""
        while True:
            self._ask_for_trials()
            self._start_trials()
            event = self._next_event()
            if event is None:
                break
            time_s, trial = event
            if self.time_budget_s is not None and time_s > self.time_budget_s:
                self._stop_everything()
                break
            self.now = time_s
            self._advance(trial)
        return Trajectory.from_log(self.log, self.outcomes, self.lookups)

    def _ask_for_trials(self) -> None:
        """TuneController._maybe_update_trial_queue (with SearchGenerator's count of ``num_samples``)."""
        from ray.tune.experiment import Trial
        from ray.tune.search import Searcher

        while not self.search_finished and self._count(Trial.PENDING) < self.max_pending:
            if len(self.trials) >= self.num_samples:
                self.search_finished = True
                break
            trial_id = f"replay_{len(self.trials) + 1:05d}"
            config = self.searcher.suggest(trial_id)
            if config == Searcher.FINISHED:
                self.search_finished = True
                break
            if config is None:
                break
            trial = Trial("replay", config=config, trial_id=trial_id, stub=True)
            self.trials.append(trial)
            self.by_id[trial_id] = trial
            self.scheduler.on_trial_add(self, trial)

    def _start_trials(self) -> None:
        """TuneController._maybe_add_actors: the scheduler's choice first, then pending trials in order."""
        from ray.tune.experiment import Trial

        while self._count(Trial.RUNNING) < self.max_concurrent:
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                trial = next((t for t in self.trials if t.status == Trial.PENDING), None)
            if trial is None:
                return
            self._start(trial)

    def _start(self, trial) -> None:
        from ray.tune.experiment import Trial

        if trial.trial_id not in self.slots:
            curve = self.store.curve_for(trial.config, self.replay_seed)
            self.lookups.add(curve)
            self.slots[trial.trial_id] = _Slot(curve)
            self.outcomes[self._seq(trial)] = TrialOutcome(self._seq(trial), dict(trial.config), curve)
        trial.set_status(Trial.RUNNING)
        self._queue_next(trial)

    def _queue_next(self, trial) -> None:
        """The trial's next event: its next epoch's result, or (no epoch left) its failure, at once."""
        slot = self.slots[trial.trial_id]
        slot.token += 1
        dt = slot.curve.epoch_time_s[slot.epoch] if slot.epoch < slot.curve.epochs else 0.0
        heapq.heappush(self.heap, (self.now + float(dt), self._seq(trial), slot.token, trial.trial_id))

    def _next_event(self) -> tuple[float, Any] | None:
        while self.heap:
            time_s, _, token, trial_id = heapq.heappop(self.heap)
            if self.slots[trial_id].token == token:
                return time_s, self.by_id[trial_id]
        return None

    def _advance(self, trial) -> None:
        """One event: the trial's next result (TuneController._process_trial_result and the decision it
        executes), or its recorded failure."""
        from ray.tune.schedulers import TrialScheduler

        slot = self.slots[trial.trial_id]
        curve = slot.curve
        if slot.epoch == curve.epochs:
            self._fail(trial)
            return
        dt = float(curve.epoch_time_s[slot.epoch])
        slot.epoch += 1
        slot.total_s += dt
        last = slot.epoch == curve.epochs
        value = float(curve.best[slot.epoch - 1])
        result = {
            TIME_ATTR: slot.epoch,
            "training_iteration": slot.epoch,
            self.metric: value,
            FINISHED: float(last and curve.finished),
            "time_this_iter_s": dt,
            "time_total_s": slot.total_s,
            COST_KEY: dt * curve.cost_per_s,
            TIME_KEY: self.now,
            "trial_id": trial.trial_id,
        }
        self.log.append((self.now, self._seq(trial), slot.epoch, value, dt * curve.cost_per_s))
        self.outcomes[self._seq(trial)].epochs = slot.epoch
        decision = self.scheduler.on_trial_result(self, trial, result)
        if decision != TrialScheduler.STOP:
            self.searcher.on_trial_result(trial.trial_id, result)
        trial.update_last_result(result)
        if decision == TrialScheduler.STOP:
            self.stop_trial(trial)
        elif decision == TrialScheduler.PAUSE:
            self.pause_trial(trial)
        elif not last or not curve.finished:
            self._queue_next(trial)
        else:  # the trainable returned: Tune's final result is `done`, and the trial is stopped
            self.stop_trial(trial)

    def _fail(self, trial) -> None:
        """TuneController._process_trial_failure (no retries)."""
        from ray.tune.experiment import Trial

        self.scheduler.on_trial_error(self, trial)
        self.searcher.on_trial_complete(trial.trial_id, error=True)
        self._end(trial, Trial.ERROR)

    def _stop_everything(self) -> None:
        """TuneController._stop_experiment_if_needed once the time budget is spent: no new trials, and
        every live trial stopped without telling the scheduler or searcher."""
        from ray.tune.experiment import Trial

        self.now = float(self.time_budget_s)
        self.search_finished = True
        for trial in self.trials:
            if trial.status not in (Trial.TERMINATED, Trial.ERROR):
                outcome = self.outcomes.get(self._seq(trial))
                self._end(trial, Trial.TERMINATED)
                if outcome is not None:
                    outcome.status = "cut"

    def _end(self, trial, status: str) -> None:
        from ray.tune.experiment import Trial

        trial.set_status(status)
        slot = self.slots.get(trial.trial_id)
        if slot is None:  # removed before it ever ran (HyperBand)
            return
        slot.token += 1
        outcome = self.outcomes[self._seq(trial)]
        if status == Trial.ERROR:
            outcome.status = "error"
        else:
            done = slot.epoch == slot.curve.epochs and slot.curve.finished
            outcome.status = "completed" if done else "stopped"

    def _count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)

    @staticmethod
    def _seq(trial) -> int:
        return int(trial.trial_id.rsplit("_", 1)[1])


def replay_search(
    cfg: PipelineConfig,
    space: SearchSpace,
    store: CurveStore,
    seed: int,
    replay_seed: int = 0,
    points: list[dict[str, Any]] | None = None,
) -> Trajectory:
    """One search of ``cfg`` (its sampler, scheduler, samples, concurrency, budgets) replayed: the
    searcher seeded with ``seed``, ASHA's bracket draws too; ``points``: tried before any sample (a search
    tries the pipeline's own values first)."""
    _quiet()
    np.random.seed(seed % 2**32)  # ASHA draws a trial's bracket from numpy's global generator
    s = cfg.search
    harness = VirtualTimeSearch(
        build_searcher(cfg, space, seed, points),
        build_scheduler(cfg),
        store,
        tune_metric(cfg),
        cfg.train.selection_direction,
        s.num_samples,
        s.max_concurrent,
        replay_seed,
        s.time_budget_s,
    )
    return harness.run()


def _quiet() -> None:
    """Optuna's per-study and per-trial info lines would drown a sweep's output."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune.search.optuna.optuna_search").setLevel(logging.ERROR)
