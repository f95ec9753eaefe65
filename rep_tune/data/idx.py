"""IDX files (the MNIST / Fashion-MNIST format), plain or gzipped."""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from rep_tune.schema import regular_file

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLITS = ("train", "t10k")


MAX_IDX_BYTES = 2 ** 31      # decompressed body of one IDX file (Fashion-MNIST's largest holds 47 MB)
GZIP_MAX_RATIO = 1100        # deflate expands at most ~1032:1; a header claiming more than that lies
MAX_HEADER_BYTES = 4 + 4 * 255
_CHUNK = 2 ** 20


def _read(path: Path, n: int) -> bytearray:
    """At most ``n`` (decompressed) bytes of an IDX file, read in chunks: memory grows with the bytes
    that really arrive, never with a size the file claims. A corrupt file raises ValueError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    buf = bytearray()
    try:
        with opener(path, "rb") as f:
            while len(buf) < n:
                chunk = f.read(min(_CHUNK, n - len(buf)))
                if not chunk:
                    break
                buf += chunk
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such file") from None
        raise ValueError(f"{path}: cannot read this IDX file: {e}") from None
    return buf


def _header(path: Path, data: bytes) -> tuple[int, tuple[int, ...]]:
    """(dtype code, shape) from the first bytes of an IDX file."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (expected magic 0x0000<type><ndim>, found {bytes(data[:4]).hex()})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated (expected {ndim} dimensions, found {len(data) - 4} bytes)")
    return data[2], struct.unpack(f">{ndim}I", bytes(data[4:4 + 4 * ndim]))


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """The shape an IDX file's header declares (reads only the header)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: cannot read this IDX file: not a regular file")
    return _header(path, _read(path, MAX_HEADER_BYTES))[1]


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into an array; raises ValueError naming the file on a bad header or size.

    The size the header declares (dims product x item size) is checked before anything is allocated:
    against MAX_IDX_BYTES, against the file's size (plain: exactly; gzip: what deflate can expand to),
    and the body is read with a bound of that size + 1 byte, so a small file claiming gigabytes (or a
    gzip bomb) is refused after reading at most what its header declared.
    """
    path = Path(path)
    st = regular_file(path, "IDX file")
    size = st.st_size
    code, shape = _header(path, _read(path, MAX_HEADER_BYTES))
    head = 4 + 4 * len(shape)
    itemsize = np.dtype(_DTYPES[code]).itemsize
    need = math.prod(shape) * itemsize
    if need > MAX_IDX_BYTES:
        raise ValueError(f"{path}: header shape {shape} declares {need:,} bytes of values, more than the "
                         f"{MAX_IDX_BYTES:,} an IDX file may hold here")
    gz = path.suffix == ".gz"
    if not gz and size != head + need:
        raise ValueError(f"{path}: header shape {shape} needs {math.prod(shape)} values, "
                         f"found {max(0, size - head) // itemsize}")
    if gz and need > GZIP_MAX_RATIO * size:
        raise ValueError(f"{path}: header shape {shape} declares {need:,} bytes, more than a {size:,}-byte "
                         "gzip file can hold")
    data = _read(path, head + need + 1)
    body = len(data) - head
    if body != need:
        raise ValueError(f"{path}: header shape {shape} needs {math.prod(shape)} values, "
                         f"found {'more' if body > need else body // itemsize}")
    arr = np.frombuffer(data, dtype=_DTYPES[code], offset=head)
    return arr.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
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
