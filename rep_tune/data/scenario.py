"""Scenario: a class-incremental benchmark (dataset, class order, task split, image size)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rep_tune.schema import check, from_dict, read_mapping, to_dict, write_mapping


@dataclass
class Scenario:
    """Which data, split into how many tasks, in which class order.

    ``digits`` is the embedded offline default (scikit-learn's bundled digits, never seen by
    the embedded backbones, which were pre-trained on Fashion-MNIST).
    """

    dataset: Literal["digits", "fashion-mnist", "cifar100", "imagenet-r", "folder"] = "digits"
    n_tasks: int = 5
    class_order_seed: int = 0          # None-free: seed 0 shuffles too; use -1 for natural order
    data_path: str | None = None       # folder of the dataset files (downloaded when allowed and absent)
    download: bool = False             # torchvision download=True where a network exists
    image_size: int | None = None      # None = the backbone's input size
    test_fraction: float = 0.2         # for datasets without an official test split
    max_per_class: int | None = None   # cap training samples per class (fast experiments)
    seed: int = 0                      # split seed

    def validate(self, source: str | None = None) -> "Scenario":
        check(self.n_tasks >= 1, source, "n_tasks", "int >= 1", self.n_tasks)
        check(0.0 < self.test_fraction < 1.0, source, "test_fraction", "number in (0, 1)", self.test_fraction)
        check(self.max_per_class is None or self.max_per_class >= 1, source, "max_per_class", "int >= 1 or null", self.max_per_class)
        return self

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def load(cls, path: str | Path) -> "Scenario":
        return from_dict(cls, read_mapping(path), source=str(path))

    def save(self, path: str | Path) -> Path:
        return write_mapping(self.to_dict(), path)
