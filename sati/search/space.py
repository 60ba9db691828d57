"""Search spaces as YAML files: dotted config keys → distributions, checked before anything starts.

Format (``search_spaces/*.yaml``)::

    loss.temporal_weight: {loguniform: [0.1, 100.0]}        # β
    model.fbp_pool: {choice: [1, 2, 4, 8]}                   # k
    train.batch_size: {int: [16, 64], step: 16}
    loss.margin: {uniform: [0.1, 0.5], when: {ablation.adversarial: true}}

Distributions: ``uniform``, ``loguniform``, ``int`` (optional ``step``, ``log``), ``choice``.
``when`` maps keys to required values; each is read from the parameters sampled before it (file
order) or else from the pipeline config, so a parameter is sampled only where it has an effect.
The sampler is Optuna's define-by-run API; this module does not import Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sati.config import ConfigError, PipelineConfig, closest_key, flatten, read_yaml_mapping, valid_keys

KINDS = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class Param:
    key: str
    kind: str
    args: tuple
    step: Any = None
    log: bool = False
    when: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SearchSpace:
    path: str
    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def sample(self, trial, base: PipelineConfig) -> dict[str, Any]:
        """Define-by-run sampling on an Optuna ``trial``; returns ``{dotted key: value}``."""
        values: dict[str, Any] = {}
        for p in self.params:
            if not _condition_holds(p.when, values, base):
                continue
            if p.kind == "uniform":
                values[p.key] = trial.suggest_float(p.key, *p.args)
            elif p.kind == "loguniform":
                values[p.key] = trial.suggest_float(p.key, *p.args, log=True)
            elif p.kind == "int":
                values[p.key] = trial.suggest_int(p.key, *p.args, step=p.step or 1, log=p.log)
            else:
                values[p.key] = trial.suggest_categorical(p.key, list(p.args))
        return values

    def distributions(self) -> dict[str, Any]:
        """``{dotted key: the Optuna distribution sample() draws it from}``."""
        import optuna.distributions as d

        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind in ("uniform", "loguniform"):
                out[p.key] = d.FloatDistribution(*p.args, log=p.kind == "loguniform")
            elif p.kind == "int":
                out[p.key] = d.IntDistribution(*p.args, step=p.step or 1, log=p.log)
            else:
                out[p.key] = d.CategoricalDistribution(list(p.args))
        return out

    def defaults(self, base: PipelineConfig) -> dict[str, Any]:
        """The pipeline's own values of the searched keys (a first point worth evaluating)."""
        flat = flatten(base.to_dict())
        out: dict[str, Any] = {}
        for p in self.params:
            if not _condition_holds(p.when, out, base):
                continue
            value = flat[p.key]
            inside = value in p.args if p.kind == "choice" else p.args[0] <= value <= p.args[1]
            if inside:
                out[p.key] = value
        return out


def _condition_holds(when: dict, sampled: dict, base: PipelineConfig) -> bool:
    flat = None
    for key, expected in when.items():
        if key in sampled:
            actual = sampled[key]
        else:
            flat = flat or flatten(base.to_dict())
            actual = flat[key]
        if actual != expected:
            return False
    return True


def load_space(path: str | Path, base: PipelineConfig | None = None) -> SearchSpace:
    """Read and validate a space file: known keys, known distributions, bounds the config accepts."""
    path = Path(path)
    raw = read_yaml_mapping(path, "search space")
    if not raw:
        raise ConfigError(f"{path}: expected a mapping of dotted config keys to distributions")
    base = base or PipelineConfig()
    keys = set(valid_keys())
    params = []
    for key, spec in raw.items():
        params.append(_parse_param(path, keys, key, spec, base))
    seen = [p.key for p in params]
    for p in params:
        for cond in p.when:
            if cond not in keys:
                raise _unknown(path, cond, f"in the 'when' of {p.key}")
            if cond in seen and seen.index(cond) > seen.index(p.key):
                raise ConfigError(f"{path}: {p.key}: its condition on {cond} must come after {cond} in the file")
    return SearchSpace(str(path), tuple(params))


def _unknown(path: Path, key: str, where: str = "") -> ConfigError:
    hint = closest_key(key)
    suffix = f"; did you mean '{hint}'?" if hint else ""
    return ConfigError(f"{path}: unknown config key '{key}'{' ' + where if where else ''}{suffix}")


def _parse_param(path: Path, keys: set, key: str, spec: Any, base: PipelineConfig) -> Param:
    if key not in keys:
        raise _unknown(path, key)
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping like {{loguniform: [1.0e-5, 1.0e-3]}}, got {spec!r}")
    kinds = [k for k in spec if k in KINDS]
    extra = set(spec) - set(KINDS) - {"step", "log", "when"}
    if len(kinds) != 1 or extra:
        raise ConfigError(
            f"{path}: {key}: expected exactly one of {', '.join(KINDS)} "
            f"(plus optional step, log, when); got {sorted(spec)}"
        )
    kind, args = kinds[0], spec[kinds[0]]
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{path}: {key}: 'when' must map config keys to values")
    step, log = spec.get("step"), spec.get("log", False)
    if kind != "int" and ("step" in spec or "log" in spec):
        given = " and ".join(k for k in ("step", "log") if k in spec)
        hint = "; use loguniform for a log scale" if kind == "uniform" and "log" in spec else ""
        raise ConfigError(f"{path}: {key}: {given} applies to int ranges only, not to {kind}{hint}")
    if not isinstance(log, bool):
        raise ConfigError(f"{path}: {key}: log = {log!r}: expected true or false")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{path}: {key}: choice needs a non-empty list")
        values = args
    else:
        if not (isinstance(args, list) and len(args) == 2):
            raise ConfigError(f"{path}: {key}: {kind} needs [low, high]")
        if kind == "int" and not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{path}: {key}: int bounds must be whole numbers, got {args!r}")
        try:
            low, high = (float(a) for a in args) if kind != "int" else (int(a) for a in args)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: {key}: {kind} bounds must be numbers, got {args!r}") from None
        if any(math.isinf(v) or math.isnan(v) for v in (low, high)):
            raise ConfigError(f"{path}: {key}: bounds must be finite, got {args!r}")
        if not low < high:
            raise ConfigError(f"{path}: {key}: {kind} needs low < high, got {args!r}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{path}: {key}: loguniform needs low > 0, got {low}")
        if kind == "int":
            _check_int_range(path, key, low, high, step, log)
        values = [low, high]
        args = [low, high]
    for v in values:  # every end point / choice must be a value the config accepts
        try:
            base.replace({key: v}, source=f"{path}: {key}")
        except ConfigError as err:
            raise ConfigError(f"{err} (from the search space)") from None
    return Param(key=key, kind=kind, args=tuple(args), step=step, log=log, when=dict(when))


def _check_int_range(path: Path, key: str, low: int, high: int, step: Any, log: bool) -> None:
    """What Optuna's ``suggest_int`` would refuse only once it samples, refused at load."""
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
            raise ConfigError(f"{path}: {key}: step = {step!r}: expected a whole number > 0")
        if log:
            raise ConfigError(
                f"{path}: {key}: step and log cannot be combined (Optuna samples a log scale without steps)"
            )
        if (high - low) % step:
            raise ConfigError(
                f"{path}: {key}: step {step} does not divide high - low = {high - low}; "
                f"expected a range whose ends are whole steps apart"
            )
    if log and low <= 0:
        raise ConfigError(f"{path}: {key}: int with log needs low >= 1, got {low}")
