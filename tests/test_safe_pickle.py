"""The restricted unpickler loads dataset pickles and refuses anything that would run code."""

from __future__ import annotations

import importlib
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sati.data.h5format import DataError
from sati.ingest.readers import read_source
from sati.ingest.safe_pickle import UnsafePickleError, load_pickle
from tests.source_files import mmsa_split


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


# --- numpy arguments and states numpy never writes --------------------------------------------------
#
# Every pickle below uses only allowed globals. Before the checks, numpy trusted the dtype state's flags
# and sizes: an object dtype whose flags say "no references" turned bytes of the file into object
# pointers, and the process died with SIGSEGV. Each is loaded in a child process, so a crash fails the
# test instead of killing pytest.

ROOT = Path(__file__).resolve().parents[1]


def _numpy_core(module: str, name: str):
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:  # numpy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


_reconstruct = _numpy_core("multiarray", "_reconstruct")
_scalar = _numpy_core("multiarray", "scalar")
_frombuffer = _numpy_core("numeric", "_frombuffer")
_O_NO_REFS = (3, "|", None, None, None, -1, -1, 0)  # dtype('O')'s state with its flags (63) cleared


class _Reduce:
    """Pickles as ``func(*args)`` and, given a state, a BUILD with it: whatever a tampered file could hold."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _dtype(spec: str, state: tuple) -> _Reduce:
    return _Reduce(np.dtype, (spec, False, True), state)


def _array(shape: tuple, dtype, data) -> _Reduce:
    return _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, data))


class _P2:
    """Hand-assembled protocol-2 opcodes (byte strings as SHORT_BINSTRING, as Python 2 wrote them)."""

    @staticmethod
    def glob(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    @staticmethod
    def s(data: bytes) -> bytes:
        return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<I", len(data)) + data

    @staticmethod
    def i(n: int) -> bytes:
        return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)

    @classmethod
    def dtype(cls, spec: bytes, order: bytes, elsize: int, alignment: int, flags: int) -> bytes:
        state = cls.i(3) + cls.s(order) + b"NNN" + cls.i(elsize) + cls.i(alignment) + cls.i(flags)
        return cls.glob("numpy", "dtype") + cls.s(spec) + b"\x89\x88\x87R(" + state + b"tb"  # (spec, False, True)

    @classmethod
    def array(cls, shape: tuple, dtype: bytes, data: bytes) -> bytes:
        head = cls.glob("numpy.core.multiarray", "_reconstruct") + cls.glob("numpy", "ndarray")
        head += cls.i(0) + b"\x85" + cls.s(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
        shape_ops = b"(" + b"".join(cls.i(n) for n in shape) + b"t"
        return head + b"(" + cls.i(1) + shape_ops + dtype + b"\x89" + cls.s(data) + b"tb"

    @staticmethod
    def pickle(*items: bytes) -> bytes:
        return b"\x80\x02](" + b"".join(items) + b"e."  # a list of the items


def _rebuilt_after_use() -> bytes:
    """A V8 dtype checked and used by an array, then given a second state (itemsize 1 MiB): a read past the data."""
    v8 = _P2.dtype(b"V8", b"|", 8, 1, 0) + b"q\x00"  # memo 0 = the dtype
    grown = b"h\x00(" + _P2.i(3) + _P2.s(b"|") + b"NNN" + _P2.i(1 << 20) + _P2.i(1) + _P2.i(0) + b"tb"
    return _P2.pickle(_P2.array((2,), v8, b"A" * 16), grown)


# name: (what is pickled, or the pickle itself; what the refusal must say)
CRAFTED = {
    "scalar, object dtype without refs": (
        lambda: _Reduce(_scalar, (_dtype("O8", _O_NO_REFS), b"\x41" * 8)),
        "dtype state flags 0 differ from numpy's 63 for dtype('O')",
    ),
    "scalar, object dtype": (
        lambda: _Reduce(_scalar, (np.dtype(object), b"\x41" * 8)),
        "a numpy scalar of object dtype dtype('O')",
    ),
    "_reconstruct, object dtype without refs": (
        lambda: _array((2,), _dtype("O8", _O_NO_REFS), b"\x41" * 16),
        "dtype state flags 0 differ from numpy's 63 for dtype('O')",
    ),
    "_reconstruct, object dtype with bytes": (
        lambda: _array((2,), np.dtype(object), b"\x41" * 16),
        "an array of object dtype dtype('O') whose data is bytes",
    ),
    "_reconstruct, object dtype with a short list": (
        lambda: _array((1 << 16,), np.dtype(object), ["a"]),
        "an object array of shape (65536,) with 1 items",
    ),
    "_frombuffer, object dtype without refs": (
        lambda: _Reduce(_frombuffer, (bytearray(b"\x41" * 16), _dtype("O8", _O_NO_REFS), (2,), "C")),
        "dtype state flags 0 differ from numpy's 63 for dtype('O')",
    ),
    "float64 flagged as holding references": (
        lambda: _array((2,), _dtype("f8", (3, "<", None, None, None, -1, -1, 1)), b"\x41" * 16),
        "dtype state flags 1 differ from numpy's 0 for dtype('float64')",
    ),
    "string dtype with a larger itemsize": (
        lambda: _array((1,), _dtype("S5", (3, "|", None, None, None, 64, 1, 0)), b"x" * 64),
        "dtype state itemsize 64 differ from numpy's 5 for dtype('S5')",
    ),
    "field outside the itemsize": (
        lambda: _array(
            (2,), _dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("f8"), 1 << 40)}, 8, 1, 16)), b"\x41" * 16
        ),
        "dtype field 'a' of 8 bytes at offset 1099511627776 in an itemsize of 8",
    ),
    "field missing from the names": (
        lambda: _dtype("V16", (3, "|", None, ("a",), {"a": (np.dtype("f8"), 0), "b": (np.dtype("f8"), 8)}, 16, 1, 16)),
        "dtype state fields",
    ),
    "struct claiming 8-byte alignment": (
        lambda: _dtype(
            "V16", (3, "|", None, ("a", "b"), {"a": (np.dtype("f8"), 0), "b": (np.dtype("f8"), 8)}, 16, 8, 16)
        ),
        "dtype state alignment 8 differ from numpy's 1",
    ),
    "object field in a struct": (
        lambda: _dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype(object), 0)}, 8, 1, 63)),
        "an object dtype in field 'a' of a structured dtype",
    ),
    "object sub-array": (
        lambda: _dtype("V16", (3, "|", (np.dtype(object), (2,)), None, None, 16, 8, 63)),
        "an object dtype inside the structured or sub-array dtype",
    ),
    "dtype given a second state after use": (
        _rebuilt_after_use,
        "a state (BUILD) for dtype('V8')",
    ),
}

_CHILD = """
import sys
from sati.ingest.safe_pickle import UnsafePickleError, load_pickle
for path in sys.argv[1:]:
    try:
        data = load_pickle(path)
    except UnsafePickleError as err:
        print("refused", err, flush=True)
    else:
        print("loaded", repr(data)[:200], flush=True)  # repr touches every element: raw pointers crash here
