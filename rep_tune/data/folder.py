"""ImageNet-R or any ImageFolder: ``train/`` and ``test/`` class folders, or one folder split by test_fraction.

Files are listed with torchvision's ImageFolder (classes = sorted sub-folder names) and decoded
per batch, so a 30,000-image ImageNet-R needs no RAM for pixels.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rep_tune.data.raw import RawDataset, RawSplit, stratified_split
from rep_tune.data.scenario import Scenario


def _list(root: Path) -> tuple[list[str], np.ndarray, list[str]]:
    from torchvision.datasets import ImageFolder
    ds = ImageFolder(str(root))
    return [p for p, _ in ds.samples], np.asarray([c for _, c in ds.samples], dtype=np.int64), list(ds.classes)


def _root(scenario: Scenario) -> Path:
    if not scenario.data_path:
        raise FileNotFoundError(f"scenario dataset {scenario.dataset!r} needs data_path: a folder of class "
                                "sub-folders, or with train/ and test/ sub-folders")
    root = Path(scenario.data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found (scenario data_path)")
    return root


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())   # as torchvision.find_classes


def probe(scenario: Scenario) -> int:
    """Number of classes (class sub-folders), after checking the folder layout; images are not listed."""
    root = _root(scenario)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    classes = _class_dirs(root / "train" if split else root)
    if split and _class_dirs(root / "test") != classes:
        raise ValueError(f"{root}: train/ and test/ have different class folders")
    if not classes:
        raise FileNotFoundError(f"{root}: no class sub-folders (expected <class>/<image> files, "
                                "or train/<class>/ and test/<class>/)")
    return len(classes)


def load(scenario: Scenario) -> RawDataset:
    root = _root(scenario)
    if (root / "train").is_dir() and (root / "test").is_dir():
        trp, trl, classes = _list(root / "train")
        tep, tel, test_classes = _list(root / "test")
        if test_classes != classes:
            raise ValueError(f"{root}: train/ and test/ have different class folders "
                             f"({len(classes)} vs {len(test_classes)})")
        train = RawSplit(trp, trl, np.arange(len(trp)))
        test = RawSplit(tep, tel, len(trp) + np.arange(len(tep)))
    else:
        paths, labels, classes = _list(root)
        full = RawSplit(paths, labels, np.arange(len(paths)))
        tr, te = stratified_split(labels, scenario.test_fraction, scenario.seed)
        train, test = full.take(tr), full.take(te)
    return RawDataset(scenario.dataset, f"{scenario.dataset}:{root.resolve()}", train, test, classes)
