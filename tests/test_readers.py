"""Readers of the formats users bring: real MOSI files where present, small written files otherwise."""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from sati.data.h5format import DataError, check_feature_dims
from sati.data.synth import generate
from sati.ingest.checks import check_dataset
from sati.ingest.readers import read_source
from sati.ingest.readers.csd import Csd
from sati.ingest.readers.folds import load_folds
from sati.ingest.readers.label_csv import read_label_csv
from sati.ingest.readers.sdk import MissingTextError, label_segments, read_sdk
from tests.source_files import mmsa_split, write_csd, write_misa, write_mmsa

MISSING_FROM_CSV = ["2WGyTLYerpo_44", "5W7Z1C_fDaE_24", "BioHAh1qJAQ_30", "lXPQBPVc5Cw_30"]


def shared_mosi() -> Path | None:
    """../shared/data/mosi beside the repository, else $SATI_SHARED_DATA (the data or mosi folder)."""
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi"]
    if os.environ.get("SATI_SHARED_DATA"):
        env = Path(os.environ["SATI_SHARED_DATA"])
        candidates += [env / "mosi", env / "data" / "mosi", env]
    return next((p for p in candidates if (p / "CMU_MOSI_Opinion_Labels.csd").is_file()), None)


@pytest.fixture(scope="module")
def mosi() -> Path:
    path = shared_mosi()
    if path is None:
        pytest.skip("real MOSI files absent: expected ../shared/data/mosi beside the repo or $SATI_SHARED_DATA")
    return path


# --- real MOSI files ---------------------------------------------------------------------------


def test_sdk_labels_give_2199_segments_in_the_standard_split(mosi):
    with Csd(mosi / "CMU_MOSI_Opinion_Labels.csd") as csd:
        assert csd.metadata["dataset name"] == "CMU-MOSI"
        segments = label_segments(csd)
    assert len(segments) == 2199 and len({s.id for s in segments}) == 2199
    assert {s.id for s in segments if s.video == "_dI--eQ6qVU"} >= {"_dI--eQ6qVU_1"}
    folds, _ = load_folds("standard")
    split_of = {s.id: folds[s.video] for s in segments}
    assert Counter(split_of.values()) == {"train": 1284, "valid": 229, "test": 686}
    # MFN's label vectors list the same segments per split, in another order.
    for split in ("train", "valid", "test"):
        with h5py.File(mosi / f"y_{split}.h5", "r") as f:
            mfn = np.sort(f["data"][()])
        ours = np.sort([s.label for s in segments if split_of[s.id] == split])
        np.testing.assert_allclose(ours, mfn, atol=1e-4)


def test_sdk_labels_equal_label_csv_on_shared_ids(mosi):
    rows = read_label_csv(mosi / "label.csv")
    assert Counter(r.split for r in rows.values()) == {"train": 1281, "valid": 229, "test": 685}  # 'dev' read as valid
    with Csd(mosi / "CMU_MOSI_Opinion_Labels.csd") as csd:
        segments = label_segments(csd)
    shared = [s for s in segments if s.id in rows]
    assert len(shared) == 2195
    assert max(abs(s.label - rows[s.id].label) for s in shared) < 1e-4
    assert sorted(s.id for s in segments if s.id not in rows) == sorted(MISSING_FROM_CSV)
    folds, _ = load_folds(str(mosi / "cmu_mosi_std_folds.json"))  # the file itself = the bundled copy
    assert folds == load_folds("standard")[0]
    assert all(folds[s.id.rsplit("_", 1)[0]] == rows[s.id].split for s in shared)


