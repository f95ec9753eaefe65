"""Class-incremental task streams: class order, even split into tasks, model-ready splits.

``build_tasks(scenario, img_size)`` is the one entry point. Labels are renumbered by class
order, so task i holds a contiguous range of labels and ``TaskSet.class_order[label]`` gives the
dataset's own class id back. Every sample keeps a stable id (its index in the dataset's files)
so the per-sample query cache can key on (``TaskSet.key``, id).
Results are cached per process: a search's many trials share one load.

Accuracy is measured on ``TaskSet.eval_size`` test images (``Scenario.eval_per_class``): print
it with its sampling error, ``TaskSet.eval_note(acc)`` / ``sampling_error(acc, n)``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from rep_tune.data.images import FileImages, ImageStore, Rendering, TensorImages
from rep_tune.data.raw import RawDataset, RawSplit
from rep_tune.data.registry import get_dataset
from rep_tune.data.scenario import Scenario

EMBEDDED_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass
class Split:
    """Model-ready images, labels (renumbered by class order) and stable sample ids."""

    images: ImageStore
    labels: torch.Tensor   # int64 (N,)
    ids: torch.Tensor      # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, labels, ids) at the given positions."""
        return self.images.batch(index), self.labels[index], self.ids[index]


@dataclass
class Task:
    """One task of the stream: its classes (renumbered labels) and its train/test splits."""

    task_id: int
    classes: list[int]
    train: Split
    test: Split
    val: Split | None = None   # held out of the training pool (Scenario.val_per_class), never trained on


@dataclass
class TaskSet:
    """The whole stream, with what identifies it (``key``) and how images were rendered."""

    key: str                   # dataset identity + rendering: the query cache's dataset key
    dataset: str
    tasks: list[Task]
    class_order: list[int]     # renumbered label -> dataset class id
    class_names: list[str]     # in renumbered order
    rendering: Rendering
    eval_split: str = "test"   # the split accuracy is measured on (Scenario.eval_split)

    def eval_of(self, task: int) -> Split:
        """The split task ``task``'s accuracy is measured on: its validation or its test split."""
        t = self.tasks[task]
        return t.val if self.eval_split == "val" else t.test

    def size_of(self, split: str, tasks: int | None = None) -> int:
        """Images of ``split`` ('test' or 'val') over the first ``tasks`` tasks (all by default)."""
        return sum(len(getattr(t, split) or ()) for t in self.tasks[:tasks])

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    @property
    def eval_size(self) -> int:
        """Images accuracy is measured on (all tasks, the eval split): the n of its sampling error."""
        return self.size_of(self.eval_split)

    def eval_note(self, acc: float) -> str:
        """``"on 2,000 test images, sampling error ±0.97 points"``: what to print next to a final accuracy."""
        what = "validation" if self.eval_split == "val" else "test"
        return f"on {self.eval_size:,} {what} images, sampling error ±{100 * sampling_error(acc, self.eval_size):.2f} points"


def sampling_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy ``acc`` (fraction) measured on ``n`` images: sqrt(p(1-p)/n).

    The final average accuracy weighs every task's test set equally; with equal-sized task test
    sets (the class-balanced scenarios) it is the accuracy over all ``n`` images, so this is its
    error from the choice of test images alone (training-seed noise comes on top).
    """
    if n <= 0:
        return float("nan")
    p = min(max(float(acc), 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def class_order(num_classes: int, seed: int) -> list[int]:
    """Dataset class ids in stream order: natural for seed -1, else a seeded permutation."""
    if seed == -1:
        return list(range(num_classes))
    return [int(c) for c in np.random.RandomState(seed).permutation(num_classes)]


def split_classes(n_classes: int, n_tasks: int) -> list[list[int]]:
    """Renumbered labels 0..n_classes-1 in n_tasks contiguous, as-even-as-possible groups."""
    if not 1 <= n_tasks <= n_classes:
        raise ValueError(f"scenario n_tasks: expected 1..{n_classes} (the number of classes), found {n_tasks}")
    return [[int(c) for c in g] for g in np.array_split(np.arange(n_classes), n_tasks)]


def load_raw(scenario: Scenario) -> RawDataset:
    """The dataset's registered loader (``rep_tune.data.registry``)."""
    return get_dataset(scenario.dataset).call("load", scenario)


