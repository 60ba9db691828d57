"""Load pickles without running their code: only numpy arrays, dtypes and plain containers.

A pickle can name any importable callable (``os.system``, ``builtins.eval``) and have it called
while loading. ``load_pickle`` resolves only the globals listed in ``ALLOWED``: numpy's array,
dtype and scalar reconstruction (old ``numpy.core`` and new ``numpy._core`` names, protocols 2–5)
and builtin containers and scalars. Anything else is refused with ``UnsafePickleError``.

Allowed numpy names are not enough: numpy trusts the arguments and the ``__setstate__`` state a
pickle hands it, and a dtype state whose flags say "no references" for an object dtype turns bytes
of the file into object pointers (a crash, or worse, when the array or scalar is touched). So the
numpy globals resolve to checking wrappers, and the BUILD opcode (``__setstate__``) is intercepted
(hence the pure-Python ``pickle._Unpickler``, whose opcodes can be overridden):

- ``numpy.dtype(spec, align, copy)`` must be what numpy writes (a plain type string, ``copy=True``);
  its state is compared with the state numpy itself writes for that dtype (rebuilt from the spec and,
  for structured, sub-array and datetime dtypes, from the fields, sub-array and unit in the state):
  byte order, sub-array, field names and layout, itemsize, alignment, flags and metadata must agree.
  Differences admitted (pickles written by numpy 1.26 and 2.x under protocols 2–5 were compared):
  version 3 or 4, numpy 1.x's flags written as a signed char (144 as -112), and ``=`` read as the
  native byte order. numpy's state, not the file's, is then applied. Objects inside structured or
  sub-array dtypes are refused.
- A dtype takes exactly one state and an array exactly one (BUILD on anything else is refused);
  arrays, scalars and fields may only use dtypes whose state was checked, so nothing changes after
  it was checked or used.
- ``scalar(dtype, data)``: no object dtype, ``data`` exactly ``itemsize`` bytes (Python 2 pickles,
  read with latin-1, give such buffers as ``str``; they are encoded back, as numpy does).
- ``_reconstruct`` builds only an empty ``numpy.ndarray`` (``numpy.ndarray`` itself is only a marker
  for it, never called); the array's state must carry a checked dtype and, for non-object dtypes,
  exactly ``prod(shape) * itemsize`` bytes. ``_frombuffer`` (protocol 5) likewise.
- Object arrays (MMSA's ``raw_text`` and ``id``) are admitted only as numpy pickles them: a list of
  exactly ``prod(shape)`` already-unpickled (so restricted) objects, stored under numpy's own
  ``dtype('O')``. An object dtype with raw bytes as data, and object scalars, are refused.
- ``_codecs.encode`` only turns a ``str`` into ``bytes`` with latin-1 (how protocol ≤ 2 writes bytes).

A small pickle must not cost a large machine (``sati.ingest.pickle_budget``, caps in ``sati.untrusted``):

- every memo reference (``GET``, ``DUP``) counts the full size of what it refers to, every array its
  declared size, every builtin call its result, against ``PICKLE_ALLOWANCE`` + ``expansion`` × the
  file's size; nesting deeper than ``depth`` is refused before anything hashes it (a tuple nested
  10^6 deep crashes ``hash``) and in the result;
- a container may not change after it was referenced again (so no count goes stale, and no cycles);
- ``bytes()`` / ``bytearray()`` take data, never a size (``bytes(10**9)`` is a gigabyte of zeros);
- an array's own dtype may not be a sub-array dtype, and no axis after the first may be empty (a
  [n, 2^27, 0] feature array stores nothing and declares a length of 2^27);
- no length field may exceed the bytes left in the file.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import math
import pickle
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from sati.data.h5format import DataError
from sati.ingest.pickle_budget import DecodeBudget, declared_bytes
from sati.untrusted import cap_hint, limits
from sati.untrusted import short as _short

_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_BUILTIN_NAMES = {
    "list",
    "dict",
    "tuple",
    "set",
    "frozenset",
    "str",
    "bytes",
    "bytearray",
    "int",
    "float",
    "complex",
    "bool",
}
ALLOWED = (
    _NUMPY
    | {(m, n) for m in ("builtins", "__builtin__") for n in _BUILTIN_NAMES}
    | {
        ("_codecs", "encode"),  # protocol <= 2 writes bytes (array buffers) as _codecs.encode(str, "latin1")
    }
)


class UnsafePickleError(DataError):
    """A pickle names a global outside ``ALLOWED``, or hands numpy arguments or state numpy does not write."""


def _numpy_core(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except (ImportError, AttributeError):  # numpy < 2 without the numpy._core shims
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


_RECONSTRUCT = _numpy_core("multiarray", "_reconstruct")
_SCALAR = _numpy_core("multiarray", "scalar")
_FROMBUFFER = _numpy_core("numeric", "_frombuffer")
_OBJECT = np.dtype(object)
_NATIVE = "<" if sys.byteorder == "little" else ">"
_ALIGNED_STRUCT = 0x80  # NPY_ALIGNED_STRUCT in a dtype's flags: the struct was built with align=True
_STATE_PARTS = ("byteorder", "sub-array", "names", "fields", "itemsize", "alignment", "flags", "metadata")
_HINT = "pickles of numpy data do not look like this (the file is not a dataset pickle, or was tampered with)"


def _is_shape(shape: Any) -> bool:
    return type(shape) is tuple and all(type(n) is int and n >= 0 for n in shape)


def _as_bytes(data: Any) -> Any:
    """Python 2 pickles read with latin-1 give array and scalar buffers as ``str``: numpy encodes them back."""
    return data.encode("latin1") if type(data) is str else data


def _unsigned(flags: int) -> int:
    """numpy 1.x keeps a dtype's flags in a C char and writes 0x80 (aligned struct) as a negative number."""
    return flags & 0xFF if -128 <= flags < 0 else flags


