"""Generated data, the dataset file, batching with masks, and clear errors on bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from sati.cli import main
from sati.data.dataset import SplitDataset
from sati.data.h5format import DataError, read_info, read_split, write_dataset
from sati.data.synth import PRESETS, generate
from sati.data.tokens import tokenize
from sati.pretrained import load_tokenizer


def test_synth_cli_writes_a_mosi_sized_file(tmp_path, capsys):
    out = tmp_path / "synth.h5"
    assert main(["data", "synth", "--out", str(out), "--preset", "mosi"]) == 0
    assert "wrote" in capsys.readouterr().out
    info = read_info(out)
    assert (info.audio_dim, info.video_dim) == (74, 47)
    sizes = tuple(len(read_split(out, s)) for s in ("train", "valid", "test"))
    assert sizes == (1284, 229, 686)
    train = read_split(out, "train")
    assert train.labels.min() >= -3 and train.labels.max() <= 3
    assert np.mean(train.labels == 0) > 0.005  # MOSI has zero labels; so must the copy
    assert all(isinstance(t, str) and len(t.split()) == n for t, n in zip(train.text[:50], train.lengths[:50]))


def test_synth_is_seeded_and_checksummed(tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    assert main(["data", "synth", "--out", str(a), "--scale", "0.05"]) == 0
    assert main(["data", "synth", "--out", str(b), "--scale", "0.05"]) == 0
    assert main(["data", "synth", "--out", str(c), "--scale", "0.05", "--seed", "1"]) == 0
    assert read_info(a).checksum == read_info(b).checksum != read_info(c).checksum


def test_mosei_preset_shape():
    splits = generate("mosei", scale=0.01)
    p = PRESETS["mosei"]
    assert splits["train"].video.shape[-1] == 35 and splits["train"].audio.shape[-1] == 74
    assert len(splits["train"]) == round(p.sizes[0] * 0.01)
    assert splits["train"].labels.mean() > 0  # MOSEI leans positive


def _least_squares_r2(x: np.ndarray, y: np.ndarray) -> float:
    x = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return 1 - np.var(y - x @ coef) / np.var(y)


def test_labels_depend_on_every_modality():
    s = generate("mosi", seed=3)["train"]
    steps = np.arange(s.audio.shape[1])[None, :]
    valid = (steps < s.lengths[:, None])[..., None]
    audio_mean = (s.audio * valid).sum(1) / s.lengths[:, None]
    video_mean = (s.video * valid).sum(1) / s.lengths[:, None]
    words = sorted({w for t in s.text for w in t.split()})
    bag = np.array([[t.split().count(w) / len(t.split()) for w in words] for t in s.text])
    r2_text, r2_audio = _least_squares_r2(bag, s.labels), _least_squares_r2(audio_mean, s.labels)
    r2_video = _least_squares_r2(video_mean, s.labels)
    r2_all = _least_squares_r2(np.c_[bag, audio_mean, video_mean], s.labels)
    assert min(r2_text, r2_audio, r2_video) > 0.03, (r2_text, r2_audio, r2_video)
    assert r2_all > max(r2_text, r2_audio, r2_video) + 0.1


def test_collate_pads_and_masks(tiny_encoder):
    s = generate("mosi", scale=0.02)["train"]
    tokens = tokenize(load_tokenizer(str(tiny_encoder)), s.text, 50)
    ds = SplitDataset(s, tokens)
    idx = [0, 1, 2, 3]
    batch = ds.collate(idx)
    t = batch.mask.shape[1]
    assert t == max(max(tokens.lengths[i], s.lengths[i]) for i in idx)
    assert batch.audio.shape == (4, t, 74) and batch.text_ids.shape == (4, t)
    assert torch.equal(batch.av_mask.sum(1), torch.as_tensor(s.lengths[idx], dtype=torch.long))
    assert torch.equal(batch.text_mask.sum(1), torch.as_tensor(tokens.lengths[idx]))
    assert torch.equal(batch.mask, batch.av_mask | batch.text_mask)
    assert float(batch.audio[~batch.av_mask].abs().sum()) == 0.0
    assert bool((batch.text_ids[~batch.text_mask] == tokens.pad_id).all())
    padded = ds.collate(idx, pad_to=t + 5)
    assert padded.mask.shape[1] == t + 5 and torch.equal(padded.mask[:, :t], batch.mask)
    assert batch.ids == [s.ids[i] for i in idx]


def _write(tmp_path, **changes):
    splits = generate("mosi", scale=0.02)
    for key, fn in changes.items():
        split, field = key.split("__")
        setattr(splits[split], field, fn(getattr(splits[split], field)))
    path = tmp_path / "bad.h5"
    write_dataset(path, splits, name="t", provenance={})
    return path


def test_bad_files_get_named_errors(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        read_info(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5 at all")
    with pytest.raises(DataError, match=r"junk\.h5: not a readable HDF5 file"):
        read_info(junk)
    good = _write(tmp_path)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated"):
        read_split(truncated, "train")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="not a SATI dataset"):
        read_info(foreign)


def test_bad_contents_get_named_errors(tmp_path):
    path = _write(tmp_path, valid__labels=lambda y: y * 0 + 3.5)
    with pytest.raises(DataError, match=r"'valid/labels' must lie in \[-3, 3\]"):
        read_split(path, "valid")
    path = _write(tmp_path, train__audio=lambda a: a[:-2])
    with pytest.raises(DataError, match=r"'train/audio' has \d+ rows but 'train/labels' has \d+"):
        read_split(path, "train")
    path = _write(tmp_path, test__ids=lambda ids: [ids[0]] * len(ids))
    with pytest.raises(DataError, match="duplicate ids"):
        read_split(path, "test")
    with h5py.File(path, "a") as f:
        del f["test"]
    with pytest.raises(DataError, match="split 'test' missing"):
        read_split(path, "test")