def test_missing_text_is_named_and_can_be_dropped(mosi):
    with pytest.raises(MissingTextError) as err:
        read_sdk(mosi, text_csv=mosi / "label.csv", folds="standard")
    message = str(err.value)
    assert "text missing for 4 of 2199 segments" in message and "--drop-missing-text" in message
    assert all(i in message for i in MISSING_FROM_CSV)
    source = read_sdk(
        mosi, text_csv=mosi / "label.csv", folds="standard", audio_dim=6, video_dim=4, drop_missing_text=True
    )
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 1281, "valid": 229, "test": 685}
    assert source.missing_modalities == ("audio", "video")
    train = source.splits["train"]
    assert train.audio.shape == (1281, 1, 6) and train.video.shape == (1281, 1, 4) and not train.audio.any()
    rows = read_label_csv(mosi / "label.csv")
    assert train.text[:3] == [rows[i].text for i in train.ids[:3]]
    check_dataset(source.splits, str(mosi))


# --- SDK folders with feature files (written here) ----------------------------------------------


def _sdk_folder(tmp_path: Path, words: bool = True) -> Path:
    """Videos 'a_b' (2 segments), 'c', 'd'; audio frames every 0.5 s with value [k, 2k]; no video file."""
    folder = tmp_path / ("sdk_words" if words else "sdk")
    emotions = np.full((1, 6), 0.5)
    labels = {
        "a_b": (np.c_[[[1.0], [-2.0]], np.repeat(emotions, 2, 0)], [[0, 2], [2, 4]]),
        "c": (np.c_[[[0.5]], emotions], [[0, 3]]),
        "d": (np.c_[[[-3.0]], emotions], [[0, 1]]),
    }
    write_csd(folder / "CMU_MOSEI_Labels.csd", "All Labels", labels, {"dataset name": "toy"})
    frames = {
        v: (np.array([[k, 2 * k] for k in range(n)], np.float32), [[k / 2, k / 2 + 0.5] for k in range(n)])
        for v, n in (("a_b", 8), ("c", 6), ("d", 2))
    }
    write_csd(folder / "CMU_MOSEI_COVAREP.csd", "COVAREP", frames)
    if words:
        w = {
            "a_b": ([b"hi", b"sp", b"there", b"good", b"movie"], [[0, 0.5], [0.5, 1], [1, 2], [2, 3], [3, 4]]),
            "c": ([b"ok", b"fine"], [[0, 1], [1, 3]]),
            "d": ([b"meh"], [[0, 1]]),
        }
        write_csd(
            folder / "CMU_MOSEI_TimestampedWords.csd",
            "words",
            {v: (np.array(t, dtype=object)[:, None].astype("S"), iv) for v, (t, iv) in w.items()},
        )
    (folder / "folds.json").write_text(json.dumps({"_source": "test", "train": ["a_b"], "dev": ["c"], "test": ["d"]}))
    return folder


def test_sdk_features_align_to_words(tmp_path):
    folder = _sdk_folder(tmp_path)
    source = read_sdk(folder, folds=str(folder / "folds.json"), video_dim=3)
    train = source.splits["train"]
    assert train.ids == ["a_b_1", "a_b_2"]  # video ids with '_' keep it
    assert train.text == ["hi there", "good movie"]  # 'sp' dropped
    np.testing.assert_allclose(train.labels, [1.0, -2.0])  # column 0 of the 7-column labels
    assert train.lengths.tolist() == [2, 2]
    # word [0, 0.5] → frame 0; [1, 2] → frames 2, 3; [2, 3] → 4, 5; [3, 4] → 6, 7
    np.testing.assert_allclose(train.audio[:, :, 0], [[0, 2.5], [4.5, 6.5]])
    np.testing.assert_allclose(train.audio[:, :, 1], [[0, 5], [9, 13]])
    assert train.video.shape == (2, 2, 3) and not train.video.any()
    assert source.missing_modalities == ("video",)
    assert source.splits["valid"].text == ["ok fine"] and source.splits["test"].ids == ["d_1"]
    check_dataset(source.splits, str(folder))


