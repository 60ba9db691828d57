"""The typed pipeline config: shipped files load; bad keys and values get named errors."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import yaml

from sati.config import (
    CONFIG_FORMAT,
    ConfigError,
    DeprecatedKeyWarning,
    PipelineConfig,
    from_dict,
    load_pipeline,
    parse_overrides,
    valid_keys,
)
from tests.conftest import REPO


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_loads(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedKeyWarning)  # shipped files are of the current format
        cfg = load_pipeline(path)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.train.selection_metric.startswith("valid/")
    assert cfg.format == CONFIG_FORMAT and cfg.model.absent_modalities == "file"


# Format 1 (no `format` key): what model.absent_modalities meant when such a config was written (git log -S
# absent_modalities: the key came in with 151710e, default skip; before it zeros were fused as features).
@pytest.mark.parametrize(
    "model, trained_as",
    [({}, "fuse"), ({"absent_modalities": "skip"}, "zeros"), ({"absent_modalities": "fuse"}, "fuse")],
    ids=["no-key", "skip", "fuse"],
)
def test_a_config_without_format_loads_as_it_was_trained(tmp_path, model, trained_as):
    raw = {"name": "old", "model": {"hidden_size": 64, **model}}
    cfg = from_dict(raw, "old")
    assert cfg.format == CONFIG_FORMAT and cfg.model.absent_modalities == trained_as
    assert cfg.model.hidden_size == 64 and "format" not in raw  # the caller's mapping is left alone
    assert from_dict(cfg.to_dict(), "written again") == cfg  # its current form means the same
    assert from_dict({**raw, "format": 1}, "explicit") == cfg
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.warns(DeprecatedKeyWarning, match=r"no `format` key: read as format 1.*add `format: 2`"):
        assert load_pipeline(path) == cfg


def test_new_configs_get_the_current_format_and_its_default():
    cfg = PipelineConfig()
    assert cfg.format == CONFIG_FORMAT == 2 and cfg.model.absent_modalities == "file"
    assert from_dict({"format": 2}, "new") == cfg
    with pytest.raises(ConfigError, match=r"format = 3: expected 1 or 2 \(a newer format needs a newer sati\)"):
        from_dict({"format": 3}, "future")
    with pytest.raises(ConfigError, match=r"new: model.absent_modalities = 'skip' is format 1's name.*'zeros'"):
        from_dict({"format": 2, "model": {"absent_modalities": "skip"}}, "new")


def test_config_is_frozen():
    cfg = PipelineConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0


def test_paper_names_are_config_keys():
    keys = set(valid_keys())
    for key in (
        "loss.consistency_weight",
        "loss.temporal_weight",
        "loss.domain_weight",
        "loss.reconstruction_weight",
        "loss.margin",
        "loss.scale",
        "model.fbp_pool",
        "model.fbp_hidden",
        "model.dropout",
        "train.lr",
        "ablation.til",
        "ablation.gate",
        "ablation.adversarial",
    ):
        assert key in keys


def test_overrides_apply_and_keep_types(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 1e-5\n")  # PyYAML reads this as the string '1e-5'
    cfg = load_pipeline(
        path, ["train.lr=3.0e-5", "loss.temporal_weight=10", "ablation.gate=false", "model.gate=sigmoid"]
    )
    assert cfg.train.lr == pytest.approx(3.0e-5)
    assert cfg.loss.temporal_weight == 10.0 and isinstance(cfg.loss.temporal_weight, float)
    assert cfg.ablation.gate is False
    assert cfg.model.gate == "sigmoid"
    assert load_pipeline(path).train.lr == pytest.approx(1e-5)


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  lr_rate: 0.001\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    msg = str(err.value)
    assert str(path) in msg and "train.lr_rate" in msg and "did you mean 'train.lr'" in msg


def test_unknown_section_suggests_closest(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("los:\n  margin: 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'los'.*did you mean 'loss"):
        load_pipeline(path)


def test_misspelt_override_suggests_key(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'loss\.temporal_wieght'.*did you mean 'loss\.temporal_weight'"):
        load_pipeline(path, ["loss.temporal_wieght=3"])


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  lr: fast\n", "train.lr = 'fast': expected float > 0.0"),
        ("train:\n  lr: -0.1\n", "train.lr = -0.1: expected float > 0.0"),
        ("train:\n  epochs: 2.5\n", "train.epochs = 2.5: expected int >= 1"),
        ("model:\n  dropout: 1.5\n", "model.dropout = 1.5: expected float >= 0.0 and < 1.0"),
        ("model:\n  gate: soft\n", "model.gate = 'soft': expected one of 'linear', 'sigmoid', 'sign'"),
        ("loss:\n  margin_form: arc\n", "loss.margin_form = 'arc': expected one of 'arcface', 'cosface'"),
        ("ablation:\n  til: 'no'\n", "ablation.til = 'no': expected bool"),
        ("model:\n  hidden_size: 30\n", "model.hidden_size = 30: expected an even number divisible"),
        ("train:\n  selection_metric: test/mae\n", "the test split is never used for selection"),
        ("train: 3\n", "'train' must be a mapping"),
    ],
)
def test_bad_values_name_key_value_and_expectation(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.lr"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(bad)


def test_paper_form_is_the_default():
    cfg = PipelineConfig()
    assert cfg.loss.margin_form == "arcface"
    assert cfg.model.gate == "linear"
    assert (cfg.loss.consistency_weight, cfg.loss.temporal_weight, cfg.loss.domain_weight) == (1.0, 1.0, 0.4)
    assert (cfg.loss.margin, cfg.loss.scale, cfg.model.fbp_pool, cfg.model.fbp_hidden) == (0.5, 30.0, 2, 32)
    assert Path(cfg.data.path).suffix == ".h5"


def test_mosei_pipeline_freezes_the_layers_its_comment_names(tmp_path):
    """pipelines/mosei.yaml says embeddings + layers 0-8 are frozen; a 12-layer RoBERTa built as the
    pipeline builds it has exactly those frozen."""
    from transformers import RobertaConfig, RobertaModel

    from sati.model.text import HFTextEncoder

    text = (REPO / "pipelines" / "mosei.yaml").read_text()
    assert "embeddings + layers 0-8 frozen" in text and "freezes nothing" in text
    cfg = load_pipeline(REPO / "pipelines" / "mosei.yaml")
    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=12, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=20)  # fmt: skip
    RobertaModel(config).save_pretrained(tmp_path / "roberta-12")
    encoder = HFTextEncoder(str(tmp_path / "roberta-12"), cfg.model.freeze_text_layers)
    layers = encoder.encoder.encoder.layer
    frozen = [i for i, layer in enumerate(layers) if not any(p.requires_grad for p in layer.parameters())]
    assert frozen == list(range(9))
    assert not any(p.requires_grad for p in encoder.encoder.embeddings.parameters())
    assert all(p.requires_grad for layer in layers[9:] for p in layer.parameters())
