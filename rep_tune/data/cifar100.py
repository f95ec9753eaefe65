"""Split CIFAR-100 from torchvision's ``cifar-100-python`` pickles (train, test, meta).

Read directly (no md5 check, so a local copy or a test fixture loads); torchvision downloads
the archive when it is absent and ``scenario.download`` is true.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from rep_tune.data.raw import TEST_ID_OFFSET, RawDataset, RawSplit, default_root
from rep_tune.data.scenario import Scenario

FOLDER = "cifar-100-python"


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def locate(scenario: Scenario) -> Path:
    """The ``cifar-100-python`` folder under data_path (or data_path itself); downloads when allowed."""
    root = Path(scenario.data_path) if scenario.data_path else default_root("cifar100")
    for cand in (root / FOLDER, root):
        if (cand / "train").is_file() and (cand / "test").is_file():
            return cand
    if not scenario.download:
        raise FileNotFoundError(f"{root}: no {FOLDER}/train and {FOLDER}/test (torchvision CIFAR-100 format); "
                                "set scenario.download: true to fetch it")
    import torchvision
    torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    return root / FOLDER


def _split(d: dict, offset: int) -> RawSplit:
    data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(d["fine_labels"], dtype=np.int64)
    return RawSplit(torch.from_numpy(data.copy()), labels, offset + np.arange(len(labels)))


def load(scenario: Scenario) -> RawDataset:
    folder = locate(scenario)
    meta = folder / "meta"
    names = _unpickle(meta)["fine_label_names"] if meta.is_file() else [str(i) for i in range(100)]
    train, test = _split(_unpickle(folder / "train"), 0), _split(_unpickle(folder / "test"), TEST_ID_OFFSET)
    return RawDataset("cifar100", f"cifar100:{folder.resolve()}", train, test, list(names))
