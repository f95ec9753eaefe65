"""Peak training memory: resident tensors + activations kept for backward + workspace + overhead.

Matches the runtime's measured quantity (rep_tune.runtime.measure): "peak live tensor bytes" =
parameters and buffers (frozen backbone and surrogate included) + optimizer state + the input
batch + the in-iteration peak of tensors allocated by torch (activations kept for backward,
temporaries, gradients). Allocator caching and Python objects are not counted. Unit: MiB.

Parameters, gradients and optimizer state are fp32 at every precision (autocast keeps the frozen
weights fp32 and casts per op; prompts, keys and head train in fp32); activations follow
``rep_tune.cost.work.block_saved_bytes`` (compute-dtype copies under autocast included).
"""
from __future__ import annotations

from rep_tune.cost.counts import Counts

MiB = 1024.0 * 1024.0
MB = MiB                 # the name older callers use (the unit has always been MiB)
PARAM_BYTES = 4          # fp32 parameters, gradients and optimizer state


def resident_bytes(c: Counts) -> float:
    """Frozen parameters, trainable parameters with their gradients, optimizer state, input batch."""
    return PARAM_BYTES * (c.params + 2 * c.trainable + c.optimizer_state) + c.input_bytes


def activation_bytes(c: Counts, expected: bool = False) -> float:
    """Activations kept for backward: every block ALD may run (worst case), or keep-weighted."""
    return c.saved_expected if expected else c.saved_worst


def peak_bytes(c: Counts, overhead_mb: float = 0.0, expected: bool = False) -> float:
    """Predicted peak bytes of one training iteration."""
    return resident_bytes(c) + activation_bytes(c, expected) + c.workspace_bytes + overhead_mb * MiB