def test_sdk_features_pooled_to_text_length_without_words(tmp_path):
    folder = _sdk_folder(tmp_path, words=False)
    (folder / "label.csv").write_text(
        "video_id,clip_id,text,label,mode\n"
        "a_b,1,one two three,1.0,train\na_b,2,x,-2,train\nc,1,y z,0.5,valid\n"
        "d,1,w,-3,test\n"
    )
    source = read_sdk(folder, text_csv=folder / "label.csv")  # splits from the mode column
    train = source.splits["train"]
    assert train.lengths.tolist() == [3, 1]
    # segment [0, 2] holds frames 0..3; three words → windows {0}, {1}, {2, 3}
    np.testing.assert_allclose(train.audio[0, :, 0], [0, 1, 2.5])
    np.testing.assert_allclose(train.audio[1, :1, 0], [5.5])  # segment [2, 4]: frames 4..7 in one window
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 2, "valid": 1, "test": 1}


def test_sdk_errors_name_file_and_fix(tmp_path):
    folder = _sdk_folder(tmp_path, words=False)
    with pytest.raises(DataError, match="no text: pass --text label.csv"):
        read_sdk(folder, folds=str(folder / "folds.json"))
    (folder / "folds.json").write_text(json.dumps({"train": ["a_b"], "valid": ["c"], "test": []}))
    (folder / "label.csv").write_text("id,text,label\na_b_1,a,1\na_b_2,b,1\nc_1,c,0\nd_1,d,0\n")
    with pytest.raises(DataError, match=r"1 videos of the labels are in no fold \(e\.g\. d\)"):
        read_sdk(folder, text_csv=folder / "label.csv", folds=str(folder / "folds.json"))
    bad = tmp_path / "bad" / "CMU_MOSI_Opinion_Labels.csd"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # an HDF5 signature, then nothing
    with pytest.raises(DataError, match=r"Opinion_Labels\.csd: not a readable HDF5 file .*truncated"):
        read_sdk(bad.parent, folds="standard")
    with pytest.raises(DataError, match="no label .csd"):
        read_sdk(tmp_path / "bad" / "..", folds="standard")


# --- MMSA and MISA pickles (written here) -----------------------------------------------------------


def test_mmsa_aligned(tmp_path):
    path = write_mmsa(tmp_path / "MOSI" / "Processed" / "aligned_50.pkl", valid_key="dev")
    source = read_source("mmsa", path)
    assert list(source.splits) == ["train", "valid", "test"] and source.name.startswith("MOSI")
    with open(path, "rb") as f:
        raw = pickle.load(f)["train"]  # our own file: plain pickle is fine here
    train = source.splits["train"]
    mask_len = raw["text_bert"][:, 1].sum(1)
    assert train.lengths.tolist() == mask_len.tolist() == train.text_lengths.tolist()
    assert train.ids[:2] == ["train_0_1", "train_0_2"]  # "$_$" → "_"
    assert train.text == list(raw["raw_text"])
    assert np.isfinite(train.audio).all() and np.isfinite(train.video).all()
    assert train.audio[0, 0, 0] == 0 and train.video[0, 1, 1] == 0  # -inf and NaN → 0
    np.testing.assert_array_equal(train.audio[0, 2, :3], raw["audio"][0, 2, :3])
    beyond = np.arange(8)[None, :] >= train.lengths[:, None]
    assert not train.audio[beyond].any()
    assert train.text_features.shape == (12, 8, 16)
    np.testing.assert_allclose(train.labels, raw["regression_labels"])
    check_dataset(source.splits, str(path))


