"""Pipeline files that compose: ``extends`` merges files in order, each file's keys are checked and
named with that file, paths resolve against the file that sets them, and the shipped pipelines
resolve to the values they had before they were split into a base, a scale layer and a dataset file."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from sati.cli import main
from sati.config import (
    MAX_EXTENDS_DEPTH,
    ConfigError,
    DeprecatedKeyWarning,
    compose_pipeline,
    flatten,
    load_composed,
    load_pipeline,
)
from tests.conftest import REPO

PIPELINES = REPO / "pipelines"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Order and precedence


def test_extended_files_merge_in_order_then_own_keys_then_set(tmp_path):
    write(tmp_path, "a.yaml", "train: {lr: 1.0e-3, epochs: 2}\nmodel: {dropout: 0.1}\n")
    write(tmp_path, "b.yaml", "train: {lr: 2.0e-3}\nsearch: {resources: {cpu: 2}}\n")
    top = write(tmp_path, "top.yaml", "extends: [a.yaml, b.yaml]\ntrain: {epochs: 4}\n")
    cfg, files = load_composed(top)
    assert cfg.train.lr == pytest.approx(2.0e-3)  # b, listed after a, wins over a
    assert cfg.train.epochs == 4  # the file's own keys win over what it extends
    assert cfg.model.dropout == pytest.approx(0.1)  # a key only a sets is kept
    assert (cfg.search.resources.cpu, cfg.search.resources.gpu) == (2.0, 0.0)  # mappings merge key by key
    assert files == (str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), str(top))
    assert "extends" not in cfg.to_dict()  # not a config key: it never reaches MLflow params
    overridden = load_pipeline(top, ["train.lr=5.0e-3", "train.epochs=7"])
    assert (overridden.train.lr, overridden.train.epochs) == (pytest.approx(5.0e-3), 7)  # --set wins over all


def test_nested_extends_are_depth_first_and_a_shared_base_merges_once(tmp_path):
    write(tmp_path, "base.yaml", "train: {lr: 1.0e-3, epochs: 2}\n")
    write(tmp_path, "left.yaml", "extends: base.yaml\ntrain: {lr: 2.0e-3}\n")
    write(tmp_path, "right.yaml", "extends: [base.yaml]\nmodel: {dropout: 0.2}\n")
    top = write(tmp_path, "top.yaml", "extends: [left.yaml, right.yaml]\n")
    cfg, files = load_composed(top)
    # base is merged once, before left: right reaching it again does not undo left's lr
    assert cfg.train.lr == pytest.approx(2.0e-3) and cfg.train.epochs == 2 and cfg.model.dropout == pytest.approx(0.2)
    assert [Path(f).name for f in files] == ["base.yaml", "left.yaml", "right.yaml", "top.yaml"]


def test_an_empty_section_keeps_the_base_and_a_null_leaf_replaces_it(tmp_path):
    write(tmp_path, "base.yaml", "model: {dropout: 0.1}\ntracking: {uri: 'http://mlflow:5000'}\n")
    top = write(tmp_path, "top.yaml", "extends: base.yaml\nmodel:\n  # nothing changed here\ntracking: {uri: null}\n")
    cfg = load_pipeline(top)
    assert cfg.model.dropout == pytest.approx(0.1)
    assert cfg.tracking.uri is None


def test_a_deprecated_key_in_an_extended_file_warns_naming_that_file(tmp_path):
    write(tmp_path, "base.yaml", "search: {metric: valid/corr}\n")
    top = write(tmp_path, "top.yaml", "extends: base.yaml\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecatedKeyWarning)
        cfg = load_pipeline(top)
    assert cfg.train.selection_metric == "valid/corr"
    assert any(f"{tmp_path / 'base.yaml'} (extended by {top}): search.metric is deprecated" in str(w.message)
               for w in caught)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Named errors


@pytest.mark.parametrize(
    "files, fragment",
    [
        (
            {"base.yaml": "train:\n  lr_rate: 0.001\n", "top.yaml": "extends: base.yaml\n"},
            "{base} (extended by {top}): unknown key 'train.lr_rate'; did you mean 'train.lr'?",
        ),
        (
            {"base.yaml": "train: {epochs: 2.5}\n", "top.yaml": "extends: base.yaml\n"},
            "{base} (extended by {top}): train.epochs = 2.5: expected int >= 1",
        ),
        (
            {"base.yaml": "search: {resources: {gpu: -1.5}}\n", "mid.yaml": "extends: base.yaml\n",
             "top.yaml": "extends: mid.yaml\n"},
            "{base} (extended by {mid}): search.resources.gpu = -1.5: expected float >= 0.0",
        ),
        ({"top.yaml": "extends: [nope.yaml]\n"}, "{top}: extends 'nope.yaml': no such file ({nope})"),
        (
            {"base.yaml": "- train\n- model\n", "top.yaml": "extends: base.yaml\n"},
            "{base}: expected a mapping at the top level, got list (extended by {top})",
        ),
        (
            {"base.yaml": "train: [unclosed\n", "top.yaml": "extends: base.yaml\n"},
            "{base}: not valid YAML",
        ),
        (
            {"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"},
            "{b} (extended by {a}): extends 'a.yaml': an include cycle ({a} -> {b} -> {a})",
        ),
        ({"a.yaml": "extends: [a.yaml]\n"}, "{a}: extends 'a.yaml': an include cycle ({a} -> {a})"),
        ({"top.yaml": "extends: 3\n"}, "{top}: extends = 3: expected a pipeline file or a list of them"),
        ({"top.yaml": "extends: [base.yaml, null]\n"}, "{top}: extends = ['base.yaml', None]: expected a"),
        ({"top.yaml": "extend: [base.yaml]\n"}, "{top}: unknown key 'extend'; did you mean 'extends'?"),
        ({"top.yaml": "train: {extends: base.yaml}\n"}, "{top}: unknown key 'train.extends'"),
        (
            {"base.yaml": "model: {cross_attention_heads: 4}\n",
             "top.yaml": "extends: base.yaml\nmodel: {hidden_size: 30}\n"},
            "{top} (extends {base}): model.hidden_size = 30: expected an even number divisible by "
            "model.cross_attention_heads = 4",
        ),
    ],
    ids=["typo", "bad-value", "typo-two-deep", "missing", "not-a-mapping", "bad-yaml", "cycle", "self-cycle",
         "extends-not-a-name", "extends-null-entry", "extends-misspelt", "extends-in-a-section", "across-files"],
)  # fmt: skip
def test_errors_name_the_file_that_set_the_bad_key(tmp_path, files, fragment):
    for name, text in files.items():
        write(tmp_path, name, text)
    entry = tmp_path / ("a.yaml" if "a.yaml" in files else "top.yaml")
    names = {Path(n).stem: str(tmp_path / n) for n in (*files, "nope.yaml")}
    with pytest.raises(ConfigError) as err:
        load_pipeline(entry)
    assert fragment.format(**names) in str(err.value)


def test_a_chain_deeper_than_the_limit_is_refused_not_a_crash(tmp_path):
    for i in range(MAX_EXTENDS_DEPTH + 4):
        write(tmp_path, f"f{i}.yaml", f"extends: f{i + 1}.yaml\n")
    write(tmp_path, f"f{MAX_EXTENDS_DEPTH + 4}.yaml", "{}\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_EXTENDS_DEPTH} files deep"):
        load_pipeline(tmp_path / "f0.yaml")


@pytest.mark.parametrize("command", ["config", "search", "train"])
def test_the_cli_prints_one_error_line_and_exits_2(tmp_path, capsys, command):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    assert main([command, str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'b.yaml'} (extended by {tmp_path / 'a.yaml'})")
    assert "include cycle" in err[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------
# Paths


def test_inputs_resolve_beside_the_file_that_sets_them_outputs_stay_relative(tmp_path, monkeypatch):
    base = write(tmp_path, "layers/base.yaml",
                 "search: {space: space.yaml, storage_path: runs/search}\nmodel: {text_encoder: enc}\n"
                 "train: {out_dir: runs/out}\ndata: {path: data/x.h5}\n")  # fmt: skip
    write(tmp_path, "layers/space.yaml", "train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    (tmp_path / "layers" / "enc").mkdir()
    top = write(tmp_path, "runs-here/top.yaml", "extends: ../layers/base.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_pipeline(top)
    assert cfg.search.space == str(base.parent / "space.yaml")  # beside base.yaml, which sets it
    assert cfg.model.text_encoder == str(base.parent / "enc")
    # outputs and data.path stay relative: the working directory decides, wherever they are set
    assert (cfg.search.storage_path, cfg.train.out_dir, cfg.data.path) == ("runs/search", "runs/out", "data/x.h5")
    # a file's own input overrides the base's and resolves beside that file
    write(tmp_path, "runs-here/space.yaml", "train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n")
    write(tmp_path, "runs-here/top2.yaml", "extends: ../layers/base.yaml\nsearch: {space: space.yaml}\n")
    assert load_pipeline(tmp_path / "runs-here" / "top2.yaml").search.space == str(
        tmp_path / "runs-here" / "space.yaml"
    )
    # --set stays relative to the working directory, as before
    assert load_pipeline(top, ["search.space=mine.yaml"]).search.space == "mine.yaml"


def test_files_are_named_as_reached_from_the_path_given(tmp_path, monkeypatch):
    write(tmp_path, "p/base/b.yaml", "{}\n")
    write(tmp_path, "p/top.yaml", "extends: [./base/../base/b.yaml]\n")
    monkeypatch.chdir(tmp_path)
    assert compose_pipeline("p/top.yaml").files == ("p/base/b.yaml", "p/top.yaml")


# --------------------------------------------------------------------------------------------
# The shipped pipelines

# What pipelines/mosi.yaml and pipelines/mosei.yaml set before they were split into
# pipelines/base/sati.yaml + pipelines/scale/cluster.yaml + the dataset file (captured from those files).
SHARED_BEFORE = {
    "format": 2, "seed": 336, "data.max_text_tokens": 64,
    "model.text_encoder": "roberta-base", "model.hidden_size": 128, "model.dropout": 0.6,
    "train.eval_batch_size": 128, "train.lr": 1.7e-05, "train.clip_mode": "value", "train.clip": 1.0,
    "train.selection_metric": "valid/mae", "train.device": "auto", "train.precision": "auto",
    "search.space": str(REPO / "search_spaces" / "sati_paper.yaml"), "search.max_concurrent": 8,
    "search.scheduler": "asha", "search.reduction_factor": 3, "search.resources.cpu": 4, "search.resources.gpu": 0.5,
    "search.max_failures": 2, "search.storage_path": "/shared/sati/searches", "search.ray_address": "auto",
    "tracking.uri": "http://mlflow:5000",
}  # fmt: skip
BEFORE = {
    "mosi.yaml": SHARED_BEFORE | {
        "name": "sati-mosi", "data.path": "data/mosi.h5", "model.freeze_text_layers": 0, "train.epochs": 50,
        "train.batch_size": 64, "train.patience": 10, "search.num_samples": 64, "search.grace_period": 5,
        "tracking.experiment": "sati-mosi", "registry.model_name": "sati-mosi",
    },
    "mosei.yaml": SHARED_BEFORE | {
        "name": "sati-mosei", "data.path": "data/mosei.h5", "model.freeze_text_layers": 9, "train.epochs": 20,
        "train.batch_size": 16, "train.patience": 5, "search.num_samples": 48, "search.grace_period": 2,
        "tracking.experiment": "sati-mosei", "registry.model_name": "sati-mosei",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_mosi_and_mosei_resolve_to_what_they_set_before(name):
    composed = compose_pipeline(PIPELINES / name)
    assert flatten(composed.tree) == BEFORE[name]  # the same keys, the same values: nothing more, nothing less
    resolved = flatten(load_pipeline(PIPELINES / name).to_dict())
    assert {k: resolved[k] for k in BEFORE[name]} == BEFORE[name]
    assert [Path(f).relative_to(PIPELINES).as_posix() for f in composed.files] == [
        "base/sati.yaml", "scale/cluster.yaml", name,
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_dataset_files_state_only_what_differs(tmp_path, name):
    own = yaml.safe_load((PIPELINES / name).read_text())
    extends = own.pop("extends")
    parents = write(tmp_path, "parents.yaml", yaml.safe_dump({"extends": [str(PIPELINES / f) for f in extends]}))
    inherited = flatten(compose_pipeline(parents).tree)
    restated = {k: v for k, v in flatten(own).items() if inherited.get(k, object()) == v}
    assert not restated, f"{name} repeats what it extends: {restated}"


def test_scale_layers_set_the_same_keys_so_one_replaces_another(tmp_path):
    keys = {p.name: set(flatten(yaml.safe_load(p.read_text()))) for p in sorted((PIPELINES / "scale").glob("*.yaml"))}
    assert len(keys) >= 2 and len({frozenset(k) for k in keys.values()}) == 1, keys


def test_mosi_on_a_workstation_as_the_scale_layer_shows(tmp_path):
    """The example in pipelines/scale/workstation.yaml's header: MOSI with the workstation's scale."""
    text = (PIPELINES / "scale" / "workstation.yaml").read_text()
    assert "extends: [pipelines/mosi.yaml, pipelines/scale/workstation.yaml]" in text
    mine = tmp_path / "my-mosi.yaml"
    mine.write_text(f"extends: [{PIPELINES / 'mosi.yaml'}, {PIPELINES / 'scale' / 'workstation.yaml'}]\n"
                    "search: {num_samples: 16}\n")  # fmt: skip
    cfg = load_pipeline(mine)
    mosi = load_pipeline(PIPELINES / "mosi.yaml")
    assert (cfg.search.ray_address, cfg.tracking.uri, cfg.search.storage_path) == (None, None, "runs/search")
    assert (cfg.search.max_concurrent, cfg.search.resources.gpu, cfg.search.num_samples) == (2, 0.5, 16)
    assert (cfg.name, cfg.train, cfg.model, cfg.search.space) == (mosi.name, mosi.train, mosi.model, mosi.search.space)


@pytest.mark.parametrize("path", sorted(PIPELINES.rglob("*.yaml")), ids=lambda p: p.relative_to(PIPELINES).as_posix())
def test_every_pipeline_file_and_layer_loads_alone(path):
    assert load_pipeline(path).train.selection_metric.startswith("valid/")


def test_no_pipeline_or_space_points_outside_the_repository():
    for path in [*PIPELINES.rglob("*.yaml"), *(REPO / "search_spaces").glob("*.yaml")]:
        text = path.read_text()
        assert "../shared" not in text and "SPEC-SATI" not in text and "/work/" not in text, path


def test_sati_config_prints_the_merged_pipeline_and_its_files(capsys):
    assert main(["config", str(PIPELINES / "mosei.yaml")]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first == (
        f"# {PIPELINES / 'mosei.yaml'}, merged over the files it extends: "
        f"{PIPELINES / 'base' / 'sati.yaml'}, {PIPELINES / 'scale' / 'cluster.yaml'}"
    )
    assert yaml.safe_load(out) == load_pipeline(PIPELINES / "mosei.yaml").to_dict()
    assert main(["config", str(PIPELINES / "quickstart.yaml")]) == 0  # one file: the YAML alone, as before
    assert not capsys.readouterr().out.startswith("#")


def test_docs_name_real_keys_and_show_what_sati_config_prints(capsys, monkeypatch):
    """docs/pipelines.md: every dotted key it names exists, and the first line it quotes is the real one."""
    import re

    from sati.config import valid_keys

    doc = (REPO / "docs" / "pipelines.md").read_text()
    sections = {k.split(".")[0] for k in valid_keys()}
    named = {k for k in re.findall(r"`([a-z_]+\.[a-z_.]+)[`=]", doc) if k.split(".")[0] in sections}
    keys = set(valid_keys()) | {k.rsplit(".", 1)[0] for k in valid_keys()}
    assert named and not {k for k in named if k not in keys and k not in ("search.metric", "search.mode")}
    rows = re.findall(r"^\| `([a-z]+)` \|.*\| (`.*`) \|$", doc, flags=re.M)  # the sections table
    assert {section for section, _ in rows} == sections - {"name", "seed", "format"}
    for section, listed in rows:
        assert {f"{section}.{k}" for k in re.findall(r"`([a-z_]+)`", listed)} <= keys, section
    monkeypatch.chdir(REPO)
    assert main(["config", "pipelines/mosi.yaml"]) == 0
    assert f"`{capsys.readouterr().out.splitlines()[0]}`" in doc
