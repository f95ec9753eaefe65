"""Restricted unpickling of data files: plain containers and numpy arrays, nothing that runs code.

``pickle.load`` calls whatever callable a file names (``os.system``, ``builtins.exec``, ...), so a
crafted dataset file executes code when it is read. Data formats that are pickles (torchvision's
``cifar-100-python`` files) are read here instead: ``find_class`` admits only the numpy array
reconstruction those formats need, each behind a guard, and refuses every other global with
``UnsafePickleError`` naming the file and the global. Dicts, lists, tuples, strings, bytes and
numbers need no global and load as usual. Model weights never come through here: they are
safetensors, or ``torch.load(weights_only=True)`` (``rep_tune.checkpoints``).

Nothing is sized by a claim in the file beyond its own length: the file is read whole (a regular
file of at most MAX_PICKLE_BYTES) and its opcodes scanned before unpickling, so a counted string or
frame longer than the bytes left, or a memo index out of sequence (the C unpickler would grow its
memo table to it), is refused before anything is allocated for it; no constructor that takes a
size (``bytearray(n)``) is admitted; numpy's empty initial arrays hold at most MAX_INITIAL_BYTES.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

MAX_INITIAL_ELEMENTS = 1   # numpy pickles start every array empty, (0,), and fill it from bytes
MAX_INITIAL_BYTES = 64     # ... so the array _reconstruct makes holds next to nothing
MAX_ITEMSIZE = 1024        # bytes per array element (CIFAR's are 1; a dtype of gigabytes is an attack)
MAX_PICKLE_BYTES = 2 ** 30   # CIFAR-100's largest file (train) is 155 MB


class UnsafePickleError(ValueError):
    """A pickle names a global that is not plain data: refused, nothing was called."""


class _Refused(pickle.UnpicklingError):
    pass


class _NdarrayType:
    """Stands for ``numpy.ndarray`` inside a pickle: accepted as _reconstruct's argument, not callable."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


def _plain_dtype(dt: Any) -> np.dtype:
    try:
        dt = np.dtype(dt)
    except (TypeError, ValueError) as e:
        raise _Refused(f"numpy dtype {dt!r:.60}: {e}") from None
    if dt.hasobject:
        raise _Refused("numpy arrays of Python objects (dtype object) are not allowed")
    if dt.itemsize > MAX_ITEMSIZE:
        raise _Refused(f"numpy dtype {dt} of {dt.itemsize:,} bytes per element: at most {MAX_ITEMSIZE} are allowed")
    return dt


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise _Refused(f"numpy.dtype({spec!r}): only a dtype code string is allowed")
    return _plain_dtype(np.dtype(spec, align, copy))


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise _Refused(f"numpy _reconstruct of {subtype!r}: only numpy.ndarray is allowed")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape) \
            or math.prod(shape) > MAX_INITIAL_ELEMENTS:
        raise _Refused(f"numpy _reconstruct shape {shape!r}: expected an empty initial shape such as (0,)")
    code = typecode.decode("latin1") if isinstance(typecode, bytes) else typecode
    if not isinstance(code, str):
        raise _Refused(f"numpy _reconstruct typecode {typecode!r}: expected a dtype code")
    dt = _plain_dtype(code)
    if math.prod(shape) * dt.itemsize > MAX_INITIAL_BYTES:
        raise _Refused(f"numpy _reconstruct shape {shape!r} of {dt}: expected an empty initial shape such as (0,)")
    return np.ndarray.__new__(np.ndarray, shape, dt)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise _Refused("numpy _frombuffer: expected bytes")
    if order not in ("C", "F"):
        raise _Refused(f"numpy _frombuffer order {order!r}")
    arr = np.frombuffer(buf, dtype=_plain_dtype(dtype))
    return arr.reshape(shape, order=order)


def _scalar(dtype: Any, data: Any = None) -> Any:
    dt = _plain_dtype(dtype)
    if isinstance(data, str):              # a Python 2 pickle read with encoding="latin1"
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise _Refused(f"numpy scalar of {dt}: expected {dt.itemsize} bytes")
    return np.frombuffer(data, dtype=dt)[0]


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    # how Python 3 pickles bytes at protocol < 3: _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}: only latin1 text is allowed")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    # no bytearray: bytearray(n) allocates n zeroed bytes from a number in the file (a 41-byte file, 4 GB)
    **{(m, n): c for m in ("builtins", "__builtin__") for n, c in (("set", set), ("frozenset", frozenset))},
    ("collections", "OrderedDict"): OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("persistent references are not allowed")