def test_mmsa_unaligned_refused_or_pooled(tmp_path):
    data = {
        name: mmsa_split(n, unaligned=True, seed=i)
        for i, (name, n) in enumerate((("train", 6), ("valid", 3), ("test", 3)))
    }
    train_raw = data["train"]
    n0, n1 = train_raw["text_bert"][:2, 1].sum(1)
    train_raw["audio_lengths"][:2] = [2 * n0, 1]  # sample 0: two frames per step; sample 1: fewer frames than steps
    train_raw["vision_lengths"][:2] = [n0, n1]  # one frame per step
    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(
        DataError,
        match=r"unaligned_50\.pkl: 'train' is unaligned \(audio 19 steps, vision 20\).*"
        r"aligned_50\.pkl.*--pool-unaligned",
    ):
        read_source("mmsa", path)
    train = read_source("mmsa", path, pool_unaligned=True).splits["train"]
    assert train.lengths[:2].tolist() == [n0, n1] and train.audio.shape[1] == train.video.shape[1] == 8
    audio = np.nan_to_num(train_raw["audio"][0], neginf=0.0)
    np.testing.assert_allclose(train.audio[0, :n0], (audio[0 : 2 * n0 : 2] + audio[1 : 2 * n0 : 2]) / 2, rtol=1e-5)
    np.testing.assert_allclose(train.video[0, :n0], np.nan_to_num(train_raw["vision"][0, :n0]))
    np.testing.assert_allclose(
        train.audio[1, :n1], np.repeat(np.nan_to_num(train_raw["audio"][1, :1], neginf=0.0), n1, 0)
    )
    assert not train.audio[0, n0:].any()


def test_misa_pickles(tmp_path):
    folder = write_misa(tmp_path / "MOSI")
    source = read_source("misa", folder)
    train = source.splits["train"]
    assert {k: len(v) for k, v in source.splits.items()} == {"train": 10, "valid": 4, "test": 5}
    assert train.ids[:5] == ["train_v0_1", "train_v0_2", "train_v0_3", "train_v0_4", "train_v1_1"]
    with open(folder / "train.pkl", "rb") as f:
        rows = pickle.load(f)
    (_words_ids, visual, _acoustic, words), label, _ = rows[0]
    assert train.text[0] == " ".join(words) and train.lengths[0] == len(words)
    assert train.labels[0] == pytest.approx(float(label[0, 0]))
    assert train.audio.shape[-1] == 74 and train.video.shape[-1] == 47
    assert train.audio[0, 0, 0] == 0  # NaN → 0
    np.testing.assert_allclose(train.video[0, : len(words)], visual)
    (folder / "test.pkl").unlink()
    with pytest.raises(DataError, match=r"split 'test' missing: no test\.pkl"):
        read_source("misa", folder)


# --- checks ------------------------------------------------------------------------------------------


def test_dataset_checks_name_the_problem():
    splits = generate("mosi", scale=0.01)
    check_dataset(splits, "toy")
    with pytest.raises(DataError, match="toy: split 'valid' missing"):
        check_dataset({k: v for k, v in splits.items() if k != "valid"}, "toy")
    bad = generate("mosi", scale=0.01)
    bad["test"].ids[0] = bad["train"].ids[0]
    with pytest.raises(DataError, match=r"1 ids are in more than one split, e\.g\. synthtrain0000_1 \(train, test\)"):
        check_dataset(bad, "toy")
    bad = generate("mosi", scale=0.01)
    bad["valid"].labels[2] = -3.5
    with pytest.raises(DataError, match=r"'valid/labels' must lie in \[-3, 3\]"):
        check_dataset(bad, "toy")
    bad = generate("mosi", scale=0.01)
    bad["train"].video = bad["train"].video[:-1]
    with pytest.raises(DataError, match=r"'train/video' has \d+ rows but 'train/labels' has \d+"):
        check_dataset(bad, "toy")
    bad = generate("mosi", scale=0.01)
    bad["test"].audio = bad["test"].audio[..., :5]
    with pytest.raises(DataError, match="'test/audio' is 5-d but 'train/audio' is 74-d"):
        check_dataset(bad, "toy")
    with pytest.raises(DataError, match="toy: audio features are 74-d, expected 5-d"):
        check_feature_dims("toy", 74, 47, expect_audio=5)
    with pytest.raises(DataError, match=r"model.audio_heads = 2 does not divide the feature dim 5 .* \[1, 5\]"):
        check_feature_dims("toy", 5, 20, audio_heads=2)