def _cap_per_class(labels: np.ndarray, cap: int | None) -> np.ndarray:
    """Positions keeping the first ``cap`` samples of every class (all when cap is None)."""
    if cap is None:
        return np.arange(len(labels))
    keep, seen = [], {}
    for i, c in enumerate(labels.tolist()):
        if seen.get(c, 0) < cap:
            keep.append(i)
            seen[c] = seen.get(c, 0) + 1
    return np.asarray(keep, dtype=np.int64)


def eval_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a fixed test subset: per class, the first ``per_class`` of a seeded permutation.

    Deterministic for (labels, per_class, seed); a smaller ``per_class`` gives a subset of a
    larger one (the same permutation, cut shorter). All positions when ``per_class`` is None.
    """
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"scenario eval_per_class: expected int >= 1 or null, found {per_class!r}")
    rng = np.random.RandomState(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def validation_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted positions of the validation split of a training pool: per class, the first
    min(``per_class``, half the class) of a seeded permutation (another stream than the test subset's).
    Empty when ``per_class`` is None."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(0)
    rng = np.random.RandomState([int(seed), 0x5EED])
    keep = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        keep.append(rng.permutation(pos)[:min(int(per_class), len(pos) // 2)])
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def _store(images: torch.Tensor | list[str], rendering: Rendering) -> ImageStore:
    return TensorImages(images, rendering) if isinstance(images, torch.Tensor) else FileImages(images, rendering)


def _task_split(raw: RawSplit, new_label: np.ndarray, classes: Sequence[int], rendering: Rendering) -> Split:
    lab = new_label[raw.labels]
    pos = np.flatnonzero(np.isin(lab, classes))
    part = raw.take(pos)
    return Split(_store(part.images, rendering), torch.as_tensor(lab[pos]), torch.as_tensor(part.ids))


def build_tasks(scenario: Scenario, img_size: int, in_chans: int = 3, *,
                mean: Sequence[float] = EMBEDDED_NORM[0], std: Sequence[float] = EMBEDDED_NORM[1],
                cache: bool = True) -> TaskSet:
    """The scenario's task stream, rendered for a backbone of input ``img_size`` and ``in_chans``.

    ``scenario.image_size`` wins over ``img_size`` when set. Cached per process on
    (scenario, size, channels, mean, std) unless ``cache`` is false.
    """
    scenario.validate()
    size = scenario.image_size or img_size
    rendering = Rendering(int(size), int(in_chans), tuple(float(m) for m in mean), tuple(float(s) for s in std))
    key = (json.dumps(scenario.to_dict(), sort_keys=True), rendering)
    if cache and key in _CACHE:
        return _CACHE[key]
    raw = load_raw(scenario)
    order = class_order(raw.num_classes, scenario.class_order_seed)
    new_label = np.empty(raw.num_classes, dtype=np.int64)
    new_label[order] = np.arange(raw.num_classes)
    pool = raw.train.take(_cap_per_class(raw.train.labels, scenario.max_per_class))
    val_pos = validation_subset(pool.labels, scenario.val_per_class, scenario.seed)
    val_raw = pool.take(val_pos) if scenario.val_per_class is not None else None
    train_raw = pool.take(np.setdiff1d(np.arange(len(pool.labels)), val_pos))
    test_raw = raw.test.take(eval_subset(raw.test.labels, scenario.eval_per_class, scenario.seed))
    tasks = [Task(i, group, _task_split(train_raw, new_label, group, rendering),
                  _task_split(test_raw, new_label, group, rendering),
                  _task_split(val_raw, new_label, group, rendering) if val_raw is not None else None)
             for i, group in enumerate(split_classes(raw.num_classes, scenario.n_tasks))]
    ts = TaskSet(f"{raw.key}|{rendering.key()}", raw.name, tasks, order, [raw.class_names[c] for c in order],
                 rendering, scenario.eval_split)
    if cache:
        _CACHE[key] = ts
    return ts


_CACHE: dict[tuple, TaskSet] = {}
