"""Split Digits: scikit-learn's bundled 8x8 digits, rendered like the embedded backbone's Fashion-MNIST.

8x8 values 0..16 -> [0, 1] -> bilinear upscale to 28x28, the same canvas (and, after
normalisation with mean/std 0.5, the same [-1, 1] range) as scripts/train_embedded_backbone.py
``to_tensor``. Offline (``rep-tune[digits]`` installs scikit-learn), no download, classes the
backbones never saw: the transfer scenario, beside the default Split Fashion-MNIST.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rep_tune.data.raw import RawDataset, RawSplit, stratified_split
from rep_tune.data.scenario import Scenario


def render_digits(images: np.ndarray) -> torch.Tensor:
    """float (N, 8, 8) in 0..16 -> float (N, 1, 28, 28) in [0, 1]."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).div(16.0).unsqueeze(1)
    return F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


NUM_CLASSES = 10


def probe(scenario: Scenario) -> int:
    """Number of classes (the data ships with scikit-learn: always reachable)."""
    return NUM_CLASSES


def load(scenario: Scenario) -> RawDataset:
    """All 1797 digits split train/test by ``test_fraction``, stratified with ``scenario.seed``."""
    from rep_tune.extras import require
    d = require("digits", "sklearn.datasets").load_digits()
    images, labels = render_digits(d.images), np.asarray(d.target, dtype=np.int64)
    ids = np.arange(len(labels))
    tr, te = stratified_split(labels, scenario.test_fraction, scenario.seed)
    full = RawSplit(images, labels, ids)
    return RawDataset("digits", "digits:sklearn", full.take(tr), full.take(te), [str(i) for i in range(10)])
