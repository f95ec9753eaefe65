"""Restricted unpickling of data files: plain containers and numpy arrays, nothing that runs code.

``pickle.load`` calls whatever callable a file names (``os.system``, ``builtins.exec``, ...), so a
crafted dataset file executes code when it is read. Data formats that are pickles (torchvision's
``cifar-100-python`` files) are read here instead: ``find_class`` admits only the numpy array
reconstruction those formats need, each behind a guard, and refuses every other global with
``UnsafePickleError`` naming the file and the global. Dicts, lists, tuples, strings, bytes and
numbers need no global and load as usual. Model weights never come through here: they are
safetensors, or ``torch.load(weights_only=True)`` (``rep_tune.checkpoints``).
"""
from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

MAX_INITIAL_ELEMENTS = 1   # numpy pickles start every array empty, (0,), and fill it from bytes


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
    dt = np.dtype(dt)
    if dt.hasobject:
        raise _Refused("numpy arrays of Python objects (dtype object) are not allowed")
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
    return np.ndarray.__new__(np.ndarray, shape, _plain_dtype(code))


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
    **{(m, n): c for m in ("builtins", "__builtin__") for n, c in
       (("set", set), ("frozenset", frozenset), ("bytearray", bytearray))},
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


def load(path: str | Path, *, encoding: str = "ASCII", what: str = "data file") -> Any:
    """Unpickle ``path`` admitting only plain containers and numpy arrays of plain dtypes.

    ``encoding`` is pickle's, for Python 2 ``str`` objects (``"latin1"`` for CIFAR's files).
    Raises UnsafePickleError when the file names anything else (nothing is called), ValueError
    naming the file when it is not a readable pickle, FileNotFoundError when it is missing.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read this {what}: {e.strerror or type(e).__name__}") from None
    with f:
        try:
            return _Unpickler(f, encoding=encoding).load()
        except _Refused as e:
            raise UnsafePickleError(f"{path}: refused to unpickle this {what}: {e}; only plain containers and numpy "
                                    "arrays are read from pickles (a file that names code to run is not data)") from None
        except Exception as e:  # noqa: BLE001 - any failure to parse is a corrupt file, named as such
            raise ValueError(f"{path}: not a readable pickle ({what}): {type(e).__name__}: {e}") from None
