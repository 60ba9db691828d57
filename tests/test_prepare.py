"""`sati data prepare` / `inspect` end to end: real MOSI text and labels → a file the trainer reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import sati.data.loaders as loaders
from sati.cli import main
from sati.data.h5format import list_tokens, read_info, read_split
from sati.data.tokens import stored_tokens, tokenize, tokenizer_fingerprint
from sati.ingest.readers.label_csv import read_label_csv
from sati.pretrained import load_tokenizer
from sati.trainer import fit
from tests.source_files import write_misa, write_mmsa
from tests.test_readers import MISSING_FROM_CSV, shared_mosi

LABEL_CSV_SHA256 = "74c52aba8884cca3f77962310c41f31d3d6250c4e4b50fd77fd4efe4eb75a521"  # shared/data/README.md


def _mosi() -> Path:
    path = shared_mosi()
    if path is None:
        pytest.skip("real MOSI files absent: expected ../shared/data/mosi beside the repo or $SATI_SHARED_DATA")
    return path


def _prepare(source_format: str, path: Path, out: Path, *options) -> int:
    """``sati data prepare --from source_format path --out out options...``, as a user types it."""
    return main(["data", "prepare", "--from", source_format, str(path), "--out", str(out), *map(str, options)])


@pytest.fixture(scope="module")
def mosi_h5(tmp_path_factory, tiny_encoder) -> Path:
    mosi = _mosi()
    out = tmp_path_factory.mktemp("prepared") / "mosi.h5"
    options = ["--text", mosi / "label.csv", "--folds", "standard", "--drop-missing-text", "--tokenizer", tiny_encoder]
    assert _prepare("sdk", mosi, out, *options) == 0
    return out


def test_prepare_sdk_gives_a_text_only_file(mosi_h5):
    info = read_info(mosi_h5)
    assert info.name == "CMU-MOSI" and info.missing_modalities == ("audio", "video")
    assert (info.audio_dim, info.video_dim) == (74, 47)
    assert info.provenance["format"] == "sdk" and LABEL_CSV_SHA256 in info.provenance["input_sha256"].values()
    rows = read_label_csv(_mosi() / "label.csv")
    sizes = {}
    for split in ("train", "valid", "test"):
        s = read_split(mosi_h5, split)
        sizes[split] = len(s)
        assert not s.audio.any() and not s.video.any() and set(s.lengths) == {1}
        assert all(rows[i].text == t and rows[i].split == split for i, t in zip(s.ids, s.text))
        assert not set(s.ids) & set(MISSING_FROM_CSV)
    assert sizes == {"train": 1281, "valid": 229, "test": 685}


def test_prepare_reports_missing_text(tmp_path, capsys):
    mosi = _mosi()
    out = tmp_path / "mosi.h5"
    assert _prepare("sdk", mosi, out, "--text", mosi / "label.csv", "--folds", "standard") == 2
    err = capsys.readouterr().err
    assert "text missing for 4 of 2199 segments" in err and "--drop-missing-text" in err
    assert all(i in err for i in MISSING_FROM_CSV)
    assert not out.exists()


def test_inspect_prints_counts_and_verifies_the_checksum(mosi_h5, tmp_path, capsys):
    assert main(["data", "inspect", str(mosi_h5)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "missing   audio, video" in lines[4] and "OK (recomputed" in lines[-1]
    start = next(i for i, line in enumerate(lines) if line.startswith("split  samples")) + 1
    assert [line.split()[:2] for line in lines[start : start + 3]] == [
        ["train", "1281"],
        ["valid", "229"],
        ["test", "685"],
    ]
    assert lines[start].split()[-5:] == ["1", "/", "10", "/", "104"]  # words per text in train: 1 / 10 / 104
    start = next(i for i, line in enumerate(lines) if line.startswith("labels, rounded")) + 2
    histogram = [line.split() for line in lines[start : start + 3]]
    assert [sum(map(int, h[1:8])) for h in histogram] == [1281, 229, 685]
    assert out.count("truncated, checksum OK") == 3
    tampered = tmp_path / "tampered.h5"
    shutil.copy(mosi_h5, tampered)
    with h5py.File(tampered, "a") as f:
        f["valid/labels"][0] = -f["valid/labels"][0] + 0.5
    assert main(["data", "inspect", str(tampered)]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["data", "inspect", str(mosi_h5), "--expect-audio-dim", "5"]) == 2
    assert "audio features are 74-d, expected 5-d" in capsys.readouterr().err


def test_prepared_file_trains_without_tokenizing(mosi_h5, make_config, monkeypatch, capsys):
    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the loader tokenized although the file holds matching tokens")

    monkeypatch.setattr(loaders, "tokenize", no_tokenizing)
    cfg = make_config(data={"path": str(mosi_h5)}, train={"epochs": 1, "max_steps_per_epoch": 4})
    result = fit(cfg)
    assert result.best_epoch == 1 and np.isfinite(result.best_metrics["valid/mae"])
    assert "audio and video absent" in capsys.readouterr().err


def test_stored_tokens_equal_load_time_tokens(mosi_h5, tiny_encoder):
    tok = load_tokenizer(str(tiny_encoder))
    fp = tokenizer_fingerprint(tok)
    valid = read_split(mosi_h5, "valid")
    stored = stored_tokens(mosi_h5, "valid", fp, 50)
    fresh = tokenize(tok, valid.text, 50)
    np.testing.assert_array_equal(stored.ids, fresh.ids)
    np.testing.assert_array_equal(stored.lengths, fresh.lengths)
    assert stored.pad_id == fresh.pad_id
    (info,) = list_tokens(mosi_h5, "valid")
    assert info.tokenizer == str(tiny_encoder) and info.truncated > 0  # MOSI has texts over 50 tokens here
    assert info.truncated == int((tokenize(tok, valid.text, 51).lengths > 50).sum())
    assert stored_tokens(mosi_h5, "valid", fp, 64) is None  # cut at 50: not valid for 64
    assert stored_tokens(mosi_h5, "valid", "0" * 16, 50) is None  # another tokenizer


def test_untruncated_tokens_serve_a_larger_budget(tmp_path, tiny_encoder, make_config, monkeypatch):
    out = tmp_path / "misa.h5"
    misa = write_misa(tmp_path / "MOSI")
    assert _prepare("misa", misa, out, "--tokenizer", tiny_encoder, "--max-text-tokens", 20) == 0
    calls = []
    monkeypatch.setattr(loaders, "tokenize", lambda tok, texts, n: calls.append(n) or tokenize(tok, texts, n))
    for budget, tokenized in ((64, []), (20, []), (5, [5, 5])):
        calls.clear()
        cfg = make_config(data={"path": str(out), "max_text_tokens": budget})
        datasets, _ = loaders.load_split_datasets(cfg, ("train", "valid"))
        assert calls == tokenized
        fresh = tokenize(load_tokenizer(str(tiny_encoder)), datasets["train"].arrays.text, budget)
        np.testing.assert_array_equal(datasets["train"].tokens.ids, fresh.ids)


def test_prepare_mmsa_checks_options_and_dims(tmp_path, capsys):
    pkl = write_mmsa(tmp_path / "aligned_50.pkl")
    out = tmp_path / "mmsa.h5"
    assert _prepare("mmsa", pkl, out, "--expect-audio-dim", 5) == 0
    info = read_info(out)
    assert (info.audio_dim, info.video_dim, info.text_feature_dim) == (5, 20, 16)
    assert info.missing_modalities == () and list_tokens(out, "train") == []
    assert _prepare("mmsa", pkl, out, "--expect-audio-dim", 74) == 2
    assert "audio features are 5-d, expected 74-d" in capsys.readouterr().err
    assert _prepare("mmsa", pkl, out, "--text", "label.csv") == 2
    assert "--text applies to --from sdk" in capsys.readouterr().err


def test_prepare_from_label_csv_alone(tmp_path):
    mosi = _mosi()
    out = tmp_path / "csv.h5"
    assert _prepare("csv", mosi / "label.csv", out, "--audio-dim", 2, "--video-dim", 1) == 0
    info = read_info(out)
    assert info.missing_modalities == ("audio", "video") and (info.audio_dim, info.video_dim) == (2, 1)
    assert [len(read_split(out, s)) for s in ("train", "valid", "test")] == [1281, 229, 685]