_COUNT_WIDTH = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}


class _Corrupt(ValueError):
    pass


def _scan(raw: bytes) -> None:
    """Walk the opcodes of ``raw`` without building anything; _Corrupt on a claim the bytes cannot back.

    Checked: every opcode is known; every counted argument (strings, bytes, longs, frames) fits in
    the bytes left; every memo index is at most the number of memo entries so far (picklers number
    them 0, 1, 2, ...; a huge index makes the C unpickler allocate a memo table that large); STOP ends
    the stream.
    """
    n, pos, memo = len(raw), 0, 0
    code2op = pickletools.code2op
    while pos < n:
        at = pos
        op = code2op.get(chr(raw[pos]))
        if op is None:
            raise _Corrupt(f"unknown opcode 0x{raw[pos]:02x} at byte {at}")
        pos += 1
        a, value = op.arg, None
        if a is None:
            pass
        elif a.n >= 0:
            if pos + a.n > n:
                raise _Corrupt(f"{op.name} at byte {at}: truncated")
            value = raw[pos:pos + a.n]
            pos += a.n
        elif a.n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if a.name == "stringnl_noescape_pair" else 1):
                end = raw.find(b"\n", pos)
                if end < 0:
                    raise _Corrupt(f"{op.name} at byte {at}: truncated")
                value, pos = raw[pos:end], end + 1
        else:
            width = _COUNT_WIDTH[a.n]
            if pos + width > n:
                raise _Corrupt(f"{op.name} at byte {at}: truncated")
            length = int.from_bytes(raw[pos:pos + width], "little", signed=a.n == pickletools.TAKEN_FROM_ARGUMENT4)
            pos += width
            if not 0 <= length <= n - pos:
                raise _Corrupt(f"{op.name} at byte {at} claims {length:,} bytes; {n - pos:,} remain in the file")
            pos += length
        name = op.name
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            try:
                idx = int(value) if name == "PUT" else int.from_bytes(value, "little")
            except ValueError:
                raise _Corrupt(f"PUT at byte {at}: not a memo index") from None
            if not 0 <= idx <= memo:
                raise _Corrupt(f"{name} at byte {at}: memo index {idx:,} out of sequence (next is {memo})")
            memo = max(memo, idx + 1)
        elif name == "MEMOIZE":
            memo += 1
        elif name == "FRAME" and int.from_bytes(value, "little") > n - pos:
            raise _Corrupt(f"FRAME at byte {at} claims {int.from_bytes(value, 'little'):,} bytes; "
                           f"{n - pos:,} remain in the file")
        elif name == "STOP":
            return
    raise _Corrupt("the stream ends without STOP (truncated)")


def _read(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read this {what}: {e.strerror or type(e).__name__}") from None
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: cannot read this {what}: "
                             f"{'a directory' if stat.S_ISDIR(st.st_mode) else 'not a regular file'}")
        if st.st_size > MAX_PICKLE_BYTES:
            raise ValueError(f"{path}: this {what} holds {st.st_size:,} bytes, more than the "
                             f"{MAX_PICKLE_BYTES:,} read from a pickle")
        try:
            return f.read(MAX_PICKLE_BYTES + 1)
        except OSError as e:
            raise ValueError(f"{path}: cannot read this {what}: {e.strerror or type(e).__name__}") from None


def load(path: str | Path, *, encoding: str = "ASCII", what: str = "data file") -> Any:
    """Unpickle ``path`` admitting only plain containers and numpy arrays of plain dtypes.

    ``encoding`` is pickle's, for Python 2 ``str`` objects (``"latin1"`` for CIFAR's files).
    Raises UnsafePickleError when the file names anything else (nothing is called), ValueError
    naming the file when it is not a readable pickle (or claims more bytes than it holds),
    FileNotFoundError when it is missing.
    """
    path = Path(path)
    raw = _read(path, what)
    try:
        _scan(raw)
    except _Corrupt as e:
        raise ValueError(f"{path}: not a readable pickle ({what}): {e}") from None
    try:
        return _Unpickler(io.BytesIO(raw), encoding=encoding).load()
    except _Refused as e:
        raise UnsafePickleError(f"{path}: refused to unpickle this {what}: {e}; only plain containers and numpy "
                                "arrays of plain dtypes are read from pickles (nothing the file names is called)") from None
    except MemoryError:
        raise ValueError(f"{path}: not a readable pickle ({what}): it needs more memory than is free") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse is a corrupt file, named as such
        raise ValueError(f"{path}: not a readable pickle ({what}): {type(e).__name__}: {str(e)[:200]}") from None
