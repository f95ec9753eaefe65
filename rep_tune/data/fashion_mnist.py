"""Split Fashion-MNIST: continual learning on the 10,000 held-out training images, tested on the test set.

The embedded backbones (``vit_*_patch2_28.fmnist``) were pre-trained on the other 50,000
images of the official training set (``holdout_split``). The benchmark trains on the held-out
images and tests on the official 10,000-image test set (or a fixed subset of it:
``Scenario.eval_per_class``), so no image it trains or tests on was seen in pre-training: the
analogue of ImageNet-21k -> CIFAR-100 in L2P/REP (the same kind of classes, other images).

Images stay 28x28 grayscale, the backbones' native input (rendered exactly like
``scripts/train_embedded_backbone.py``: value/255, mean/std 0.5). Sample ids are positions in
the official files (test ids offset by ``TEST_ID_OFFSET``), stable across subsets, so the
per-sample query cache stays valid.

Where the IDX files come from: a given ``Scenario.data_path`` only (the folder itself, or a
torchvision download under it; never another copy). Without one, in order: ``$REP_TUNE_FASHION_MNIST``,
Debian's package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist), a previous
torchvision download under ``$REP_TUNE_DATA`` (``make data`` puts it there), or a torchvision
download now when ``Scenario.download`` is true. ``python -m rep_tune.data.fashion_mnist``
checks (``--check``) or fetches (``--download``) the files: ``make data`` runs it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from rep_tune.data.idx import DEBIAN_FASHION_MNIST, load_idx_split
from rep_tune.data.raw import TEST_ID_OFFSET, RawDataset, RawSplit, default_root
from rep_tune.data.scenario import Scenario

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
FILES = [f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
HOW_TO_GET = (
    "Fashion-MNIST IDX files not found ({where}). Get them one of two ways: install Debian's package "
    "(as root: apt-get install -y dataset-fashion-mnist; files in " + str(DEBIAN_FASHION_MNIST) + "), "
    "or let torchvision download them where a network exists (make data, "
    "python -m rep_tune.data.fashion_mnist --download, or rep-tune train --download). "
    "A folder of your own: set REP_TUNE_FASHION_MNIST or pass --data-path.")

# ---- the pre-training / continual-learning split of the official training set ----------------
# The embedded backbones are pre-trained on the first part (50,000 images); the continual
# benchmark trains on the held-out rest (HOLDOUT_PER_CLASS per class = 10,000 images) and tests
# on the official 10,000-image test set. One definition, used by the scenario and by
# scripts/train_embedded_backbone.py.
HOLDOUT_PER_CLASS = 1000
HOLDOUT_SEED = 2025


def holdout_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pretrain positions, held-out positions) of the official training set, sorted.

    Per class, a seeded permutation (``HOLDOUT_SEED``) picks ``HOLDOUT_PER_CLASS`` images for the
    continual benchmark; the rest are for pre-training. Deterministic on any machine.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(HOLDOUT_SEED)
    held = [rng.permutation(np.flatnonzero(labels == c))[:HOLDOUT_PER_CLASS] for c in np.unique(labels)]
    held_out = np.sort(np.concatenate(held))
    pretrain = np.setdiff1d(np.arange(len(labels)), held_out)
    return pretrain, held_out


def as_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> uint8 (N, 1, 28, 28): the stored form (rendering resizes if a backbone needs)."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1)


def download_root(data_path: str | None = None) -> Path:
    """Where torchvision's download goes (and is looked for): ``<data_path or $REP_TUNE_DATA/fashion-mnist>``."""
    return Path(data_path) if data_path else default_root("fashion-mnist")


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in FILES)


def candidates(data_path: str | None = None) -> list[Path]:
    """Folders looked in, in order (see the module doc). A given ``data_path`` is the only place looked
    (itself, or torchvision's download under it): another copy never stands in for it silently."""
    if data_path:
        return [Path(data_path), download_root(data_path) / "FashionMNIST" / "raw"]
    out = []
    if os.environ.get("REP_TUNE_FASHION_MNIST"):
        out.append(Path(os.environ["REP_TUNE_FASHION_MNIST"]))
    return out + [DEBIAN_FASHION_MNIST, download_root(data_path) / "FashionMNIST" / "raw"]


def find(data_path: str | None = None) -> Path | None:
    """The first folder holding all four IDX files (plain or .gz), else None. Never downloads."""
    return next((c for c in candidates(data_path) if _complete(c)), None)


def download(data_path: str | None = None) -> Path:
    """torchvision's download into ``download_root(data_path)``; returns the IDX folder."""
    import torchvision
    root = download_root(data_path)
    for train in (True, False):
        torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def locate(scenario: Scenario) -> Path:
    """The IDX folder for the scenario; downloads when ``scenario.download``; else an error naming both ways."""
    found = find(scenario.data_path)
    if found is not None:
        return found
    where = ", ".join(str(c) for c in candidates(scenario.data_path))
    if not scenario.download:
        raise FileNotFoundError(HOW_TO_GET.format(where=f"looked in {where}"))
    try:
        return download(scenario.data_path)
    except Exception as e:                      # no network, no torchvision: say both ways
        raise FileNotFoundError(HOW_TO_GET.format(where=f"looked in {where}; download failed: {e}")) from None


def probe(scenario: Scenario) -> int:
    """Classes in the IDX labels found in the loader's own search order; absent files pass with the
    nominal 10 when ``download`` is allowed, else raise naming where it looked."""
    import dataclasses

    from rep_tune.data.idx import probe_classes
    from rep_tune.data.registry import known_classes
    found = find(scenario.data_path)
    if found is None:
        if scenario.download:
            return known_classes("fashion-mnist")
        locate(dataclasses.replace(scenario, download=False))        # raises, naming where it looked
    return probe_classes(found)


def load(scenario: Scenario) -> RawDataset:
    """Train = the held-out 10,000 of the official training set; test = the official test set."""
    root = locate(scenario)
    xtr, ytr = load_idx_split(root, "train")
    xte, yte = load_idx_split(root, "t10k")
    _, held = holdout_split(ytr)
    train = RawSplit(as_images(xtr[held]), ytr[held], held)
    test = RawSplit(as_images(xte), yte, TEST_ID_OFFSET + np.arange(len(yte)))
    key = f"fashion-mnist:{root.resolve()}:heldout-{HOLDOUT_PER_CLASS}-{HOLDOUT_SEED}"
    return RawDataset("fashion-mnist", key, train, test, list(CLASSES))


def main(argv: list[str] | None = None) -> int:
    """``--check``: exit 0 when the files are present (prints where), 1 with how to get them, else.
    ``--download``: fetch them with torchvision unless present."""
    p = argparse.ArgumentParser(prog="python -m rep_tune.data.fashion_mnist", description=main.__doc__)
    p.add_argument("--check", action="store_true", help="only say where the files are")
    p.add_argument("--download", action="store_true", help="torchvision download when absent")
    p.add_argument("--data-path", help="folder to look in / download to")
    a = p.parse_args(argv)
    found = find(a.data_path)
    if found is None and a.download and not a.check:
        try:
            found = download(a.data_path)
        except Exception as e:
            print(HOW_TO_GET.format(where=f"download failed: {e}"), file=sys.stderr)
            return 1
    if found is None:
        where = ", ".join(str(c) for c in candidates(a.data_path))
        print(HOW_TO_GET.format(where=f"looked in {where}"), file=sys.stderr)
        return 1
    print(f"Fashion-MNIST: {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
