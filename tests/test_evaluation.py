"""The pieces of promotion and evaluation that need no tracking server: the predictor, the DataFrame
interface, robustness conditions, tables, and the selection and gate rules."""

from __future__ import annotations

import math
from pathlib import Path

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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_metrics_see_float32_predictions_under_bf16_autocast(tiny_encoder, device):
    """Under bf16 autocast (on CPU; on CUDA where there is one: `auto` precision) the encoders and fusion
    compute in bf16, but the predictions that evaluation, selection, the reload check and reported metrics
    read are float32 and equal the head computed in fp32 from the fused steps: never rounded to bf16
    (which moves a score by up to 2^-8 of it, 1.43882 → 1.44531)."""
    import torch

    from sati.config import AblationConfig, ModelConfig
    from sati.data.dataset import SplitDataset
    from sati.data.loaders import make_loader
    from sati.data.synth import generate
    from sati.data.tokens import tokenize
    from sati.model import SATI
    from sati.model.sati import masked_mean
    from sati.pretrained import load_tokenizer
    from sati.trainer import predict, split_metrics

    arrays = generate("mosi", scale=0.05, seed=0)["valid"]
    dataset = SplitDataset(arrays, tokenize(load_tokenizer(str(tiny_encoder)), arrays.text, 50))
    torch.manual_seed(0)
    cfg = ModelConfig(text_encoder=str(tiny_encoder), hidden_size=32, encoder_feedforward=64, fusion_feedforward=64)
    model = SATI(cfg, AblationConfig(), arrays.audio.shape[-1], arrays.video.shape[-1]).to(device)
    fused, dtypes = [], set()
    hooks = [
        model.fusion.register_forward_hook(lambda _m, _i, out: fused.append(out.detach())),
        model.cross_audio.q.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype)),
    ]
    device = torch.device(device)
    try:
        scores = predict(model, dataset, 16, device, "bf16")
    finally:
        for hook in hooks:
            hook.remove()
    assert dtypes == {torch.bfloat16}  # the model did run under bf16 autocast
    assert scores.dtype == np.float32
    with torch.no_grad():  # the head in fp32, outside autocast, on what the fusion layer produced
        masks = [batch.mask.to(device) for batch in make_loader(dataset, 16, shuffle=False)]
        head = torch.cat([model.head(masked_mean(z.float(), m)).squeeze(-1) for z, m in zip(fused, masks)]).cpu()
    head = head.numpy()
    np.testing.assert_allclose(scores, head, rtol=1e-6, atol=1e-7)
    bf16 = torch.from_numpy(scores).bfloat16().float().numpy()
    assert np.abs(bf16 - scores).max() > 1e-4  # rounding them to bf16 would have shown
    assert split_metrics(model, dataset, "valid", 16, device, "bf16") == regression_metrics(
        head, arrays.labels, "valid"
    )


# --------------------------------------------------------------------------------------------
# Bad rows are named, never a KeyError


def _frame_with(synth_path, value: float):
    """Three validation rows as the model's input frame, row 1's first audio value set to ``value``."""
    frame = arrays_to_frame(read_split(synth_path, "valid"), limit=3)
    audio = [list(step) for step in frame.at[1, "audio"]]
    audio[0][0] = value
    frame.at[1, "audio"] = audio
    return frame, frame.at[1, "id"]


@pytest.mark.parametrize(
    "value, says",
    [
        (math.nan, "has non-finite values"),
        (-math.inf, "has non-finite values"),
        (1e39, "has non-finite values"),  # beyond float32
        (1e30, "has values up to 1e\\+30 in magnitude, out of the range the model computes in"),
    ],
    ids=["nan", "inf", "beyond-float32", "1e30"],
)
def test_a_bad_row_is_refused_naming_its_row_and_column(trained, synth_path, value, says):
    predictor = SATIPredictor(trained[0], device="cpu")
    frame, row = _frame_with(synth_path, value)
    with pytest.raises(DataError, match=rf"^row {row}: column audio {says}"):
        predictor.predict_frame(frame)
    assert len(predictor.predict_frame(frame.drop(index=1))) == 2  # the other rows are fine


def test_seven_class_never_indexes_with_a_non_finite_score():
    assert seven_class(np.array([-np.inf, -0.5, 0.51, 2.5, np.inf])).tolist() == [-3, 0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"scores at positions \[1\] are NaN: no class"):
        seven_class(np.array([0.2, np.nan]))


def test_sati_predict_names_a_bad_row_and_writes_nothing(trained, synth_path, tmp_path, monkeypatch, capsys):
    from sati.cli import main
    from sati.data.h5format import list_splits, write_dataset

    splits = {s: read_split(synth_path, s) for s in list_splits(synth_path)}
    splits["valid"].audio[4, 0, 0] = np.nan
    data = tmp_path / "nan.h5"
    write_dataset(data, splits, name="nan", provenance={})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(trained[0]), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # the dataset reader refuses the file before any model sees it, naming the split's array and the row
    assert err == [f"error: {data}: 'valid/audio' has NaN or infinite values (the first in row 4)"]
    assert not out.exists()


def test_a_served_row_with_nan_answers_400_naming_the_column(trained, synth_path, tmp_path):
    """`mlflow models serve` of the registered model's pyfunc (serving_model.py): a clean request answers 200
    with the predictor's scores, a row with NaN in audio answers 400 whose message names the row and column."""
    import json
    import sys
    import urllib.error
    import urllib.request

    import mlflow
    from mlflow.models import infer_signature

    import sati
    from sati.testing.processes import Service, free_port, loopback_env, wait_for
    from sati.testing.servers import answers

    predictor = SATIPredictor(trained[0], device="cpu")
    clean, row = _frame_with(synth_path, 0.25)
    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(
        model_dir,
        python_model=str(Path(sati.__file__).parent / "serving_model.py"),
        artifacts={"checkpoint": str(trained[0])},
        signature=infer_signature(clean, predictor.predict_frame(clean)),
    )
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_dir, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", port, "-w", "1"]  # fmt: skip
    service = Service("mlflow-serve", argv, tmp_path / "serve.log", loopback_env())
    url = f"http://127.0.0.1:{port}"

    def post(frame) -> tuple[int, dict]:
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()
        request = urllib.request.Request(url + "/invocations", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        wait_for(answers(url + "/ping"), 240, "mlflow models serve", service.proc, service.log_path)
        status, answer = post(clean)
        assert status == 200, answer
        served = [p["prediction"] for p in answer["predictions"]]
        np.testing.assert_allclose(served, predictor.predict_frame(clean)["prediction"], atol=1e-6)
        bad, row = _frame_with(synth_path, math.nan)
        status, answer = post(bad)
    finally:
        service.stop()
    assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer
    assert f"row {row}: column audio has non-finite values" in answer["message"]
    assert "KeyError" not in json.dumps(answer)
