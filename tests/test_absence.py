"""Absent modalities come from the dataset file, never from the values: the per-sample presence mask in the
file format (and format 1 files), `sati data prepare` marking a source's absent modalities, `--drop`, the
model's gates, and old configs and checkpoints that keep the behaviour they were trained with."""

from __future__ import annotations

import dataclasses
import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from sati.checkpoint import load_checkpoint
from sati.config import AblationConfig, ModelConfig, from_dict
from sati.data.dataset import SplitDataset
from sati.data.h5format import (
    content_checksum,
    list_splits,
    read_info,
    read_split,
    verify_checksum,
    with_absent,
    write_dataset,
)
from sati.data.synth import generate
from sati.data.tokens import tokenize
from sati.evaluation import Condition, perturb
from sati.ingest.inspection import inspect_dataset
from sati.ingest.prepare import prepare_dataset
from sati.ingest.readers.sdk import read_sdk
from sati.model import SATI
from sati.predictor import SATIPredictor
from sati.pretrained import load_tokenizer
from sati.trainer import fit
from tests.source_files import misa_rows, write_csd


def _tiny(encoder, mode: str, seed: int = 0) -> SATI:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        text_encoder=str(encoder),
        hidden_size=32,
        encoder_feedforward=64,
        fusion_feedforward=64,
        fbp_hidden=8,
        absent_modalities=mode,
    )
    return SATI(cfg, AblationConfig(), 74, 47).eval()


# --------------------------------------------------------------------------------------------
# A MISA-normalized sample of exact zeros is a real sample


def test_a_misa_sample_whose_audio_and_video_are_exact_zeros_is_fused_not_shut(tmp_path, tiny_encoder):
    """MISA z-normalizes each utterance, so a one-word segment's audio and video are exact zeros. The file has
    audio and video, so the sample is present: its streams stay open and its prediction is the `fuse` model's
    (format 1's `skip`, now `zeros`, shut both streams of such a sample)."""
    folder = tmp_path / "misa"
    folder.mkdir()
    for i, name in enumerate(("train", "dev", "test")):
        rows = misa_rows(6, seed=i, video=f"{name}_v")
        if name == "train":
            label, seg = rows[0][1:]
            rows[0] = (
                (np.arange(1), np.zeros((1, 47), np.float32), np.zeros((1, 74), np.float32), ["yes"]),
                label,
                seg,
            )
        (folder / f"{name}.pkl").write_bytes(pickle.dumps(rows))
    out = tmp_path / "misa.h5"
    prepare_dataset("misa", folder, out, log=lambda _: None)
    assert read_info(out).missing_modalities == ()
    train = read_split(out, "train")
    assert train.present.all()  # nothing is absent from a file that has audio and video
    assert not train.audio[0].any() and not train.video[0].any() and train.lengths[0] == 1

    tokens = tokenize(load_tokenizer(str(tiny_encoder)), train.text, 50)
    batch = SplitDataset(train, tokens).collate([0, 1, 2, 3])
    file_model, fuse, zeros = _tiny(tiny_encoder, "file"), _tiny(tiny_encoder, "fuse"), _tiny(tiny_encoder, "zeros")
    fuse.load_state_dict(file_model.state_dict())
    zeros.load_state_dict(file_model.state_dict())
    with torch.no_grad():
        out_file, out_fuse, out_zeros = file_model(batch), fuse(batch), zeros(batch)
    assert out_file.gates[:, 0].abs().sum() > 0  # the zero sample's streams are open
    torch.testing.assert_close(out_file.prediction, out_fuse.prediction, rtol=0, atol=0)
    # format 1's value rule shut that sample (and only it): what the old default did on real data
    assert not out_zeros.gates[:, 0].any()
    assert abs(float(out_zeros.prediction[0] - out_fuse.prediction[0])) > 1e-6
    torch.testing.assert_close(out_zeros.prediction[1:], out_fuse.prediction[1:], rtol=0, atol=0)


def test_a_sample_the_file_marks_absent_has_its_stream_shut_whatever_its_values(tiny_encoder):
    """Presence is read from the batch's mask: a sample marked without audio has its audio stream shut even
    though its audio values are not zero, and the other samples are untouched."""
    arrays = generate("mosi", scale=0.03, seed=0)["train"]
    present = arrays.present.copy()
    present[1, 1] = False
    marked = dataclasses.replace(arrays, present=present)
    tokens = tokenize(load_tokenizer(str(tiny_encoder)), arrays.text, 50)
    model = _tiny(tiny_encoder, "file")
    with torch.no_grad():
        out = model(SplitDataset(marked, tokens).collate([0, 1, 2]))
        clean = model(SplitDataset(arrays, tokens).collate([0, 1, 2]))
    assert marked.audio[1].any() and not out.gates[0, 1].any() and out.gates[1, 1].any()
    torch.testing.assert_close(out.prediction[[0, 2]], clean.prediction[[0, 2]], rtol=0, atol=0)
    assert abs(float(out.prediction[1] - clean.prediction[1])) > 1e-6


