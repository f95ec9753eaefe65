"""IDX files (the MNIST / Fashion-MNIST format), plain or gzipped."""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLITS = ("train", "t10k")


def _read(path: Path, n: int = -1) -> bytes:
    """The (decompressed) bytes of an IDX file; a corrupt file raises ValueError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such file") from None
        raise ValueError(f"{path}: cannot read this IDX file: {e}") from None


def _header(path: Path, data: bytes) -> tuple[int, tuple[int, ...]]:
    """(dtype code, shape) from the first bytes of an IDX file."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (expected magic 0x0000<type><ndim>, found {data[:4].hex()})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated (expected {ndim} dimensions, found {len(data) - 4} bytes)")
    return data[2], struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """The shape an IDX file's header declares (reads only the header)."""
    path = Path(path)
    return _header(path, _read(path, 4 + 4 * 255))[1]


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into an array; raises ValueError naming the file on a bad header or size."""
    path = Path(path)
    data = _read(path)
    code, shape = _header(path, data)
    itemsize = np.dtype(_DTYPES[code]).itemsize
    body = len(data) - 4 - 4 * len(shape)
    if body != math.prod(shape) * itemsize:
        raise ValueError(f"{path}: header shape {shape} needs {math.prod(shape)} values, "
                         f"found {body // itemsize}")
    arr = np.frombuffer(data, dtype=_DTYPES[code], offset=4 + 4 * len(shape))
    return arr.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"{root}: no {stem} or {stem}.gz")


def load_idx_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of split 'train' or 't10k' from a folder of IDX files."""
    root = Path(root)
    images = read_idx(_find(root, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: {split} split: expected N images of H x W and N labels, "
                         f"found images {images.shape} and labels {labels.shape}")
    return images, labels


def probe_classes(root: str | Path) -> int:
    """Number of classes in a folder of IDX splits, checking every file is present (labels are read)."""
    root = Path(root)
    classes = 0
    for split in SPLITS:
        shape = idx_shape(_find(root, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_find(root, f"{split}-labels-idx1-ubyte"))
        if len(shape) != 3 or labels.ndim != 1 or shape[0] != len(labels) or not len(labels):
            raise ValueError(f"{root}: {split} split: expected N images of H x W and N labels, "
                             f"found images {shape} and labels {labels.shape}")
        classes = max(classes, int(labels.max()) + 1)
    return classes


def find_fashion_mnist(path: str | Path | None = None) -> Path:
    """The Fashion-MNIST folder: the given path, else $REP_TUNE_FASHION_MNIST, else Debian's package.

    A path that is given must exist: it is never silently replaced by another copy.
    """
    if path:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: Fashion-MNIST folder not found (expected the IDX files "
                                    "train-images-idx3-ubyte[.gz] ... in it)")
        return Path(path)
    for cand in (os.environ.get("REP_TUNE_FASHION_MNIST"), DEBIAN_FASHION_MNIST):
        if cand and Path(cand).is_dir():
            return Path(cand)
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found: pass a folder, set REP_TUNE_FASHION_MNIST, "
        "or install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
