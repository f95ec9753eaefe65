"""Scenario: a class-incremental benchmark (dataset, class order, task split, image size)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rep_tune.schema import check, from_dict, read_mapping, to_dict, write_mapping


@dataclass
class Scenario:
    """Which data, split into how many tasks, in which class order, evaluated on how many images.

    ``fashion-mnist`` (the default) is Split Fashion-MNIST: 5 tasks of 2 classes, trained on the
    10,000 training images held out from the embedded backbones' pre-training and tested on the
    official test set (``rep_tune.data.fashion_mnist``). ``digits`` (scikit-learn's bundled
    digits, offline) is the second scenario: transfer to classes the backbones never saw.

    ``eval_per_class`` keeps a fixed, seeded subset of the test set (at most that many images per
    class, the same images for every config and training seed; ``null`` = the whole test set).
    The default, 200 per class (2,000 images), has a binomial standard error of about 1 point at
    75 % accuracy (``rep_tune.data.tasks.sampling_error``); the measurement behind it is in
    benchmarks/results/bench_accuracy_vm.txt.
    """

    dataset: Literal["digits", "fashion-mnist", "cifar100", "imagenet-r", "folder"] = "fashion-mnist"
    n_tasks: int = 5
    class_order_seed: int = 0          # None-free: seed 0 shuffles too; use -1 for natural order
    data_path: str | None = None       # folder of the dataset files (downloaded when allowed and absent)
    download: bool = False             # torchvision download=True where a network exists
    image_size: int | None = None      # None = the backbone's input size
    test_fraction: float = 0.2         # for datasets without an official test split
    max_per_class: int | None = None   # cap training samples per class (fast experiments)
    eval_per_class: int | None = 200   # fixed seeded test subset: at most this many per class; null = all
    seed: int = 0                      # split seed (test_fraction splits and the eval subset)

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
