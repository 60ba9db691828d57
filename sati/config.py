"""Typed, frozen pipeline configuration loaded from YAML with dotted overrides.

One ``PipelineConfig`` holds every knob: ``data``, ``model``, ``loss``, ``ablation``, ``train``,
and the sections the search, tracking and registry build on. YAML is only its serialization:
unknown keys, wrong types and out-of-range values are refused with an error that names the file,
the dotted key, the value and what was expected (and, for a typo, the closest valid key).

Paper symbols: ``loss.consistency_weight`` α, ``loss.temporal_weight`` β, ``loss.domain_weight``
γ, ``loss.margin`` τ, ``loss.scale`` s, ``model.fbp_pool`` k, ``model.fbp_hidden`` o.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sati.metrics import HIGHER_IS_BETTER, PAPER_METRICS
from sati.safe_yaml import load_yaml
from sati.untrusted import cap_hint, limits, short


class ConfigError(ValueError):
    """A pipeline file or override that does not match the schema."""


SELECTION_METRICS = tuple(f"valid/{m}" for m in PAPER_METRICS)


def metric_direction(metric: str) -> Literal["min", "max"]:
    """``min`` for a metric that is better when lower (MAE), ``max`` otherwise; ``metric`` is ``<split>/<name>``."""
    return "max" if HIGHER_IS_BETTER[metric.rsplit("/", 1)[-1]] else "min"


def _spec(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, help: str = ""):
    """A dataclass field with range metadata checked at load time."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    path: str = _spec("data/synth.h5", help="canonical SATI HDF5 dataset file")
    generate: Literal["mosi", "mosei"] | None = _spec(
        None, help="generate a synthetic dataset with this preset at `path` if the file is absent"
    )
    generate_scale: float = _spec(1.0, gt=0.0, le=1.0, help="fraction of the preset's split sizes")
    max_text_tokens: int = _spec(50, ge=3, le=512, help="per-sample text token budget, specials included")
    num_workers: int = _spec(0, ge=0)


@dataclass(frozen=True)
class ModelConfig:
    text_encoder: str = _spec(
        "roberta-base",
        help="Hugging Face name or local directory, `package:<module>` for an encoder shipped in a "
        "Python package, or `precomputed` to use the dataset's text features",
    )
    freeze_text_layers: int = _spec(0, ge=-1, help="freeze embeddings + this many bottom layers; -1 freezes all")
    hidden_size: int = _spec(128, ge=8, help="H; even and divisible by cross_attention_heads")
    dropout: float = _spec(0.6, ge=0.0, lt=1.0, help="discriminator and fusion-MLP dropout")
    encoder_layers: int = _spec(1, ge=1, help="audio/video Transformer encoder layers")
    encoder_feedforward: int = _spec(2048, ge=1)
    audio_heads: int = _spec(2, ge=1, help="must divide the audio feature dim")
    video_heads: int = _spec(1, ge=1, help="must divide the video feature dim")
    cross_attention_heads: int = _spec(4, ge=1)
    cross_attention_dropout: float = _spec(0.2, ge=0.0, lt=1.0)
    fbp_hidden: int = _spec(32, ge=1, help="o: FBP output size")
    fbp_pool: int = _spec(2, ge=1, help="k: FBP sum-pool size")
    fbp_dropout: float = _spec(0.4, ge=0.0, lt=1.0)
    gate: Literal["linear", "sigmoid", "sign"] = _spec(
        "linear",
        help="linear: paper Eq. 12; sigmoid: bounded trainable gate; "
        "sign: the reference code's binarized gate (its parameters never train)",
    )
    fusion_heads: int = _spec(1, ge=1)
    fusion_feedforward: int = _spec(2048, ge=1)
    reverse_grad_weight: float = _spec(1.0, ge=0.0, help="λ of the gradient-reversal layer")
    absent_modalities: Literal["file", "fuse", "zeros"] = _spec(
        "file",
        help="file: a modality the dataset file marks absent for a sample (a source without it, e.g. text-only "
        "MOSI, or `sati evaluate --drop`) is shut for that sample (gate 0) and its pieces are left out of every "
        "loss term; a sample whose features are zeros but present is fused like any other; fuse: absence is "
        "ignored, zeros are fused as features; zeros: format 1's `skip`, kept to run models trained with it: "
        "a sample whose audio or video is all zeros has that stream shut, and only a modality the whole batch "
        "lacks is left out of the consistency, domain and temporal terms",
    )