# Opcodes whose handlers are replaced below: references, changes to containers, hashing, BYTEARRAY8.
_GUARDED_OPCODES = (
    "GET",
    "BINGET",
    "LONG_BINGET",
    "DUP",
    "APPEND",
    "APPENDS",
    "SETITEM",
    "SETITEMS",
    "ADDITEMS",
    "DICT",
    "FROZENSET",
    "BYTEARRAY8",
)


class _BoundedFile:
    """The pickle file, refusing a read longer than what is left of it (a length field cannot make
    the unpickler allocate more than the file holds)."""

    def __init__(self, file: BinaryIO, size: int):
        self._file, self.size, self.position = file, size, 0

    def read(self, n: int) -> bytes:
        if n > self.size - self.position:
            raise pickle.UnpicklingError(f"an item of {n} bytes at byte {self.position}, past the end of the file")
        data = self._file.read(n)
        self.position += len(data)
        return data

    def readline(self) -> bytes:
        line = self._file.readline()
        self.position += len(line)
        return line


class _RestrictedUnpickler(pickle._Unpickler):
    """``pickle._Unpickler`` (the pure-Python one: its BUILD opcode can be replaced) with checked numpy globals."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: _BoundedFile, path: Path):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 numpy pickles
        self.path = path
        self.file_size = file.size
        self._budget = DecodeBudget(file.size, self._refuse)
        self._array_cap = limits().array_bytes
        self._aliased: dict[int, Any] = {}  # objects handed out again by the memo or DUP (kept alive)
        self._pending: dict[int, Any] = {}  # dtypes and arrays made here, waiting for their one BUILD
        self._checked: dict[int, np.dtype] = {}  # dtypes whose state was checked and applied
        self._ndarray = self._call_ndarray  # one bound method: the marker _reconstruct is given as its class
        self._numpy = {
            "_reconstruct": self._reconstruct,
            "scalar": self._scalar,
            "_frombuffer": self._frombuffer,
            "ndarray": self._ndarray,
            "dtype": self._dtype,
        }

    def _refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.path}: refused: {what}; {_HINT}")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(
                f"{self.path}: refused to load global '{module}.{name}': this reader admits only numpy "
                "arrays, dtypes and plain containers (the file is not a dataset pickle, or was tampered with)"
            )
        if module.startswith("numpy"):
            return self._numpy[name]
        if module == "_codecs":
            return self._encode
        return functools.partial(self._call_builtin, name)

    def load(self) -> Any:
        result = super().load()
        self._budget.measure(result, remember=False)  # depth and size of all of it
        return result

    # --- references, and what may not change after one -----------------------------------------

    def _handed_out_again(self) -> None:
        """The object just pushed by GET or DUP: count all it holds again, and freeze it."""
        obj = self.stack[-1]
        self._aliased[id(obj)] = obj
        self._budget.spend(self._budget.measure(obj)[1], f"a reference to {_short(obj, 60)}")

    def _unchanged(self, target: Any, op: str) -> None:
        if self._aliased.get(id(target)) is target:
            raise self._refuse(
                f"{op} on {_short(target, 60)} after it was referenced again (pickles of data never do this; "
                "it would change what the references count)"
            )

    def _hashable(self, items: Any) -> None:
        """Keys and set items are hashed: refuse them nested over the depth cap before they are."""
        for item in items:
            self._budget.measure(item)

    def load_get(self):
        super().load_get()
        self._handed_out_again()

    def load_binget(self):
        super().load_binget()
        self._handed_out_again()

    def load_long_binget(self):
        super().load_long_binget()
        self._handed_out_again()

    def load_dup(self):
        super().load_dup()
        self._handed_out_again()

    def load_append(self):
        self._unchanged(self.stack[-2], "APPEND")
        super().load_append()

    def load_appends(self):
        self._unchanged(self.metastack[-1][-1], "APPENDS")
        super().load_appends()

    def load_setitem(self):
        self._unchanged(self.stack[-3], "SETITEM")
        self._hashable([self.stack[-2]])
        super().load_setitem()

    def load_setitems(self):
        self._unchanged(self.metastack[-1][-1], "SETITEMS")
        self._hashable(self.stack[0::2])
        super().load_setitems()

    def load_additems(self):
        self._unchanged(self.metastack[-1][-1], "ADDITEMS")
        self._hashable(self.stack)
        super().load_additems()

    def load_dict(self):
        self._hashable(self.stack[0::2])
        super().load_dict()

    def load_frozenset(self):
        self._hashable(self.stack)
        super().load_frozenset()

    def load_bytearray8(self):
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self.file_size:
            raise self._refuse(f"a bytearray of {size} bytes in a file of {self.file_size}")
        b = bytearray(size)
        self.readinto(b)
        self.append(b)

    for _name in _GUARDED_OPCODES:  # each to its load_<name> above (as pickle._Unpickler names them)
        dispatch[getattr(pickle, _name)[0]] = locals()[f"load_{_name.lower()}"]
    del _name

    # --- the builtin globals ----------------------------------------------------------------------

    def _call_builtin(self, name: str, *args: Any) -> Any:
        """``builtins.<name>(*args)``: bytes and bytearray from data only; the result counted."""
        if name in ("bytes", "bytearray") and args and type(args[0]) not in (str, bytes, bytearray, list, tuple):
            raise self._refuse(
                f"{name}({_short(args[0], 40)}) (a size or other non-data argument: pickles write {name} from data)"
            )
        self._budget.measure(args)
        result = getattr(builtins, name)(*args)
        self._budget.spend(self._budget.measure(result, remember=False)[1], f"{name}(...)")
        return result

    # --- the numpy globals ------------------------------------------------------------------------

    def _call_ndarray(self, *args, **kwargs):
        raise self._refuse("a call of numpy.ndarray (numpy pickles name it only as _reconstruct's class)")

    def _encode(self, obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if type(obj) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise self._refuse(f"_codecs.encode of a {type(obj).__name__} with encoding {_short(encoding)}")
        return obj.encode("latin1")

    def _dtype(self, *args) -> np.dtype:
        if len(args) != 3 or type(args[0]) is not str or args[1] not in (0, 1) or args[2] not in (1, True):
            raise self._refuse(f"numpy.dtype{_short(args)} (numpy writes dtype(type string, align, True))")
        spec, align, _ = args
        fresh = np.dtype(spec, bool(align), True)
        if fresh.fields is not None or fresh.subdtype is not None:
            raise self._refuse(f"dtype spec {_short(spec)} (numpy writes structured and sub-array dtypes as 'V<size>')")
        self._pending[id(fresh)] = fresh
        return fresh

    def _checked_dtype(self, dtype: Any, where: str) -> np.dtype:
        if self._checked.get(id(dtype)) is not dtype:
            raise self._refuse(f"{where} with a dtype whose state was not checked: {_short(dtype)}")
        return dtype

    def _scalar(self, *args) -> Any:
        if len(args) != 2:
            raise self._refuse(f"scalar() with {len(args)} arguments (numpy writes scalar(dtype, bytes))")
        dtype = self._checked_dtype(args[0], "a numpy scalar")
        if dtype.hasobject:
            raise self._refuse(f"a numpy scalar of object dtype {_short(dtype)}")
        data = _as_bytes(args[1])
        if type(data) is not bytes or len(data) != dtype.itemsize:
            size = len(data) if isinstance(data, bytes) else type(data).__name__
            raise self._refuse(f"a numpy scalar of {_short(dtype)} from {size} (not {dtype.itemsize} bytes)")
        return _SCALAR(dtype, data)

    def _reconstruct(self, *args) -> np.ndarray:
        if len(args) != 3 or args[0] is not self._ndarray or args[1] != (0,) or args[2] not in (b"b", "b"):
            raise self._refuse(f"_reconstruct{_short(args)} (numpy writes _reconstruct(numpy.ndarray, (0,), b'b'))")
        array = _RECONSTRUCT(np.ndarray, (0,), b"b")
        self._pending[id(array)] = array
        return array

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
        dtype = self._checked_dtype(dtype, "an array (_frombuffer)")
        if dtype.hasobject:
            raise self._refuse(f"an array of object dtype {_short(dtype)} from a buffer (_frombuffer)")
        if type(buf) not in (bytes, bytearray) or not _is_shape(shape) or order not in ("C", "F", "K"):
            raise self._refuse(f"_frombuffer arguments ({type(buf).__name__}, {_short(shape)}, {_short(order)})")
        if axis_order is not None and (type(axis_order) is not tuple or sorted(axis_order) != list(range(len(shape)))):
            raise self._refuse(f"_frombuffer axis order {_short(axis_order)} for shape {shape}")
        self._new_array(shape, dtype)
        need = math.prod(shape) * dtype.itemsize
        if len(buf) != need:
            raise self._refuse(f"an array of shape {shape} and {_short(dtype)} ({need} bytes) from {len(buf)} bytes")
        if axis_order is None:
            return _FROMBUFFER(buf, dtype, shape, order)
        return _FROMBUFFER(buf, dtype, shape, order, axis_order)

    def _new_array(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """An array about to be made: a dtype of its own (no sub-array), no empty axis after the first,
        a declared size within the caps (counted)."""
        if dtype.subdtype is not None:
            raise self._refuse(
                f"an array whose own dtype is the sub-array dtype {_short(dtype)} (numpy writes such arrays with the "
                "sub-array's axes in their shape)"
            )
        if any(n == 0 for n in shape[1:]):
            raise self._refuse(
                f"an array of shape {shape}: an axis after the first is empty (a zero-size feature dim stores "
                "nothing and declares any length)"
            )
        declared = declared_bytes(shape, dtype.itemsize)
        if declared > self._array_cap:
            raise self._refuse(
                f"an array of shape {shape} and {_short(dtype)}: {declared} bytes, over the cap of {self._array_cap} "
                f"for one array; {cap_hint('array_bytes')}"
            )
        self._budget.spend(declared, f"an array of shape {shape}")

    # --- BUILD: the __setstate__ of the dtypes and arrays made above --------------------------------

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if self._pending.pop(id(inst), None) is not inst:
            raise self._refuse(
                f"a state (BUILD) for {_short(inst, 60)} of type {type(inst).__name__}: only numpy dtypes and "
                "arrays made by this pickle take one, once"
            )
        if isinstance(inst, np.dtype):
            self._build_dtype(inst, state)
            self._checked[id(inst)] = inst
        else:
            self._build_array(inst, state)

    dispatch[pickle.BUILD[0]] = load_build

    def _build_array(self, array: np.ndarray, state: Any) -> None:
        if type(state) is not tuple or len(state) != 5 or state[0] != 1:
            raise self._refuse(f"array state {_short(state)} (numpy writes (1, shape, dtype, is_fortran, data))")
        _, shape, dtype, fortran, data = state
        dtype = self._checked_dtype(dtype, "an array")
        if not _is_shape(shape) or fortran not in (0, 1):
            raise self._refuse(f"array state with shape {_short(shape)} and is_fortran {_short(fortran)}")
        self._unchanged(array, "BUILD")
        self._new_array(shape, dtype)
        n = math.prod(shape)
        if dtype.hasobject:  # only dtype('O') itself: objects inside other dtypes were refused with the dtype
            if type(data) is not list:
                raise self._refuse(f"an array of object dtype {_short(dtype)} whose data is {type(data).__name__}")
            if len(data) != n:
                raise self._refuse(f"an object array of shape {shape} with {len(data)} items")
            array.__setstate__((1, shape, _OBJECT, bool(fortran), list(data)))
            return
        data = _as_bytes(data)
        if type(data) is not bytes:
            raise self._refuse(f"array data of type {type(data).__name__} for {_short(dtype)}")
        if len(data) != n * dtype.itemsize:
            raise self._refuse(
                f"array data of {len(data)} bytes for shape {shape} of {_short(dtype)} ({n * dtype.itemsize} bytes)"
            )
        array.__setstate__((1, shape, dtype, bool(fortran), data))

    def _build_dtype(self, dtype: np.dtype, state: Any) -> None:
        if (
            type(state) is not tuple
            or len(state) not in (8, 9)
            or state[0] not in (3, 4)
            or (state[0] == 4) != (len(state) == 9)
        ):
            raise self._refuse(
                f"dtype state {_short(state)} (numpy writes (3, byteorder, sub-array, names, fields, itemsize, "
                "alignment, flags) or version 4 with metadata)"
            )
        _, order, sub, names, fields, itemsize, alignment, flags, *meta = state
        metadata = meta[0] if meta else None
        if order == "=":
            order = _NATIVE
        if order not in ("<", ">", "|") or type(flags) is not int:
            raise self._refuse(f"dtype state with byteorder {_short(order)} and flags {_short(flags)}")
        flags = _unsigned(flags)
        user_meta, dt_meta = metadata, None
        if dtype.kind in "mM":
            if type(metadata) is not tuple or len(metadata) != 2 or type(metadata[1]) is not tuple:
                raise self._refuse(f"datetime dtype metadata {_short(metadata)} (numpy writes (dict, unit tuple))")
            user_meta, dt_meta = metadata
            if len(dt_meta) != 4 or type(dt_meta[1]) is not int or type(dt_meta[0]) not in (bytes, str):
                raise self._refuse(f"datetime unit {_short(dt_meta)} (numpy writes (unit, count, 1, 1))")
            dt_meta = (_as_bytes(dt_meta[0]), *dt_meta[1:])
            metadata = (user_meta, dt_meta)
        if user_meta is not None and type(user_meta) is not dict:
            raise self._refuse(f"dtype metadata {_short(user_meta)} (numpy writes a dict or None)")

        ref = self._reference_dtype(dtype, order, sub, names, fields, itemsize, flags, dt_meta)
        if user_meta is not None:
            ref = np.dtype(ref, metadata=user_meta)
        if ref.hasobject and (ref.fields is not None or ref.subdtype is not None):
            raise self._refuse(f"an object dtype inside the structured or sub-array dtype {_short(ref)}")
        ref_state = ref.__reduce__()[2]
        ref_meta = ref_state[8] if len(ref_state) == 9 else None
        for part, mine, numpys in zip(
            _STATE_PARTS,
            (order, sub, names, fields, itemsize, alignment, flags, metadata),
            (*ref_state[1:7], _unsigned(ref_state[7]), ref_meta),
        ):
            if type(mine) is not type(numpys) or mine != numpys:
                raise self._refuse(
                    f"dtype state {part} {_short(mine)} differ from numpy's {_short(numpys)} for {_short(ref)}"
                )
        dtype.__setstate__(ref_state)  # numpy's own state: the file's dicts and tuples stay out of the dtype
        if dtype != ref or dtype.__reduce__()[2] != ref_state:
            raise self._refuse(f"dtype state {_short(state)}: it did not give numpy's {_short(ref)}")

    def _reference_dtype(self, dtype, order, sub, names, fields, itemsize, flags, dt_meta) -> np.dtype:
        """The dtype numpy would pickle with this state, built from the constructor arguments and the state."""
        if sub is None and names is None and fields is None:
            ref = dtype
            if dt_meta is not None:
                unit = dt_meta[0].decode("ascii")
                ref = np.dtype(f"{dtype.kind}8[{'' if dt_meta[1] == 1 else dt_meta[1]}{unit}]")
            return ref.newbyteorder(order) if order != "|" and ref.str[0] not in ("|", order) else ref
        if dtype.kind != "V" or dtype.names is not None or itemsize != dtype.itemsize:
            raise self._refuse(
                f"a structured or sub-array dtype state of itemsize {_short(itemsize)} for {_short(dtype)} "
                "(numpy writes them as 'V<itemsize>')"
            )
        if sub is not None:
            if names is not None or fields is not None or type(sub) is not tuple or len(sub) != 2:
                raise self._refuse(f"dtype sub-array {_short(sub)} with names {_short(names)}")
            base = self._checked_dtype(sub[0], "a sub-array dtype")
            if not _is_shape(sub[1]):
                raise self._refuse(f"dtype sub-array shape {_short(sub[1])}")
            return np.dtype((base, sub[1]))
        if type(names) is not tuple or type(fields) is not dict or not all(type(n) is str for n in names):
            raise self._refuse(f"dtype fields {_short(names)}, {_short(fields)}")
        formats, offsets, titles = [], [], []
        for name in names:
            entry = fields.get(name)
            if type(entry) is not tuple or len(entry) not in (2, 3) or type(entry[1]) is not int:
                raise self._refuse(
                    f"dtype field {_short(name)}: {_short(entry)} (numpy writes (dtype, offset[, title]))"
                )
            field = self._checked_dtype(entry[0], f"field {_short(name)} of a structured dtype")
            if field.hasobject:
                raise self._refuse(f"an object dtype in field {_short(name)} of a structured dtype")
            if not 0 <= entry[1] <= itemsize - field.itemsize:
                raise self._refuse(
                    f"dtype field {_short(name)} of {field.itemsize} bytes at offset {entry[1]} in an itemsize of "
                    f"{itemsize}"
                )
            formats.append(field)
            offsets.append(entry[1])
            titles.append(entry[2] if len(entry) == 3 else None)
        spec = {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": itemsize}
        if any(t is not None for t in titles):
            spec["titles"] = titles
        return np.dtype(spec, align=bool(flags & _ALIGNED_STRUCT))


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with the restricted unpickler; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        unpickler = _RestrictedUnpickler(_BoundedFile(f, path.stat().st_size), path)
        try:
            return unpickler.load()
        except DataError:  # UnsafePickleError included
            raise
        except Exception as err:  # the pure-Python unpickler fails with many types (struct.error, IndexError, ...)
            message = str(err) if len(str(err)) <= 200 else str(err)[:197] + "..."
            raise DataError(
                f"{path}: not a readable pickle ({type(err).__name__}: {message}); "
                "is it truncated or of another format?"
            ) from None
