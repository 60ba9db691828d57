"""The pieces of promotion and evaluation that need no tracking server: the predictor, the DataFrame
interface, robustness conditions, tables, and the selection and gate rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sati.data.h5format import DataError, read_split
from sati.evaluation import (
    Condition,
    conditions,
    conditions_latex,
    conditions_markdown,
    evaluate_models,
    perturb,
    summarize,
)
from sati.metrics import regression_metrics
from sati.predictor import SATIPredictor, arrays_to_frame, export_text_encoder, frame_to_arrays, seven_class
from sati.promote import gate as gate_evidence
from sati.selection import better, pessimistic_score, rank_trials
from sati.tables import paper_markdown
from sati.tracking.contract import Evidence
from sati.tracking.store import RunInfo
from sati.trainer import fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_path, tiny_encoder):
    """One epoch of a small model: (best checkpoint, its config)."""
    from sati.config import from_dict
    from tests.conftest import small_config

    tmp = tmp_path_factory.mktemp("trained")
    cfg = from_dict(small_config(tmp, synth_path, tiny_encoder, train={"epochs": 1}), "test")
    return fit(cfg).best_checkpoint, cfg


def test_predictor_reproduces_the_trainers_validation_metrics(trained, synth_path, tiny_encoder, tmp_path):
    checkpoint, _ = trained
    valid = read_split(synth_path, "valid")
    predictor = SATIPredictor(checkpoint, device="cpu")
    redone = regression_metrics(predictor.predict_arrays(valid), valid.labels, "valid")
    for key in ("valid/mae", "valid/corr", "valid/acc7"):
        assert redone[key] == pytest.approx(predictor.metrics[key], abs=1e-6)

    # the exported text encoder is config + tokenizer only; its weights come from the checkpoint
    exported = export_text_encoder(str(tiny_encoder), tmp_path / "text_encoder")
    assert (exported / "config.json").is_file()
    assert not list(exported.glob("*.safetensors")) and not list(exported.glob("*.bin"))
    same = SATIPredictor(checkpoint, text_encoder=str(exported), device="cpu")
    np.testing.assert_allclose(same.predict_arrays(valid), predictor.predict_arrays(valid), atol=1e-6)


def test_dataframe_interface_matches_the_file_interface(trained, synth_path):
    predictor = SATIPredictor(trained[0], device="cpu")
    valid = read_split(synth_path, "valid")
    frame = arrays_to_frame(valid, limit=6)
    out = predictor.predict_frame(frame)
    assert list(out["id"]) == valid.ids[:6]
    np.testing.assert_allclose(out["prediction"], predictor.predict_arrays(valid)[:6], atol=1e-5)
    assert (out["class7"] == seven_class(out["prediction"].to_numpy())).all()
    assert set(out["sentiment"]) <= {
        "highly negative",
        "negative",
        "weakly negative",
        "neutral",
        "weakly positive",
        "positive",
        "highly positive",
    }


def test_bad_dataframes_name_the_row_and_column(synth_path):
    valid = read_split(synth_path, "valid")
    frame = arrays_to_frame(valid, limit=2)
    with pytest.raises(DataError, match="missing column.*video"):
        frame_to_arrays(frame.drop(columns=["video"]), 74, 47)
    short = frame.copy()
    short.at[1, "video"] = short.at[1, "video"][:-1]
    with pytest.raises(DataError, match=f"row {valid.ids[1]}: audio has .* steps but video has"):
        frame_to_arrays(short, 74, 47)
    with pytest.raises(DataError, match=f"row {valid.ids[0]}: column 'audio' must be a \\[T, 20\\]"):
        frame_to_arrays(frame, 20, 47)


def test_seven_classes_clip_and_round_like_acc7():
    assert seven_class(np.array([-3.7, -2.5, -0.49, 0.5, 1.5, 2.6, 9.0])).tolist() == [-3, -2, 0, 0, 2, 3, 3]


def test_conditions_perturb_only_what_they_name(synth_path):
    s = read_split(synth_path, "test")
    pad = np.arange(s.audio.shape[1])[None, :] >= s.lengths[:, None]  # [N, T] padded steps
    noisy = perturb(s, Condition(noise=0.5), seed=3)
    assert np.all(noisy.audio[pad] == 0) and np.all(noisy.video[pad] == 0)  # padding stays padding
    assert np.std(noisy.audio[~pad] - s.audio[~pad]) == pytest.approx(0.5, rel=0.05)
    np.testing.assert_array_equal(perturb(s, Condition(noise=0.5), seed=3).audio, noisy.audio)  # repeatable
    assert noisy.text == s.text
    dropped = perturb(s, Condition(drop="audio"))
    assert not dropped.audio.any() and np.array_equal(dropped.video, s.video)
    assert perturb(s, Condition(drop="text")).text == [""] * len(s)
    assert [c.label for c in conditions([0.5], ["audio"])] == ["clean", "noise σ=0.5", "drop audio"]
    with pytest.raises(ValueError, match="--drop speech"):
        conditions([], ["speech"])
    with pytest.raises(ValueError, match="--noise 0.0"):
        conditions([0.0], [])


def test_an_undefined_metric_is_n_a_in_the_table_never_a_mean_of_the_rest():
    defined = regression_metrics(np.array([0.5, -1.0, 2.0]), np.array([1.0, -1.0, 2.0]), "test")
    constant = regression_metrics(np.full(3, 0.5), np.array([1.0, -1.0, 2.0]), "test")  # Pearson r undefined
    md = paper_markdown({"dropped text": [defined, constant]}, "test")
    mae, corr = [cell.strip() for cell in md.splitlines()[2].split("|")[2:4]]
    assert corr == "n/a (1/2 runs)" and "nan" not in md
    maes = [defined["test/mae"], constant["test/mae"]]
    assert mae == f"{np.mean(maes):.3f} ± {np.std(maes, ddof=1):.3f}"  # defined metrics stay mean ± sd


def test_several_models_give_mean_and_std(trained, synth_path):
    predictor = SATIPredictor(trained[0], device="cpu")
    s = read_split(synth_path, "test")
    results = evaluate_models([predictor, predictor], s, "test", conditions([0.3], []))
    flat = summarize(results, "test")
    assert flat["test/mae_std"] == 0.0 and "test/noise0.3/mae" in flat
    # the noise row is the metrics of the model's own predictions on the noisy input, recomputed here
    noisy = regression_metrics(predictor.predict_arrays(perturb(s, Condition(noise=0.3))), s.labels, "test/noise0.3")
    assert {k: flat[k] for k in noisy} == noisy and flat["test/noise0.3/mae"] != flat["test/mae"]
    md = conditions_markdown(results, "test")
    assert md.count(" ± ") == 16 and "| noise σ=0.3 |" in md
    tex = conditions_latex(results, "test", "a_caption")
    assert tex.count(r"$\pm$") == 16 and r"\caption{a\_caption}" in tex


def _run(run_id: str, value: float) -> RunInfo:
    return RunInfo(run_id, "0", run_id, "FINISHED", {}, {}, {"best/valid/mae": value, "best/valid/corr": value})


def test_ranking_skips_non_finite_trials_and_follows_the_mode():
    trials = [_run("a", 0.8), _run("b", math.nan), _run("c", 0.7)]
    assert [t.run_id for t, _ in rank_trials(trials, "valid/mae", "min")] == ["c", "a"]
    assert [t.run_id for t, _ in rank_trials(trials, "valid/corr", "max")] == ["a", "c"]


def test_pessimistic_score_penalizes_spread():
    assert pessimistic_score([1.0, 2.0, 3.0], "max") == (2.0, 1.0, 1.0)
    assert pessimistic_score([1.0, 2.0, 3.0], "min") == (2.0, 1.0, 3.0)
    assert pessimistic_score([0.5], "min") == (0.5, 0.0, 0.5)
    # a steady configuration beats a lucky one with a better mean
    lucky, steady = pessimistic_score([0.55, 0.90], "min"), pessimistic_score([0.74, 0.76], "min")
    assert lucky[0] < steady[0] and better(steady[2], lucky[2], "min")


def test_gate_needs_a_comparable_and_better_champion():
    def gate(new, old, version, min_delta):  # the evidence as it is read back from version tags
        return gate_evidence(Evidence.from_tags(new), old and Evidence.from_tags(old), version, min_delta)

    new = {
        "sati.valid_metric": "valid/mae",
        "sati.valid_mode": "min",
        "sati.valid_value": "0.70",
        "sati.data_checksum": "abc",
    }
    assert gate(new, None, None, 0.0) == (True, "no champion yet")
    old = dict(new, **{"sati.valid_value": "0.72"})
    assert gate(new, old, "1", 0.0)[0] and not gate(new, old, "1", 0.05)[0]
    assert "by more than min-delta 0.05" in gate(new, old, "1", 0.05)[1]
    assert not gate(new, dict(new), "1", 0.0)[0]  # a tie does not win
    assert "not comparable" in gate(new, dict(old, **{"sati.valid_metric": "valid/corr"}), "1", 0.0)[1]
    assert "other data" in gate(new, dict(old, **{"sati.data_checksum": "xyz"}), "1", 0.0)[1]
    corr = {
        "sati.valid_metric": "valid/corr",
        "sati.valid_mode": "max",
        "sati.valid_value": "0.5",
        "sati.data_checksum": "abc",
    }
    assert gate(corr, dict(corr, **{"sati.valid_value": "0.4"}), "1", 0.0)[0]


def test_the_reload_check_tolerance_follows_the_recorded_precision():
    from sati.promote import BF16_METRIC_TOLERANCE, reload_tolerance

    assert reload_tolerance("fp32", "fp32", 1e-3) == (1e-3, "checked in fp32, as trained")
    assert reload_tolerance("bf16", "bf16", 1e-3) == (1e-3, "checked in bf16, as trained")
    tolerance, how = reload_tolerance("bf16", "fp32", 1e-3)
    assert tolerance == BF16_METRIC_TOLERANCE and "trained in bf16, checked in fp32" in how and "0.02" in how
    assert reload_tolerance("bf16", "fp32", 0.05)[0] == 0.05  # a wider tolerance the user asked for stays
    assert reload_tolerance(None, "fp32", 1e-3)[0] == 1e-3  # checkpoints from before precision was recorded


def test_checkpoints_record_the_precision_they_were_trained_in(make_config):
    fp32 = fit(make_config(train={"epochs": 1}))
    bf16 = fit(
        make_config(train={"epochs": 1, "precision": "bf16", "out_dir": str(fp32.best_checkpoint.parents[2] / "b")})
    )
    assert SATIPredictor(fp32.best_checkpoint, device="cpu").precision == "fp32"
    assert SATIPredictor(bf16.best_checkpoint, device="cpu").precision == "bf16"  # bf16 autocast on the CPU
