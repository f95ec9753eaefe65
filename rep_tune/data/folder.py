"""ImageNet-R or any ImageFolder: ``train/`` and ``test/`` class folders, or one folder split by test_fraction.

Files are listed as torchvision's ImageFolder lists them (classes = sorted sub-folder names, images
by extension in sorted folder and file order) and decoded per batch, so a 30,000-image ImageNet-R
needs no RAM for pixels. The walk follows a symlinked folder once (folders are tracked by
(st_dev, st_ino), so a symlink loop ends) and keeps only regular files: a FIFO, socket or device
named ``x.jpg``, or a dangling link, is skipped rather than opened (opening a FIFO would hang).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rep_tune.data.raw import RawDataset, RawSplit, stratified_split
from rep_tune.data.scenario import Scenario


IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")   # torchvision's
MAX_FOLDERS = 1_000_000     # folders walked under one root (a runaway tree, not a dataset, beyond this)


def _images(class_dir: str, budget: list[int], root_key: tuple[int, int] | None = None) -> list[str]:
    """Image files under ``class_dir`` in torchvision's order (sorted folders, then sorted names).

    Symlinked folders are followed, each real folder once (``(st_dev, st_ino)``): no loop, however
    the links point; a link up to the dataset root (``root_key``) is not followed. Only regular
    files (after following a link) with an image extension are kept.
    """
    found: list[tuple[str, list[str]]] = []
    seen: set[tuple[int, int]] = {root_key} if root_key else set()
    stack = [class_dir]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:                     # unreadable, vanished, a link loop (ELOOP): as os.walk, skipped
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"{class_dir}: more than {MAX_FOLDERS:,} folders under the dataset root")
        files = []
        for e in entries:
            try:
                if e.is_dir():              # follows a link; `seen` stops a loop
                    stack.append(e.path)
                elif e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file():   # S_ISREG: no FIFO, device, socket
                    files.append(e.name)
            except OSError:
                continue
        found.append((folder, files))
    return [os.path.join(root, name) for root, files in sorted(found) for name in sorted(files)]


def _list(root: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(image paths, class indices, class names) of an ImageFolder-style tree."""
    classes = _class_dirs(root)
    if not classes:
        raise FileNotFoundError(f"{root}: no class sub-folders (expected <class>/<image> files)")
    paths: list[str] = []
    labels: list[int] = []
    budget = [MAX_FOLDERS]
    empty = []
    st = os.stat(root)
    for i, name in enumerate(classes):
        found = _images(os.path.join(root, name), budget, (st.st_dev, st.st_ino))
        if not found:
            empty.append(name)
        paths += found
        labels += [i] * len(found)
    if empty:
        raise FileNotFoundError(f"{root}: no image files ({', '.join(IMG_EXTENSIONS)}) for the classes "
                                f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}")
    return paths, np.asarray(labels, dtype=np.int64), classes


def _root(scenario: Scenario) -> Path:
    if not scenario.data_path:
        raise FileNotFoundError(f"scenario dataset {scenario.dataset!r} needs data_path: a folder of class "
                                "sub-folders, or with train/ and test/ sub-folders")
    root = Path(scenario.data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found (scenario data_path)")
    return root


def _class_dirs(folder: Path) -> list[str]:
    def is_dir(e: os.DirEntry) -> bool:
        try:
            return e.is_dir()
        except OSError:
            return False
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if is_dir(e))   # as torchvision.find_classes
    except OSError as e:
        raise FileNotFoundError(f"{folder}: cannot list this folder: {e.strerror or e}") from None


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
