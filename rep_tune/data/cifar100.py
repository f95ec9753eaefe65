"""Split CIFAR-100 from torchvision's ``cifar-100-python`` pickles (train, test, meta).

Read directly (no md5 check, so a local copy or a test fixture loads) with the restricted
unpickler (``rep_tune.safe_pickle``): the files are pickles, and a crafted one must not run code.
Each file's content is checked (keys, array shape and dtype, label range) and an error names the
file. torchvision downloads the archive when it is absent and ``scenario.download`` is true
(download and extract only: torchvision's own dataset class would unpickle without restriction).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from rep_tune import safe_pickle
from rep_tune.data.raw import TEST_ID_OFFSET, RawDataset, RawSplit, default_root
from rep_tune.data.scenario import Scenario

FOLDER = "cifar-100-python"
PIXELS = 3 * 32 * 32
NUM_CLASSES = 100


def _unpickle(path: Path) -> dict:
    d = safe_pickle.load(path, encoding="latin1", what="CIFAR-100 file")
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a CIFAR-100 mapping (data, fine_labels), found {type(d).__name__}")
    return d


def locate(scenario: Scenario) -> Path:
    """The ``cifar-100-python`` folder under data_path (or data_path itself); downloads when allowed."""
    root = Path(scenario.data_path) if scenario.data_path else default_root("cifar100")
    for cand in (root / FOLDER, root):
        if (cand / "train").is_file() and (cand / "test").is_file():
            return cand
    if not scenario.download:
        raise FileNotFoundError(f"{root}: no {FOLDER}/train and {FOLDER}/test (torchvision CIFAR-100 format); "
                                "set scenario.download: true to fetch it")
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive
    download_and_extract_archive(CIFAR100.url, str(root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5)
    return root / FOLDER


def class_names(folder: Path) -> list[str]:
    """``meta``'s fine label names (checked), or "0".."99" without a meta file."""
    meta = folder / "meta"
    if not meta.is_file():
        return [str(i) for i in range(NUM_CLASSES)]
    names = _unpickle(meta).get("fine_label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{meta}: fine_label_names: expected a non-empty list of strings, found {names!r:.80}")
    return names


def _split(path: Path, offset: int, num_classes: int) -> RawSplit:
    d = _unpickle(path)
    data, labels = d.get("data"), d.get("fine_labels")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) == 0:
        raise ValueError(f"{path}: fine_labels: expected a non-empty list of class ids, found {type(labels).__name__}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: fine_labels: expected a flat list of ints, found dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{path}: fine_labels: expected class ids in [0, {num_classes - 1}], "
                         f"found {int(labels.min())}..{int(labels.max())}")
    n = len(labels)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size != n * PIXELS:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: data: expected a uint8 array of {n} x {PIXELS} pixels (one row per label), "
                         f"found {found}")
    images = torch.from_numpy(data.reshape(n, 3, 32, 32).copy())
    return RawSplit(images, labels.astype(np.int64), offset + np.arange(n))


def probe(scenario: Scenario) -> int:
    """Number of classes, after checking the files exist (no download, no unpickling of train/test)."""
    try:
        folder = locate(dataclasses.replace(scenario, download=False))
    except FileNotFoundError:
        if scenario.download:
            return NUM_CLASSES                # fetched on first use
        raise
    return len(class_names(folder))


def load(scenario: Scenario) -> RawDataset:
    folder = locate(scenario)
    names = class_names(folder)
    train = _split(folder / "train", 0, len(names))
    test = _split(folder / "test", TEST_ID_OFFSET, len(names))
    return RawDataset("cifar100", f"cifar100:{folder.resolve()}", train, test, list(names))