@dataclass(frozen=True)
class LossConfig:
    consistency_weight: float = _spec(1.0, ge=0.0, help="α: CMD consistency")
    temporal_weight: float = _spec(1.0, ge=0.0, help="β: temporal-invariance JSD (the term is ~1e-4)")
    domain_weight: float = _spec(0.4, ge=0.0, help="γ: angular-margin modality discrimination")
    reconstruction_weight: float = _spec(0.0, ge=0.0, help="not in the paper (Eq. 14); the reference code uses 1.0")
    margin: float = _spec(0.5, ge=0.0, lt=3.1416, help="τ")
    scale: float = _spec(30.0, gt=0.0, help="s")
    margin_form: Literal["arcface", "cosface"] = _spec(
        "arcface", help="arcface: cos(θ+τ) as in paper Eq. 4; cosface: cos θ − τ as the reference code"
    )
    margin_fold: Literal["paper", "easy", "threshold"] = _spec(
        "paper",
        help="arcface only: cos(θ+τ) is not monotone for θ > π−τ. paper: as Eq. 4; easy: cos θ where "
        "cos θ <= 0 (insightface easy_margin); threshold: cos θ − τ·sin τ where θ > π−τ (insightface)",
    )
    domain_reduction: Literal["mean", "sum"] = _spec(
        "mean", help="over the three modalities: mean (reference code) or sum (paper Eq. 5)"
    )
    domain_l2: float = _spec(0.01, ge=0.0, help="λ‖W‖² on the class weights, per code group")
    cmd_moments: int = _spec(5, ge=1)


