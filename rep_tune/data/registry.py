"""The dataset registry: one entry per scenario dataset (name, class count, probe, loader).

A dataset is a module with ``probe(scenario) -> classes`` (a cheap look at the files, before any
training: ``Scenario.check_reachable``) and ``load(scenario) -> RawDataset``, plus one
``register_dataset`` call here. Probes and loaders are named as ``"module:function"`` and imported
on first use, so validating a scenario (the CLI, the search's planning) imports no loader and no
torch. ``Scenario``, ``rep-tune train --dataset``, the search's head width and ``load_raw`` all read
this table; nothing else lists datasets.

Adding one (e.g. CORe50 in the image-folder layout) is an entry here when an existing loader reads
its files, or a new module plus an entry otherwise; and its tests.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from rep_tune.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """One scenario dataset."""

    name: str
    classes: int | None          # its fixed class count (a local copy may hold fewer); None: read from the files
    probe: str                   # "module:function": scenario -> class count, reading headers/folders only
    load: str                    # "module:function": scenario -> RawDataset
    summary: str = ""

    def call(self, which: str, *args: Any) -> Any:
        """Run the spec's ``probe`` or ``load`` (imported now)."""
        module, _, func = getattr(self, which).partition(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), func)
        return fn(*args)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` (a name registered twice is a programming error)."""
    return DATASETS.add(spec.name, spec, unique=True)


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of ``name``; ValueError listing the registered names."""
    return DATASETS.lookup(name)


def known_classes(name: str) -> int | None:
    """The fixed class count of ``name`` (None for folder datasets and unknown names)."""
    spec = DATASETS.get(name)
    return spec.classes if spec else None


register_dataset(DatasetSpec("fashion-mnist", 10, "rep_tune.data.fashion_mnist:probe", "rep_tune.data.fashion_mnist:load",
                             "Split Fashion-MNIST (IDX files; the embedded backbones' pre-training images held out)"))
register_dataset(DatasetSpec("digits", 10, "rep_tune.data.digits:probe", "rep_tune.data.digits:load",
                             "scikit-learn's bundled 8x8 digits (offline)"))
register_dataset(DatasetSpec("cifar100", 100, "rep_tune.data.cifar100:probe", "rep_tune.data.cifar100:load",
                             "CIFAR-100 (torchvision's python pickles, read through an allow-list)"))
register_dataset(DatasetSpec("imagenet-r", 200, "rep_tune.data.folder:probe", "rep_tune.data.folder:load",
                             "ImageNet-R (one folder per class)"))
register_dataset(DatasetSpec("core50", 50, "rep_tune.data.folder:probe", "rep_tune.data.folder:load",
                             "CORe50 objects (one folder per object class, e.g. o1..o50)"))
register_dataset(DatasetSpec("folder", None, "rep_tune.data.folder:probe", "rep_tune.data.folder:load",
                             "any image folder (one sub-folder per class)"))

__all__ = ["DATASETS", "DatasetSpec", "dataset_names", "get_dataset", "known_classes", "register_dataset"]