# --------------------------------------------------------------------------------------------
# The file format: per-sample presence, format 1 files


def test_presence_round_trips_and_joins_the_checksum_only_where_it_varies(tmp_path):
    splits = generate("mosi", scale=0.02, seed=1)
    plain = tmp_path / "plain.h5"
    checksum = write_dataset(plain, splits, name="t", provenance={})
    with h5py.File(plain, "r") as f:
        assert f.attrs["format_version"] == 2 and f["train/present"].shape == (len(splits["train"]), 3)
    # the same contents without per-sample absence hash as format 1 hashed them (no presence bytes)
    assert checksum == content_checksum({k: dataclasses.replace(v, present=None) for k, v in splits.items()})

    present = splits["valid"].present.copy()
    present[[0, 3], 2] = False  # two samples without video
    marked = {**splits, "valid": dataclasses.replace(splits["valid"], present=present)}
    path = tmp_path / "marked.h5"
    marked_checksum = write_dataset(path, marked, name="t", provenance={})
    assert marked_checksum != checksum and verify_checksum(path) == marked_checksum
    again = read_split(path, "valid")
    assert again.present[:, 2].tolist() == present[:, 2].tolist() and read_info(path).missing_modalities == ()
    with h5py.File(path, "a") as f:  # an edit of the mask alone is caught
        f["valid/present"][1, 2] = 0
    with pytest.raises(ValueError, match="changed after it was written"):
        verify_checksum(path)

    # a modality absent from every sample is the file's missing_modalities
    text_only = tmp_path / "text.h5"
    write_dataset(text_only, splits, name="t", provenance={}, missing_modalities=("audio", "video"))
    assert read_info(text_only).missing_modalities == ("audio", "video")
    assert not read_split(text_only, "test").present[:, 1:].any()


def test_a_format_1_file_loads_with_its_file_level_absence(tmp_path):
    """Format 1 had no per-sample mask: its missing_modalities mean every sample lacks them; its checksum holds."""
    splits = generate("mosi", scale=0.02, seed=2)
    path = tmp_path / "v1.h5"
    written = write_dataset(path, splits, name="t", provenance={}, missing_modalities=("video",))
    with h5py.File(path, "a") as f:  # what format 1 wrote: no present datasets
        f.attrs["format_version"] = 1
        for split in list_splits(path):
            del f[f"{split}/present"]
    test = read_split(path, "test")
    assert test.present[:, 0].all() and test.present[:, 1].all() and not test.present[:, 2].any()
    assert verify_checksum(path) == written


def test_sdk_videos_without_features_are_absent_per_sample(tmp_path):
    """An audio .csd without an entry for one video gives its segments zeros marked absent (the others keep
    their audio); a .csd with none of the videos is refused."""
    folder = tmp_path / "sdk"
    emotions = np.full((2, 6), 0.5)
    labels = {v: (np.c_[[[1.0], [-1.0]], emotions], [[0, 2], [2, 4]]) for v in ("a", "b", "c", "d")}
    write_csd(folder / "CMU_MOSEI_Labels.csd", "All Labels", labels, {"dataset name": "toy"})
    frames = (np.arange(16, dtype=np.float32).reshape(8, 2) + 1, [[k / 2, k / 2 + 0.5] for k in range(8)])
    write_csd(folder / "CMU_MOSEI_COVAREP.csd", "COVAREP", {"a": frames, "c": frames, "d": frames})  # no "b"
    modes = {"a": "train", "b": "train", "c": "valid", "d": "test"}
    (folder / "label.csv").write_text(
        "video_id,clip_id,text,label,mode\n"
        + "".join(f"{v},{i},w{i} x,{label},{mode}\n" for v, mode in modes.items() for i, label in ((1, 1), (2, -1)))
    )
    source = read_sdk(folder, text_csv=folder / "label.csv", audio_dim=2, video_dim=3)
    train = source.splits["train"]
    assert train.ids == ["a_1", "a_2", "b_1", "b_2"]
    assert train.present.tolist() == [[True, True, False]] * 2 + [[True, False, False]] * 2
    assert train.audio[:2].any() and not train.audio[2:].any()
    assert source.missing_modalities == ("video",)
    assert any("audio absent for 2 segments" in note and "b_1" in note for note in source.notes)

    out = tmp_path / "sdk.h5"
    prepared = prepare_dataset("sdk", folder, out, text_csv=folder / "label.csv", audio_dim=2, video_dim=3, log=print)
    assert read_split(out, "train").present.tolist() == train.present.tolist()
    assert read_info(out).missing_modalities == ("video",) and verify_checksum(out) == prepared.checksum
    lines, ok = inspect_dataset(out)
    assert ok and "absent    audio in 2 of 8 samples (marked per sample; the model shuts those streams)" in lines

    write_csd(folder / "CMU_MOSEI_COVAREP.csd", "COVAREP", {"zz": frames})
    with pytest.raises(ValueError, match=r"COVAREP\.csd: no entry for any video of the labels"):
        read_sdk(folder, text_csv=folder / "label.csv", audio_dim=2, video_dim=3)