@dataclass(frozen=True)
class AblationConfig:
    """Table II switches: turning one off removes that component."""

    til: bool = _spec(True, help="temporal-invariance learning (the β term)")
    gate: bool = _spec(True, help="the FBP gate (off: both streams pass ungated)")
    adversarial: bool = _spec(True, help="the modality discriminator and its γ term")
    text_only: bool = _spec(
        False,
        help="the same text encoder, fusion Transformer and head with audio and video removed (no "
        "cross-attention, gates or discriminator; only the task loss trains): the unimodal baseline",
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _spec(50, ge=1)
    batch_size: int = _spec(64, ge=1)
    eval_batch_size: int = _spec(128, ge=1)
    lr: float = _spec(1.7e-5, gt=0.0)
    text_encoder_lr: float | None = _spec(None, gt=0.0, help="defaults to lr")
    weight_decay: float = _spec(0.0, ge=0.0)
    clip_mode: Literal["value", "norm", "none"] = _spec("value")
    clip: float = _spec(1.0, gt=0.0)
    patience: int = _spec(10, ge=0, help="epochs without improvement before stopping; 0 never stops")
    selection_metric: str = _spec(
        "valid/mae",
        help="the validation metric that picks the best epoch's checkpoint, ranks search trials and "
        "promotes a model: valid/<mae|corr|acc2_has0|acc2_non0|f1_has0|f1_non0|acc7|acc5>",
    )
    selection_mode: Literal["auto", "min", "max"] = _spec(
        "auto", help="auto: from the metric (min for mae, max for the others); an explicit value must agree"
    )
    device: str = _spec("auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    precision: Literal["auto", "fp32", "bf16"] = _spec("auto", help="auto: bf16 autocast on CUDA")
    max_steps_per_epoch: int | None = _spec(None, ge=1, help="cap for smoke runs")
    out_dir: str = _spec("runs/sati")

    @property
    def selection_direction(self) -> Literal["min", "max"]:
        """``selection_mode`` with ``auto`` resolved from the metric (``min`` for MAE, else ``max``)."""
        if self.selection_mode != "auto":
            return self.selection_mode
        return metric_direction(self.selection_metric)


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = _spec(1.0, gt=0.0, help="CPUs per trial")
    gpu: float = _spec(0.0, ge=0.0, help="GPUs per trial; fractions (0.5, 0.25) pack trials on one GPU")


@dataclass(frozen=True)
class SearchConfig:
    space: str | None = _spec(None, help="search space YAML (dotted config keys → distributions)")
    num_samples: int = _spec(8, ge=1, help="number of trials")
    max_concurrent: int = _spec(2, ge=1, help="trials running at once")
    sampler: Literal["tpe", "random"] = _spec(
        "tpe", help="how Optuna samples the space: tpe (learns from finished trials) or random (a baseline)"
    )
    scheduler: Literal["asha", "hyperband", "fifo"] = _spec("asha")
    grace_period: int = _spec(1, ge=1, help="epochs before ASHA/HyperBand may stop a trial")
    reduction_factor: int = _spec(3, ge=2)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    time_budget_s: float | None = _spec(None, gt=0.0, help="stop starting trials after this many seconds")
    budget_gpu_hours: float | None = _spec(
        None,
        gt=0.0,
        help="stop starting trials once the trials have used this many GPU-hours (fractions count as such)",
    )
    budget_cpu_hours: float | None = _spec(None, gt=0.0, help="the same in CPU-hours (CPU clusters)")
    max_failures: int = _spec(1, ge=0, help="retries of a trial after an infrastructure failure")
    reuse_actors: bool = _spec(
        True,
        help="run successive trials in the same worker process (saves the "
        "per-trial start-up); false gives each trial a fresh process",
    )
    storage_path: str = _spec("runs/search", help="local dir, shared mount, or s3:// / gs:// URI for checkpoints")
    checkpoint_every: int = _spec(
        0,
        ge=0,
        help="0: a trial reports a resumable checkpoint to Tune when its best improves; N: also every N "
        "epochs (a crash loses fewer epochs; each such checkpoint also copies best.pt)",
    )
    log_checkpoints: Literal["finished", "top_k", "none"] = _spec(
        "finished",
        help="which trials upload best.pt to MLflow: those that finished (not stopped early), the "
        "search.top_k best at the end of the search, or none; the others keep a pointer to their Tune "
        "checkpoint (tag sati.checkpoint_uri), from which promotion still works",
    )
    top_k: int = _spec(3, ge=1, help="with log_checkpoints: top_k, how many trials upload best.pt")
    resource_wait_s: float = _spec(
        0.0,
        ge=0.0,
        help="on a cluster that starts nodes on demand: how long the pre-flight waits (asking the autoscaler) "
        "for a node that fits search.resources before it gives up; 0 refuses at once",
    )
    study_storage: str | None = _spec(
        None,
        help="Optuna RDB storage URL of the search's study (`optuna-dashboard <url>` shows it live); none: "
        "$SATI_STUDY_STORAGE, else a SQLite file beside a local MLflow store, else in memory (no dashboard)",
    )
    ray_address: str | None = _spec(
        None, help="Ray cluster address (ray://host:10001, host:6379, auto); none starts a local Ray for the search"
    )


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = _spec(None, help="MLflow tracking URI; none: sqlite:///<cwd>/mlflow.db")
    experiment: str = _spec("sati")


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str | None = None


CONFIG_FORMAT = 2  # the format version new configs are written in (top-level key `format`)


@dataclass(frozen=True)
class PipelineConfig:
    format: int = _spec(
        CONFIG_FORMAT,
        ge=1,
        le=CONFIG_FORMAT,
        help="format version of this config; a config without it is format 1 and loads with the behaviour "
        "it had (model.absent_modalities)",
    )
    name: str = "sati"
    seed: int = 336
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, overrides: dict[str, Any], source: str = "overrides") -> PipelineConfig:
        """A copy with dotted-key overrides applied and validated."""
        merged = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(merged, _renamed(key, source) if key in RENAMED_KEYS else key, value, source)
        return from_dict(merged, source)


# --------------------------------------------------------------------------------------------
# Loading and validation


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file whose top level is a mapping (empty file: {}), with named errors; read within the
    caps of ``sati.untrusted`` (file size, alias expansion, nesting: ``sati.safe_yaml``)."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    cap = limits().config_bytes
    if path.stat().st_size > cap:
        raise ConfigError(
            f"{path}: {path.stat().st_size} bytes, more than {cap} for a {what} file; {cap_hint('config_bytes')}"
        )
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_pipeline(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline YAML and the files it ``extends``, apply ``key=value`` overrides, validate everything.

    Input files a pipeline file names (``search.space``, a local ``model.text_encoder`` folder) are read
    relative to the file that names them (the pipeline or a file it extends); an override's path is relative
    to the working directory, as are outputs (``data.path`` to generate, ``train.out_dir``,
    ``search.storage_path``, the local MLflow store)."""
    return load_composed(path, overrides)[0]


def load_composed(
    path: str | Path, overrides: list[str] | dict[str, Any] | None = None
) -> tuple[PipelineConfig, tuple[str, ...]]:
    """``load_pipeline``'s config and the files that composed it, in merge order (``path`` last)."""
    composed = compose_pipeline(path)
    if "format" not in composed.tree:
        warnings.warn(
            f"{composed.source}: no `format` key: read as format 1, as configs were written before it existed "
            f"({FORMAT_1_NOTE}); add `format: {CONFIG_FORMAT}` for the current behaviour",
            DeprecatedKeyWarning,
            stacklevel=3,
        )
    cfg = from_dict(composed.tree, composed.source)
    if overrides:
        cfg = cfg.replace(
            parse_overrides(overrides) if isinstance(overrides, list) else overrides,
            source=f"{composed.files[-1]} (--set)",
        )
    return cfg, composed.files


# --------------------------------------------------------------------------------------------
# Composition: a pipeline file may extend others (``extends: [base.yaml, scale/cluster.yaml]``)

EXTENDS = "extends"  # the top-level key of a pipeline file that names the files it builds on
MAX_EXTENDS_DEPTH = 16  # files extending files: a deeper chain is refused, not a recursion error
_SECTIONS = frozenset(f.name for f in dataclasses.fields(PipelineConfig))


@dataclass(frozen=True)
class ComposedPipeline:
    """A pipeline file merged over the files it extends: ``tree`` is the raw mapping (each file's keys
    checked against the schema and named with that file; input paths absolute), ``files`` the files
    merged, in order, the named file last."""

    tree: dict
    files: tuple[str, ...]

    @property
    def source(self) -> str:
        """How errors about the merged whole (checks across keys) name it."""
        *bases, top = self.files
        return f"{top} (extends {', '.join(bases)})" if bases else top


def compose_pipeline(path: str | Path) -> ComposedPipeline:
    """Merge ``path`` over the files it extends, depth first and in the order listed (each file
    once, where it is first reached), then its own keys. Mappings merge key by key; any other value
    (a list, a null) replaces the one before. A section left empty (``model:`` with nothing under it)
    changes nothing. Include cycles, missing files and unknown keys are named errors."""
    path = Path(os.path.normpath(path))
    layers = _layers(path, None, (), set())
    tree: dict = {}
    for _source, own in layers:
        tree = _deep_merge(tree, own)
    return ComposedPipeline(tree, tuple(source for source, _ in layers))


def _layers(path: Path, extended_by: Path | None, chain: tuple[Path, ...], merged: set[Path]) -> list[tuple[str, dict]]:
    """(file, its own checked keys) for ``path`` and every file it extends, in merge order.

    ``chain`` holds the files that led here (for cycles), ``merged`` the files already merged (a file
    reached twice is merged once)."""
    real = path.resolve()
    source = f"{path} (extended by {extended_by})" if extended_by else str(path)
    try:
        raw = read_yaml_mapping(path, "pipeline")
    except ConfigError as err:
        raise ConfigError(f"{err} (extended by {extended_by})" if extended_by else str(err)) from None
    layers: list[tuple[str, dict]] = []
    for name in _extends_names(raw.pop(EXTENDS, None), source):
        included = path.parent / name
        shown = Path(os.path.normpath(included))
        if included.resolve() in {p.resolve() for p in (*chain, path)}:
            cycle = " -> ".join(str(p) for p in (*chain, path, shown))
            raise ConfigError(f"{source}: extends '{name}': an include cycle ({cycle})")
        if included.resolve() in merged:
            continue
        if not included.is_file():
            raise ConfigError(f"{source}: extends '{name}': no such file ({shown})")
        if len(chain) + 1 >= MAX_EXTENDS_DEPTH:
            raise ConfigError(f"{source}: extends '{name}': more than {MAX_EXTENDS_DEPTH} files deep")
        layers += _layers(shown, path, (*chain, path), merged)
    layers.append((str(path), _own_keys(raw, path, source)))
    merged.add(real)
    return layers


def _extends_names(value: Any, source: str) -> list[str]:
    """The file names of an ``extends`` value: one name or a list of them."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(
            f"{source}: {EXTENDS} = {value!r}: expected a pipeline file or a list of them, relative to this file"
        )
    return names


def _own_keys(raw: dict, path: Path, source: str) -> dict:
    """One file's keys, renamed, with its input paths made absolute, and checked (an error names ``source``)."""
    for key in raw:
        if key not in _SECTIONS and difflib.get_close_matches(str(key), [EXTENDS], n=1, cutoff=0.75):
            raise ConfigError(f"{source}: unknown key '{key}'; did you mean '{EXTENDS}'?")
    own = _inputs_beside(_rename_keys(raw, source), path.parent)
    # types and ranges of what this file sets, read in its own format; checks across keys come last
    _build(PipelineConfig, _current_format(own, source), source, "")
    return own


def _deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: mappings key by key, anything else replaced; a null
    where ``base`` has a mapping (an empty section) keeps ``base``'s."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(out.get(key), dict) and (value is None or isinstance(value, dict)):
            out[key] = _deep_merge(out[key], value or {})
        else:
            out[key] = copy.deepcopy(value)
    return out


def _inputs_beside(raw: dict, folder: Path) -> dict:
    """``raw`` with relative input paths made absolute against ``folder`` (that of the file that sets them)."""
    raw = copy.deepcopy(raw)
    search, model = raw.get("search"), raw.get("model")
    if isinstance(search, dict) and isinstance(search.get("space"), str) and not Path(search["space"]).is_absolute():
        search["space"] = str((folder / search["space"]).resolve())
    encoder = model.get("text_encoder") if isinstance(model, dict) else None
    if isinstance(encoder, str) and not Path(encoder).is_absolute() and (folder / encoder).is_dir():
        model["text_encoder"] = str((folder / encoder).resolve())
    return raw


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-5", "ablation.gate=false"]`` → ``{"train.lr": 3e-5, ...}`` (values are YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {short(item)}: expected KEY=VALUE, e.g. train.lr=3.0e-5")
        try:
            out[key.strip()] = load_yaml(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {short(item)}: not valid YAML: {err}") from None
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1.0}}`` → ``{"train.lr": 1.0}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def valid_keys(cls: type = PipelineConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema (``train.lr``, ``loss.margin``, ...)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += valid_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def closest_key(key: str) -> str | None:
    """The valid dotted key nearest to ``key``, for "did you mean" hints."""
    leaves = valid_keys()
    sections = sorted({k.rsplit(".", 1)[0] for k in leaves if "." in k})
    keys = leaves + sections
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in leaves], n=1, cutoff=0.6)
    return next((k for k in leaves if by_leaf and k.endswith("." + by_leaf[0])), None)


