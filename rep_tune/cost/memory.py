"""Peak training memory: resident tensors + activations kept for backward + workspace + overhead.

Matches the runtime's measured quantity (rep_tune.runtime.measure): "peak live tensor bytes" =
parameters and buffers (frozen backbone and surrogate included) + optimizer state + the input
batch + the in-iteration peak of tensors allocated by torch (activations kept for backward,
temporaries, gradients). Allocator caching and Python objects are not counted.
"""
from __future__ import annotations

from rep_tune.cost.counts import Counts

MB = 1024.0 * 1024.0   # MiB, as the runtime reports


def resident_bytes(c: Counts) -> float:
    """Frozen parameters, trainable parameters with their gradients, optimizer state, input batch."""
    s = c.dtype_bytes
    return s * (c.params + 2 * c.trainable + c.optimizer_state) + c.input_bytes


def activation_bytes(c: Counts, expected: bool = False) -> float:
    """Activations kept for backward: every block ALD may run (worst case), or keep-weighted."""
    return c.saved_expected if expected else c.saved_worst


def peak_bytes(c: Counts, overhead_mb: float = 0.0, expected: bool = False) -> float:
    """Predicted peak bytes of one training iteration."""
    return resident_bytes(c) + activation_bytes(c, expected) + c.dtype_bytes * c.transient_elems + overhead_mb * MB