"""


def _write_crafted(folder: Path, make) -> list[Path]:
    """The case's pickle, or its object under protocols 2, 4, 5 and 2 with numpy 1.x module names."""
    folder.mkdir()
    obj = make()
    if isinstance(obj, bytes):
        files = {"assembled": obj}
    else:
        files = {f"p{p}": pickle.dumps({"train": {"raw_text": obj}}, protocol=p) for p in (2, 4, 5)}
        files["p2-numpy.core"] = files["p2"].replace(b"cnumpy._core.", b"cnumpy.core.")
    for name, data in files.items():
        (folder / f"{name}.pkl").write_bytes(data)
    return [folder / f"{name}.pkl" for name in files]


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_numpy_state_is_refused_without_a_crash(tmp_path, case):
    make, says = CRAFTED[case]
    paths = _write_crafted(tmp_path / "crafted", make)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, paths)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    report = f"exit {child.returncode}\nstdout:\n{child.stdout}\nstderr:\n{child.stderr[-2000:]}"
    assert child.returncode == 0, f"the child died (-11: SIGSEGV): {report}"
    lines = child.stdout.splitlines()
    assert len(lines) == len(paths), report
    for path, line in zip(paths, lines):
        assert line.startswith(f"refused {path}: refused: ") and says in line, report


# raw_text of an MMSA train split of 4 rows: (what is pickled, protocol)
_RAW_TEXT = {
    "scalar": (lambda: _Reduce(_scalar, (_dtype("O8", _O_NO_REFS), b"\x41" * 8)), 4),  # dies while loading
    "_reconstruct": (lambda: _array((4,), _dtype("O8", _O_NO_REFS), b"\x41" * 32), 4),  # when the reader reads it
    "_frombuffer": (lambda: _Reduce(_frombuffer, (bytearray(b"\x41" * 32), _dtype("O8", _O_NO_REFS), (4,), "C")), 5),
}