def from_dict(raw: dict, source: str) -> PipelineConfig:
    """Build and validate a config from a plain nested mapping; ``source`` names it in errors. A mapping of an
    older format (no ``format`` key: 1) is read in the current format's terms, meaning what it meant then."""
    return _validate(_build(PipelineConfig, _rename_keys(_current_format(raw, source), source), source, ""), source)


# Format 1 (no `format` key) → 2. The key model.absent_modalities came in during format 1 (git 151710e):
# a config without it was written when zeros were fused as features ("fuse"); its value "skip" read
# absence from zero values, which format 2 calls "zeros" (format 2's default "file" reads the data file).
FORMAT_1_ABSENT = {None: "fuse", "skip": "zeros", "fuse": "fuse"}
FORMAT_1_NOTE = "model.absent_modalities: fuse without the key, skip → zeros"


def _current_format(raw: Any, source: str) -> Any:
    """``raw`` in the current format: format 1 mappings (no ``format`` key, or ``format: 1``) translated."""
    if not isinstance(raw, dict):
        return raw
    version = raw.get("format", 1)
    if version == CONFIG_FORMAT:
        absent = _get_dotted(raw, "model.absent_modalities")
        if absent == "skip":
            raise ConfigError(
                f"{source}: model.absent_modalities = 'skip' is format 1's name (absence read from zero values); "
                "in format 2 that is 'zeros', and 'file' (the default) reads absence from the dataset file"
            )
        return raw
    if version != 1 or isinstance(version, bool):
        raise ConfigError(
            f"{source}: format = {version!r}: expected 1 or {CONFIG_FORMAT} (a newer format needs a newer sati)"
        )
    raw = copy.deepcopy(raw)
    model = raw.get("model")
    if model is None or isinstance(model, dict):
        model = raw["model"] = dict(model or {})
        absent = model.get("absent_modalities")
        if isinstance(absent, str | None) and absent in FORMAT_1_ABSENT:
            model["absent_modalities"] = FORMAT_1_ABSENT[absent]
    raw["format"] = CONFIG_FORMAT
    return raw


