"""RawDataset: what every dataset loader returns, before class order and task split."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TEST_ID_OFFSET = 1 << 32   # sample ids of an official test split: offset + index in the test file


@dataclass
class RawSplit:
    """Images (tensor (N, C, H, W) uint8/float in [0, 1], or a list of file paths), labels and stable ids."""

    images: torch.Tensor | list[str]
    labels: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.ids = np.asarray(self.ids, dtype=np.int64)
        if not (len(self.images) == len(self.labels) == len(self.ids)):
            raise ValueError(f"split sizes differ: {len(self.images)} images, {len(self.labels)} labels, "
                             f"{len(self.ids)} ids")

    def take(self, index: np.ndarray) -> "RawSplit":
        index = np.asarray(index, dtype=np.int64)
        imgs = self.images[torch.as_tensor(index)] if isinstance(self.images, torch.Tensor) \
            else [self.images[int(i)] for i in index]
        return RawSplit(imgs, self.labels[index], self.ids[index])


@dataclass
class RawDataset:
    """A dataset with its train/test splits, class names and a stable identity (``key``)."""

    name: str
    key: str                 # dataset + resolved location: part of the query-cache key
    train: RawSplit
    test: RawSplit
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test positions, stratified by label, reproducible for a seed.

    ``ceil(test_fraction * N)`` test samples in all (scikit-learn's count), shared across classes
    in proportion to their sizes (the remainder to the classes with the largest fractional
    share); within a class a seeded permutation picks them. Sorted positions.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    n_test = int(np.ceil(test_fraction * len(labels)))
    share = test_fraction * sizes
    take = np.floor(share).astype(int)
    for i in np.argsort(-(share - take), kind="stable")[: n_test - int(take.sum())]:
        take[i] += 1
    test = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    te = np.sort(np.concatenate(test)).astype(np.int64) if test else np.empty(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), te), te


def default_root(name: str) -> Path:
    """Where downloads go when the scenario names no data_path: $REP_TUNE_DATA or ~/.cache/rep-tune/data."""
    import os
    return Path(os.environ.get("REP_TUNE_DATA", Path.home() / ".cache" / "rep-tune" / "data")) / name
