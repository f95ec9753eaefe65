"""IDX files (the MNIST / Fashion-MNIST format), plain or gzipped."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into an array; raises ValueError naming the file on a bad header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (expected magic 0x0000<type><ndim>, found {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header shape {shape} needs {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"{root}: no {stem} or {stem}.gz")


def load_idx_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of split 'train' or 't10k' from a folder of IDX files."""
    root = Path(root)
    return read_idx(_find(root, f"{split}-images-idx3-ubyte")), read_idx(_find(root, f"{split}-labels-idx1-ubyte"))


def find_fashion_mnist(path: str | Path | None = None) -> Path:
    """The Fashion-MNIST folder: the given path, $REP_TUNE_FASHION_MNIST, or Debian's package."""
    for cand in (path, os.environ.get("REP_TUNE_FASHION_MNIST"), DEBIAN_FASHION_MNIST):
        if cand and Path(cand).is_dir():
            return Path(cand)
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found: pass a folder, set REP_TUNE_FASHION_MNIST, "
        "or install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