class DeprecatedKeyWarning(FutureWarning):
    """A config key that was renamed; its old spelling still works."""


# Renamed keys: old dotted key → new dotted key. The old spelling is read with a warning.
RENAMED_KEYS = {
    # the metric that selects a trainer's checkpoint also ranks a search's trials: one key for both
    "search.metric": "train.selection_metric",
    "search.mode": "train.selection_mode",
}


def _renamed(old: str, source: str) -> str:
    new = RENAMED_KEYS[old]
    warnings.warn(f"{source}: {old} is deprecated, use {new} (read as {new})", DeprecatedKeyWarning, stacklevel=4)
    return new


def _rename_keys(raw: Any, source: str) -> Any:
    """``raw`` with renamed keys moved to their new place; the old and new key disagreeing is an error."""
    if not isinstance(raw, dict) or not any(_get_dotted(raw, old) is not _ABSENT for old in RENAMED_KEYS):
        return raw
    raw = copy.deepcopy(raw)
    for old in RENAMED_KEYS:
        value = _get_dotted(raw, old)
        if value is _ABSENT:
            continue
        new = _renamed(old, source)
        section, leaf = old.split(".")
        del raw[section][leaf]
        current = _get_dotted(raw, new)
        if current is not _ABSENT and current != value:
            raise ConfigError(f"{source}: {old} = {short(value)} and {new} = {short(current)} disagree; set only {new}")
        new_section, new_leaf = new.split(".")
        raw.setdefault(new_section, {})[new_leaf] = value
    return raw


