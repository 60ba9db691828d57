"""The searcher: Optuna's TPE (seeded, constant liar) or random sampler over the YAML space, told the
truth about trials a scheduler stopped early.

Ray's ``OptunaSearch`` tells Optuna COMPLETE with the last reported value when ASHA stops a trial, so
TPE would take an epoch-1 value for a final one. Here such a trial is told PRUNED, with its last
reported value (the best-so-far validation metric at its last rung) as its final intermediate value:
TPE ranks pruned trials by how far they got and what they reached there.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from sati.config import PipelineConfig
from sati.search.space import SearchSpace
from sati.search.trainable import FINISHED


class DefineByRun:
    """A picklable define-by-run function for ``OptunaSearch``."""

    def __init__(self, space: SearchSpace, base: PipelineConfig):
        self.space, self.base = space, base

    def __call__(self, trial) -> dict[str, Any]:
        return self.space.sample(trial, self.base)


def tpe_sampler(seed: int):
    """Seeded multivariate TPE. ``constant_liar`` is set explicitly (Optuna 4 and 5 differ): with
    several trials running at once, each running trial counts as a bad result while TPE picks the
    next point, so concurrent trials spread out instead of sampling the same region."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_sampler(kind: str, seed: int):
    """``search.sampler``: seeded TPE (``tpe_sampler``) or Optuna's seeded random sampler."""
    if kind == "random":
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)
    return tpe_sampler(seed)


class StopAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells PRUNED (with the last rung's value reported) for trials a scheduler
    stopped before the trainer finished."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        stopped = result and not error and not result.get(FINISHED)
        if stopped and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            import optuna

            ot_trial = self._ot_trials[trial_id]
            value, step = result.get(self.metric), result.get("training_iteration")
            reported = self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values
            if value is not None and step is not None and step not in reported and value == value:
                ot_trial.report(float(value), int(step))
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class BudgetedLimiter(ConcurrencyLimiter):
    """At most ``max_concurrent`` trials at once, and no new trial once the trials have used the
    budget: GPU-hours (a trial's wall time × its GPUs, fractions as such) or CPU-hours. Trials that
    are running when the budget is spent finish; the search then ends."""

    def __init__(
        self,
        searcher: Searcher,
        max_concurrent: int,
        resources: tuple[float, float],
        budget_hours: tuple[float | None, float | None],
    ):
        super().__init__(searcher, max_concurrent)
        self.cpu, self.gpu = resources  # per trial
        self.budget_cpu_hours, self.budget_gpu_hours = budget_hours
        self.seconds: dict[str, float] = {}  # trial id → its time_total_s so far
        self.exhausted = False

    def spent(self) -> tuple[float, float]:
        """(CPU-hours, GPU-hours) used by every trial so far."""
        hours = sum(self.seconds.values()) / 3600
        return hours * self.cpu, hours * self.gpu

    def _over_budget(self) -> bool:
        cpu_h, gpu_h = self.spent()
        return (self.budget_cpu_hours is not None and cpu_h >= self.budget_cpu_hours) or (
            self.budget_gpu_hours is not None and gpu_h >= self.budget_gpu_hours
        )

    def suggest(self, trial_id: str):
        if self._over_budget():
            self.exhausted = True
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.seconds[trial_id] = float(result.get("time_total_s", 0.0))
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if result and "time_total_s" in result:
            self.seconds[trial_id] = float(result["time_total_s"])
        super().on_trial_complete(trial_id, result=result, error=error)