@pytest.mark.parametrize("route", list(_RAW_TEXT))
def test_sati_data_prepare_refuses_a_crafted_pickle(tmp_path, route):
    make, protocol = _RAW_TEXT[route]
    data = {name: mmsa_split(n, seed=i) for i, (name, n) in enumerate((("train", 4), ("valid", 3), ("test", 3)))}
    data["train"]["raw_text"] = make()
    path, out = tmp_path / "aligned_50.pkl", tmp_path / "x.h5"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    run = subprocess.run(
        [sys.executable, "-m", "sati.cli", "data", "prepare", "--from", "mmsa", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 2, f"exit {run.returncode} (-11: SIGSEGV)\n{run.stdout}\n{run.stderr[-2000:]}"
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors == run.stderr.strip().splitlines(), run.stderr
    assert errors[0].startswith(f"error: {path}: refused: dtype state flags 0 differ from numpy's 63 for dtype('O')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned_50.pkl"]  # no output, no temp file


# --- what numpy writes keeps loading ------------------------------------------------------------------


def _legit_data() -> dict:
    arrays = {t: np.arange(6).astype(t).reshape(3, 2) for t in ("f4", "f8", ">f4", "<i8", ">i2", "u1", "?", "c8")}
    arrays["S"] = np.array([[b"ab", b"c"], [b"", b"xyz"]])
    arrays["U"] = np.array(["héllo", "wörld", ""])
    arrays[">U"] = np.array(["ab", "c"], dtype=">U2")
    arrays["datetime"] = np.array(["2020-01-01", "2021-06-30"], dtype="M8[s]")
    arrays["struct"] = np.array(
        [(1.5, [1, 2], b"a"), (2.5, [3, 4], b"b")], [("a", "<f4"), ("b", ">i8", (2,)), ("c", "S2")]
    )
    arrays["aligned"] = np.zeros(3, np.dtype([("a", "u1"), ("b", "f8")], align=True))
    arrays["nested"] = np.zeros(2, [("p", [("q", "i2"), ("r", "S3")]), ("s", "U2")])
    arrays["titled"] = np.zeros(2, [(("title", "n"), "f4")])
    arrays["sub-array"] = np.zeros(2, ("f4", (2, 3)))
    arrays["fortran"] = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    arrays["strided"] = np.arange(24.0).reshape(2, 3, 4)[:, ::2]
    arrays["transposed"] = np.arange(24.0).reshape(2, 3, 4).transpose(1, 0, 2)
    arrays["empty"] = np.zeros((0, 5), np.float32)
    arrays["0-d"] = np.array(3.5)
    arrays["object"] = np.array(["a b", None, 3, [1]], dtype=object)
    arrays["object fortran"] = np.asfortranarray(np.array([["x", "y"], ["z", "w"]], dtype=object))
    scalars = [np.float64(1.5), np.float32(2), np.int64(-3), np.bool_(True), np.str_("ab"), np.bytes_(b"x")]
    scalars += [np.datetime64("2020-01-01"), np.complex64(1j), arrays["struct"][0]]
    return {
        "arrays": arrays,
        "scalars": scalars,
        "dtypes": [np.dtype(">U3"), arrays["struct"].dtype, np.dtype(object)],
        "nested": {"l": [np.arange(3), {"x": (np.ones(2, bool),)}], "s": {1, 2}, "b": bytearray(b"zz"), "c": 1 + 2j},
    }


def _assert_same(got, want, where="data"):
    assert type(got) is type(want), where
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.dtype.descr == want.dtype.descr and got.shape == want.shape, where
        assert got.flags.f_contiguous == want.flags.f_contiguous, where
        assert got.tolist() == want.tolist() if want.dtype.hasobject else got.tobytes() == want.tobytes(), where
    elif isinstance(want, np.generic):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), where
    elif isinstance(want, np.dtype):
        assert got == want and got.__reduce__() == want.__reduce__(), where
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_what_numpy_writes_loads_unchanged(tmp_path, protocol):
    data = _legit_data()
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    got = load_pickle(path)
    _assert_same(got, pickle.loads(path.read_bytes()))  # numpy's own unpickling (it makes >f4 data native)
    for key, array in data["arrays"].items():
        if array.dtype.hasobject:
            assert got["arrays"][key].tolist() == array.tolist(), key
        else:
            np.testing.assert_array_equal(got["arrays"][key], array, err_msg=key)
    assert [type(x) for x in got["scalars"]] == [type(x) for x in data["scalars"]] and got["scalars"] == data["scalars"]


def test_python2_numpy_pickles_load(tmp_path):
    """Python 2 wrote array data and dtype strings as byte strings; read with latin-1 they arrive as str."""
    f8 = _P2.dtype(b"f8", b"<", -1, -1, 0)
    s3 = _P2.dtype(b"S3", b"|", 3, 1, 0)
    values = np.array([[1.5, -2.0], [3.0, 1e300]])
    scalar = _P2.glob("numpy.core.multiarray", "scalar") + b"(" + f8 + _P2.s(np.float64(0.25).tobytes()) + b"tR"
    path = tmp_path / "train.pkl"
    path.write_bytes(
        _P2.pickle(
            _P2.array((2, 2), f8, values.tobytes()), _P2.array((2,), s3, b"ab\x00\xffcd"), scalar, _P2.s(b"text")
        )
    )
    want = pickle.loads(path.read_bytes(), encoding="latin1")
    got = load_pickle(path)
    _assert_same(got, want)
    np.testing.assert_array_equal(got[0], values)
    assert got[1].tolist() == [b"ab", b"\xffcd"] and got[2] == np.float64(0.25) and got[3] == "text"