_ABSENT = object()


def _get_dotted(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _unknown(source: str, key: str) -> ConfigError:
    hint = closest_key(key)
    suggestion = f"; did you mean '{hint}'?" if hint else ""
    return ConfigError(f"{source}: unknown key '{key}'{suggestion}")


def _build(cls: type, raw: Any, source: str, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {short(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise _unknown(source, f"{prefix}{key}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp, dotted = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name], source, dotted + ".")
        else:
            kwargs[f.name] = _check_value(tp, raw[f.name], f.metadata, source, dotted)
    return cls(**kwargs)


def _describe(tp: Any, meta: dict) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _describe(inner[0], meta) + " or null"
    bounds = [
        f"{op} {meta[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if meta.get(k) is not None
    ]
    return f"{getattr(tp, '__name__', tp)}" + (f" {' and '.join(bounds)}" if bounds else "")


def _check_value(tp: Any, value: Any, meta: dict, source: str, key: str):
    expected = _describe(tp, meta)

    def bad() -> ConfigError:
        return ConfigError(f"{source}: {key} = {short(value)}: expected {expected}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise bad()
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
    elif tp is str and not isinstance(value, str):
        raise bad()
    for k, ok in (
        ("ge", lambda v, b: v >= b),
        ("gt", lambda v, b: v > b),
        ("le", lambda v, b: v <= b),
        ("lt", lambda v, b: v < b),
    ):
        if meta.get(k) is not None and not ok(value, meta[k]):
            raise bad()
    return value


def _set_dotted(tree: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = tree
    for _i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise _unknown(source, key)
        node = node[part]
    if parts[-1] not in node or isinstance(node[parts[-1]], dict):
        raise _unknown(source, key)
    node[parts[-1]] = value


def _validate(cfg: PipelineConfig, source: str) -> PipelineConfig:
    """Checks that involve more than one key."""
    m = cfg.model
    if m.hidden_size % 2 or m.hidden_size % m.cross_attention_heads:
        raise ConfigError(
            f"{source}: model.hidden_size = {m.hidden_size}: expected an even number divisible "
            f"by model.cross_attention_heads = {m.cross_attention_heads}"
        )
    if (2 * m.hidden_size) % m.fusion_heads:
        raise ConfigError(
            f"{source}: model.fusion_heads = {m.fusion_heads}: must divide 2 * model.hidden_size = {2 * m.hidden_size}"
        )
    t = cfg.train
    if not t.selection_metric.startswith("valid/"):
        raise ConfigError(
            f"{source}: train.selection_metric = {t.selection_metric!r}: expected a "
            "validation metric such as 'valid/mae' (the test split is never used for selection)"
        )
    if t.selection_metric not in SELECTION_METRICS:
        raise ConfigError(
            f"{source}: train.selection_metric = {t.selection_metric!r}: not a metric the trainer reports; "
            f"expected one of {', '.join(SELECTION_METRICS)}"
        )
    natural = metric_direction(t.selection_metric)
    if t.selection_mode not in ("auto", natural):
        raise ConfigError(
            f"{source}: train.selection_mode = {t.selection_mode!r} contradicts train.selection_metric = "
            f"{t.selection_metric!r}, which is better when {'lower' if natural == 'min' else 'higher'}: "
            f"expected '{natural}' or 'auto'"
        )
    return cfg
