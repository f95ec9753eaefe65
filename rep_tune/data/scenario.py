"""Scenario: a class-incremental benchmark (dataset, class order, task split, image size)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rep_tune.data.registry import DATASETS, dataset_names, known_classes
from rep_tune.schema import Document, SchemaError, check, read_mapping

MAX_SEED = 2 ** 32 - 1       # numpy RandomState and scikit-learn's random_state range
MAX_IMAGE_SIZE = 4096


@dataclass
class Scenario(Document):
    """Which data, split into how many tasks, in which class order, evaluated on how many images.

    ``fashion-mnist`` (the default) is Split Fashion-MNIST: 5 tasks of 2 classes, trained on the
    10,000 training images held out from the embedded backbones' pre-training and tested on the
    official test set (``rep_tune.data.fashion_mnist``). ``digits`` (scikit-learn's bundled
    digits, offline) is the second scenario: transfer to classes the backbones never saw.

    ``val_per_class`` holds a seeded validation split out of the training pool (the search scores
    candidates on it, ``eval_split: val``, and touches the test set only to report its answer).
    ``eval_per_class`` keeps a fixed, seeded subset of the test set (at most that many images per
    class, the same images for every config and training seed; ``null`` = the whole test set).
    The default, 200 per class (2,000 images), has a binomial standard error of about 1 point at
    75 % accuracy (``rep_tune.data.tasks.sampling_error``); the measurement behind it is in
    benchmarks/results/bench_accuracy_vm.txt.
    """

    dataset: str = "fashion-mnist"     # a registered dataset (rep_tune.data.registry)
    n_tasks: int = 5
    class_order_seed: int = 0          # None-free: seed 0 shuffles too; use -1 for natural order
    data_path: str | None = None       # folder of the dataset files (downloaded when allowed and absent)
    download: bool = False             # torchvision download=True where a network exists
    image_size: int | None = None      # None = the backbone's input size
    test_fraction: float = 0.2         # for datasets without an official test split
    max_per_class: int | None = None   # cap training samples per class (fast experiments)
    eval_per_class: int | None = 200   # fixed seeded test subset: at most this many per class; null = all
    seed: int = 0                      # split seed (test_fraction splits, the eval subset, the validation split)
    # validation split: at most this many images per class held out of the continual-learning
    # training pool (seeded by ``seed``, at most half of a class's pool), never trained on; null = none
    val_per_class: int | None = None
    eval_split: Literal["test", "val"] = "test"   # which split the per-task accuracy is measured on

    def validate(self, source: str | None = None) -> "Scenario":
        """Range checks that need no data: SchemaError naming the field (see check_reachable for the data)."""
        check(self.dataset in DATASETS, source, "dataset", f"one of {', '.join(dataset_names())}", self.dataset)
        most = known_classes(self.dataset)
        check(self.n_tasks >= 1 and (most is None or self.n_tasks <= most), source, "n_tasks",
              f"int in [1, {most}] (the classes of {self.dataset})" if most else "int >= 1", self.n_tasks)
        check(self.class_order_seed == -1 or 0 <= self.class_order_seed <= MAX_SEED, source, "class_order_seed",
              f"-1 (natural order) or an int in [0, {MAX_SEED}]", self.class_order_seed)
        check(0 <= self.seed <= MAX_SEED, source, "seed", f"int in [0, {MAX_SEED}]", self.seed)
        check(self.data_path is None or (bool(self.data_path.strip()) and "\x00" not in self.data_path
                                         and len(self.data_path) <= 4096), source, "data_path",
              "a folder path (no NUL byte, at most 4096 characters) or null", self.data_path)
        check(self.image_size is None or 1 <= self.image_size <= MAX_IMAGE_SIZE, source, "image_size",
              f"int in [1, {MAX_IMAGE_SIZE}] or null", self.image_size)
        check(0.0 < self.test_fraction < 1.0, source, "test_fraction", "number in (0, 1)", self.test_fraction)
        check(self.max_per_class is None or self.max_per_class >= 1, source, "max_per_class", "int >= 1 or null", self.max_per_class)
        check(self.eval_per_class is None or self.eval_per_class >= 1, source, "eval_per_class", "int >= 1 or null",
              self.eval_per_class)
        check(self.val_per_class is None or self.val_per_class >= 1, source, "val_per_class", "int >= 1 or null",
              self.val_per_class)
        check(self.eval_split in ("test", "val"), source, "eval_split", "'test' or 'val'", self.eval_split)
        check(self.eval_split == "test" or self.val_per_class is not None, source, "eval_split",
              "'test' (or set val_per_class for 'val')", self.eval_split)
        return self

    def check_reachable(self, source: str | None = None) -> int:
        """Check once, before any training, that the data is there and has enough classes; return the class count.

        Looks at the files only (headers, labels, class folders): a missing or corrupt data path,
        or more tasks than classes, raises SchemaError naming ``source`` (default: the file this
        scenario was loaded from) and the field. A dataset that is absent but may be downloaded
        (``download: true``) passes with its nominal class count.
        """
        source = source or getattr(self, "_source", None)
        self.validate(source)
        try:
            classes = _probe(self)
        except (FileNotFoundError, ValueError) as e:
            raise SchemaError(source, "data_path", f"a readable {self.dataset} dataset ({e})", self.data_path) from None
        if self.data_path and not self.download and not Path(self.data_path).expanduser().exists():
            # a loader that reads no files (digits) must not run with a path it never read recorded as its data
            raise SchemaError(source, "data_path", f"an existing folder (or null: {self.dataset} needs no files)",
                              self.data_path)
        check(self.n_tasks <= classes, source, "n_tasks",
              f"int in [1, {classes}] (the classes of {self.dataset}{' at ' + self.data_path if self.data_path else ''})",
              self.n_tasks)
        return classes

    @classmethod
    def load(cls, path: str | Path) -> "Scenario":
        s = cls.from_dict(read_mapping(path), source=str(path))
        object.__setattr__(s, "_source", str(path))     # named by check_reachable's errors
        return s


def _probe(scenario: Scenario) -> int:
    """The dataset module's cheap look at the files: the number of classes (its registered probe)."""
    return DATASETS[scenario.dataset].call("probe", scenario)
