"""The restricted unpickler loads dataset pickles and refuses anything that would run code."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from sati.data.h5format import DataError
from sati.ingest.readers import read_source
from sati.ingest.safe_pickle import UnsafePickleError, load_pickle


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evaluates:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_code_in_a_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(pickle.dumps({"train": {"audio": _RunsCommand(f"touch {marker}")}}))
    with pytest.raises(UnsafePickleError) as err:
        load_pickle(path)
    assert str(path) in str(err.value) and f"'{os.system.__module__}.system'" in str(err.value)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="aligned_50.pkl: refused to load global"):
        read_source("mmsa", path)  # the reader goes through the same door
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the payload is live: plain pickle runs it
    assert marker.exists()


def test_builtins_other_than_containers_are_refused(tmp_path):
    path = tmp_path / "train.pkl"
    path.write_bytes(pickle.dumps([_Evaluates()]))
    with pytest.raises(UnsafePickleError, match=r"train\.pkl: refused to load global 'builtins\.eval'"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_and_containers_load(tmp_path, protocol):
    data = {
        "train": {
            "audio": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "raw_text": np.array(["a b", "c"], dtype=object),
            "id": np.array(["v$_$1", "v$_$2"]),
            "n": np.int64(3),
            "pair": (1.5, [b"x", {"y"}], frozenset({2})),
        }
    }
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_pickle(path)["train"]
    np.testing.assert_array_equal(loaded["audio"], data["train"]["audio"])
    assert loaded["raw_text"].tolist() == ["a b", "c"] and loaded["id"].tolist() == ["v$_$1", "v$_$2"]
    assert loaded["n"] == 3 and loaded["pair"] == (1.5, [b"x", {"y"}], frozenset({2}))


def test_truncated_pickle_is_named(tmp_path):
    path = tmp_path / "dev.pkl"
    path.write_bytes(pickle.dumps([np.zeros((50, 50))])[:300])
    with pytest.raises(DataError, match=r"dev\.pkl: not a readable pickle .*truncated"):
        load_pickle(path)