def test_drop_marks_the_modality_absent_as_a_file_without_it_does():
    arrays = generate("mosi", scale=0.02, seed=3)["test"]
    dropped = perturb(arrays, Condition(drop="audio"))
    assert not dropped.audio.any() and not dropped.present[:, 1].any()
    assert dropped.present[:, [0, 2]].all() and np.array_equal(dropped.video, arrays.video)
    assert arrays.present.all()  # the split itself is not changed
    same = with_absent(arrays, ("audio",))
    assert np.array_equal(same.present, dropped.present) and np.array_equal(same.audio, dropped.audio)


# --------------------------------------------------------------------------------------------
# Old configs and checkpoints keep the behaviour they were trained with


def _as_format_1(cfg_dict: dict, absent: str | None) -> dict:
    """A config as format 1 wrote it: no `format`; model.absent_modalities `absent` (None: the key absent, as
    before it existed)."""
    old = json.loads(json.dumps(cfg_dict))
    old.pop("format")
    old["model"].pop("absent_modalities")
    if absent is not None:
        old["model"]["absent_modalities"] = absent
    return old


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synth_path, tiny_encoder):
    """best.pt of one epoch of a small model (format 2, model.absent_modalities: file)."""
    from tests.conftest import small_config

    cfg = from_dict(
        small_config(tmp_path_factory.mktemp("trained"), synth_path, tiny_encoder, train={"epochs": 1}), "t"
    )
    return fit(cfg).best_checkpoint


@pytest.mark.parametrize("absent, trained_as", [(None, "fuse"), ("skip", "zeros"), ("fuse", "fuse")])
def test_an_old_checkpoint_loads_as_it_was_trained(checkpoint, synth_path, tmp_path, absent, trained_as):
    """A checkpoint whose embedded config is format 1 (what rerun.json and a registered model's checkpoint
    hold too) loads with the absence rule it was trained with: no key was written before the key existed,
    when zeros were fused; `skip` read absence from zero values."""
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["config"]["format"] == 2 and ckpt["config"]["model"]["absent_modalities"] == "file"
    ckpt["config"] = _as_format_1(ckpt["config"], absent)
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    predictor = SATIPredictor(old, device="cpu")
    assert predictor.cfg.model.absent_modalities == trained_as and predictor.cfg.format == 2
    assert load_checkpoint(old)["config"]["model"].get("absent_modalities") == absent

    # a sample whose audio and video are zeros: shut only by format 1's skip
    test = read_split(synth_path, "test")
    zeroed = dataclasses.replace(test, audio=test.audio * 0, video=test.video * 0)
    new = SATIPredictor(checkpoint, device="cpu")
    assert new.cfg.model.absent_modalities == "file"
    scores, fused = predictor.predict_arrays(zeroed), new.predict_arrays(zeroed)
    if trained_as == "fuse":
        np.testing.assert_array_equal(scores, fused)
    else:
        shut = new.predict_arrays(with_absent(test, ("audio", "video")))
        np.testing.assert_allclose(scores, shut, rtol=0, atol=1e-6)
        assert np.abs(scores - fused).max() > 1e-4


def test_a_model_trained_on_a_file_without_audio_serves_rows_without_it(make_config, tmp_path):
    """The checkpoint records the modalities its training file lacked; served rows (which carry no mask) lack
    them too, so the model sees what it was trained on."""
    data = tmp_path / "text.h5"
    write_dataset(data, generate("mosi", scale=0.05, seed=4), name="t", provenance={}, missing_modalities=("audio",))
    result = fit(make_config(data={"path": str(data)}, train={"epochs": 1}))
    predictor = SATIPredictor(result.best_checkpoint, device="cpu")
    assert predictor.missing_modalities == ("audio",)
    from sati.predictor import arrays_to_frame

    valid = read_split(data, "valid")
    frame = arrays_to_frame(valid, limit=5)
    np.testing.assert_allclose(
        predictor.predict_frame(frame)["prediction"], predictor.predict_arrays(valid)[:5], atol=1e-6
    )
    marked_present = dataclasses.replace(valid, present=np.ones_like(valid.present))
    assert np.abs(predictor.predict_arrays(marked_present)[:5] - predictor.predict_arrays(valid)[:5]).max() > 1e-6


def test_a_rerun_record_without_format_keeps_its_config(make_config):
    """rerun.json holds the resolved config of its time: read through from_dict like any other."""
    record_config = _as_format_1(make_config().to_dict(), "skip")
    cfg = from_dict(record_config, "run x (rerun.json)")
    assert cfg.model.absent_modalities == "zeros" and cfg.format == 2
    assert from_dict(cfg.to_dict(), "again") == cfg  # its current form round-trips
