"""Harness e2, the fidelity check of e1 (``sati.replay.harness``): recorded curves replayed inside a real
``Tuner``, with real Ray workers, controller, searcher, scheduler and callbacks, on simulated time.

No trial sleeps. Before each report a trial waits on a clock actor for its epoch's simulated end; the
clock releases one waiter at a time, the earliest by (simulated time, trial number), and only once every
running trial is waiting and as many trials run as can (``min(max_concurrent, trials not yet ended)``).
``tune.report`` blocks until the driver has decided on the result, so the next wait means the scheduler
and searcher have seen it: results reach them in simulated-time order whatever the real delays, and
replayed time holds none of the driver's own time. A driver callback tells the clock when trials start
and end. A wait that is not released in ``timeout_s`` is released by force and counted (``forced``);
a faithful run has none. Paused trials (HyperBand) are not supported here.

It costs about one driver round trip per result: a check on a few dozen trials, not a sweep.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray import tune

from sati.config import PipelineConfig
from sati.replay.harness import COST_KEY, TIME_KEY, Trajectory, TrialOutcome
from sati.replay.store import CurveStore, LookupCounts
from sati.search.strategy import TIME_ATTR, tune_metric
from sati.search.trainable import FINISHED


@ray.remote(num_cpus=0)
class LockstepClock:
    """Simulated time for the trials of one ``Tuner`` run (an async actor: waits do not block it)."""

    def __init__(self, num_trials: int, max_concurrent: int, timeout_s: float):
        self.num_trials, self.max_concurrent, self.timeout_s = num_trials, max_concurrent, timeout_s
        self.now, self.ended, self.forced = 0.0, 0, 0
        self.running: dict[str, tuple[int, float]] = {}  # trial id → (trial number, its simulated time)
        self.waiting: dict[str, tuple[float, int, asyncio.Event]] = {}

    def start(self, trial_id: str, number: int) -> None:
        """A trial started now (the callback's ``on_trial_start``)."""
        self.running[trial_id] = (number, self.now)

    def end(self, trial_id: str) -> None:
        """A trial completed, was stopped, or failed."""
        if self.running.pop(trial_id, None) is not None:
            self.ended += 1
        self.waiting.pop(trial_id, None)
        self._release()

    async def wait(self, trial_id: str, seconds: float) -> float:
        """Block until the trial's next ``seconds`` have passed in simulated time; returns that time."""
        number, since = self.running[trial_id]
        event = asyncio.Event()
        self.waiting[trial_id] = (since + seconds, number, event)
        self._release()
        try:
            await asyncio.wait_for(event.wait(), self.timeout_s)
        except asyncio.TimeoutError:
            self.forced += 1
            self._advance(trial_id)
        return self.running[trial_id][1]

    def forced_releases(self) -> int:
        return self.forced

    def _release(self) -> None:
        target = min(self.max_concurrent, self.num_trials - self.ended)
        if self.waiting and len(self.waiting) == len(self.running) >= target:
            self._advance(min(self.waiting, key=lambda t: self.waiting[t][:2]))

    def _advance(self, trial_id: str) -> None:
        at, _, event = self.waiting.pop(trial_id)
        self.now = max(self.now, at)
        self.running[trial_id] = (self.running[trial_id][0], at)
        event.set()


def replay_trial(config: dict[str, Any], store: CurveStore, clock, replay_seed: int, metric: str) -> None:
    """The replay trainable: the recorded curve nearest to ``config``, one report per epoch, each after the
    clock reaches it; a recorded failure raises after the last recorded epoch."""
    trial_id = tune.get_context().get_trial_id()
    curve = store.curve_for(config, replay_seed)
    for e in range(curve.epochs):
        now = ray.get(clock.wait.remote(trial_id, float(curve.epoch_time_s[e])))
        last = e + 1 == curve.epochs
        tune.report(
            {
                TIME_ATTR: e + 1,
                metric: float(curve.best[e]),
                FINISHED: float(last and curve.finished),
                COST_KEY: float(curve.epoch_time_s[e]) * curve.cost_per_s,
                TIME_KEY: now,
            }
        )
    if not curve.finished:
        raise RuntimeError(f"the recorded trial {curve.served} failed here")


class ClockCallback(tune.Callback):
    """Tells the clock when trials start and end, and keeps every result and outcome for the trajectory."""

    def __init__(self, clock, store: CurveStore, replay_seed: int, metric: str):
        self.clock, self.store, self.replay_seed, self.metric = clock, store, replay_seed, metric
        self.log: list[tuple[float, int, int, float, float]] = []
        self.outcomes: dict[int, TrialOutcome] = {}
        self.lookups = LookupCounts()

    @staticmethod
    def number(trial) -> int:
        return int(str(trial.experiment_tag).split("_", 1)[0])

    def on_trial_start(self, iteration, trials, trial, **info):
        curve = self.store.curve_for(trial.config, self.replay_seed)
        self.lookups.add(curve)
        self.outcomes[self.number(trial)] = TrialOutcome(self.number(trial), dict(trial.config), curve)
        ray.get(self.clock.start.remote(trial.trial_id, self.number(trial)))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        n = self.number(trial)
        self.log.append((result[TIME_KEY], n, int(result[TIME_ATTR]), result[self.metric], result[COST_KEY]))
        self.outcomes[n].epochs = int(result[TIME_ATTR])

    def on_trial_complete(self, iteration, trials, trial, **info):
        outcome = self.outcomes[self.number(trial)]
        finished = bool((trial.last_result or {}).get(FINISHED))
        outcome.status = "completed" if finished and outcome.epochs == outcome.curve.epochs else "stopped"
        ray.get(self.clock.end.remote(trial.trial_id))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.outcomes[self.number(trial)].status = "error"
        ray.get(self.clock.end.remote(trial.trial_id))


def lockstep_search(
    cfg: PipelineConfig,
    store: CurveStore,
    searcher,
    scheduler,
    storage_path: str,
    replay_seed: int = 0,
    timeout_s: float = 120.0,
) -> tuple[Trajectory, int]:
    """``cfg``'s search (samples, concurrency, metric) replayed in a real ``Tuner`` with ``searcher`` and
    ``scheduler`` (build them as for ``sati.replay.harness.VirtualTimeSearch``); Ray must be up.
    Returns the trajectory and how many waits were released by force."""
    s, metric = cfg.search, tune_metric(cfg)
    clock = LockstepClock.remote(s.num_samples, s.max_concurrent, timeout_s)
    callback = ClockCallback(clock, store, replay_seed, metric)
    trainable = tune.with_parameters(replay_trial, store=store, clock=clock, replay_seed=replay_seed, metric=metric)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=cfg.train.selection_direction,
            num_samples=s.num_samples,
            search_alg=searcher,
            scheduler=scheduler,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="lockstep",
            storage_path=storage_path,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    tuner.fit()
    forced = ray.get(clock.forced_releases.remote())
    return Trajectory.from_log(callback.log, callback.outcomes, callback.lookups), int(forced)
