"""Split Fashion-MNIST from IDX files (Debian's dataset-fashion-mnist, a user folder, or a download).

Rendered exactly like the embedded backbone's pre-training (28x28 padded to 32x32). Note the
embedded backbones were pre-trained on this data: use it to test plumbing, not to claim results.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rep_tune.data.idx import find_fashion_mnist, load_idx_split
from rep_tune.data.raw import TEST_ID_OFFSET, RawDataset, RawSplit, default_root
from rep_tune.data.scenario import Scenario

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def pad_to_32(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> uint8 (N, 1, 32, 32), zero padded by 2 px (as in pre-training)."""
    return F.pad(torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1), (2, 2, 2, 2))


def locate(scenario: Scenario) -> Path:
    """The IDX folder: data_path, $REP_TUNE_FASHION_MNIST or Debian's; else a torchvision download."""
    try:
        return find_fashion_mnist(scenario.data_path)
    except FileNotFoundError:
        if not scenario.download:
            raise
    import torchvision
    root = Path(scenario.data_path) if scenario.data_path else default_root("fashion-mnist")
    torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
    torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


def load(scenario: Scenario) -> RawDataset:
    root = locate(scenario)
    xtr, ytr = load_idx_split(root, "train")
    xte, yte = load_idx_split(root, "t10k")
    train = RawSplit(pad_to_32(xtr), ytr, np.arange(len(ytr)))
    test = RawSplit(pad_to_32(xte), yte, TEST_ID_OFFSET + np.arange(len(yte)))
    return RawDataset("fashion-mnist", f"fashion-mnist:{root.resolve()}", train, test, list(CLASSES))

# ---- the pre-training / continual-learning split of the official training set ----------------
# The embedded backbones are pre-trained on PRETRAIN (50,000 images); the continual benchmark
# trains on the held-out rest (HOLDOUT_PER_CLASS per class = 10,000 images) and tests on the
# official 10,000-image test set. No image the benchmark trains or tests on was seen in
# pre-training: the analogue of ImageNet-21k -> CIFAR-100 in L2P/REP (same kind of classes,
# other images). One definition, used by the scenario and by scripts/train_embedded_backbone.py.
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
