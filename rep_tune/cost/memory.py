"""Peak training memory: resident tensors + activations kept for backward + workspace + overhead.

Matches the runtime's measured quantity (rep_tune.runtime.measure): "peak live tensor bytes" =
parameters and buffers (frozen backbone and surrogate included) + optimizer state + the input
batch + the in-iteration peak of tensors allocated by torch (activations kept for backward,
temporaries, gradients); on CUDA also cuBLAS's workspaces, which torch takes from the same
caching allocator (``ALLOCATOR_OVERHEAD_MB``): so the CUDA figure is what
``torch.cuda.max_memory_allocated`` reports for the iteration. Allocator caching (reserved but
free segments) and Python objects are not counted. Unit: MiB.

Parameters, gradients and optimizer state are fp32 at every precision (autocast keeps the frozen
weights fp32 and casts per op; prompts, keys and head train in fp32); activations follow
``rep_tune.cost.work.block_saved_bytes`` (compute-dtype copies under autocast included).
"""
from __future__ import annotations

from rep_tune.cost.counts import Counts

MiB = 1024.0 * 1024.0
MB = MiB                 # the name older callers use (the unit has always been MiB)
PARAM_BYTES = 4          # fp32 parameters, gradients and optimizer state


# What torch's CUDA caching allocator hands out besides tensors: cuBLAS/cuBLASLt workspaces, one
# per (handle, stream): the forward thread's and autograd's backward thread's. Measured on an H200
# (torch 2.11, CUDA 13): 65.0 MiB in each of 58 configs (ViT-Ti/B/L, 3 methods, batch 8-32, fp32
# and bf16: benchmarks/results/gpu-nvidia-h200/memory_grid.csv, published_measured.csv), i.e.
# 2 x 32 MiB (torch's Hopper default) + 1 MiB. Other CUDA GPUs and Jetsons: torch's default
# ":4096:2:16:8" = 8.125 MiB per handle, 2 x 8.125 + 1 = 17.25 MiB (derived from the same
# structure, not measured). CPUs: none (oneDNN's scratch is not torch's allocator).
HOPPER = ("h100", "h200", "h800", "gh200")
ALLOCATOR_OVERHEAD_MB = {"hopper": 65.0, "cuda": 17.25, "cpu": 0.0}


def allocator_overhead_mb(profile) -> float:
    """MiB the CUDA allocator holds besides tensors on ``profile``'s device (uncalibrated profiles).

    A calibrated profile measured this itself: its ``calibration.memory_overhead_mb`` (the fitted
    gap between measured and modelled tensors) already holds it, and is used instead.
    """
    if profile.kind not in ("gpu", "jetson"):
        return ALLOCATOR_OVERHEAD_MB["cpu"]
    text = " ".join(str(v) for v in (profile.name, profile.identity.get("model", ""), profile.description or ""))
    return ALLOCATOR_OVERHEAD_MB["hopper" if any(h in text.lower() for h in HOPPER) else "cuda"]


def resident_bytes(c: Counts) -> float:
    """Frozen parameters, trainable parameters with their gradients, optimizer state, input batch."""
    return PARAM_BYTES * (c.params + 2 * c.trainable + c.optimizer_state) + c.input_bytes


def activation_bytes(c: Counts, expected: bool = False) -> float:
    """Activations kept for backward: every block ALD may run (worst case), or keep-weighted."""
    return c.saved_expected if expected else c.saved_worst


def peak_bytes(c: Counts, overhead_mb: float = 0.0, expected: bool = False) -> float:
    """Predicted peak bytes of one training iteration."""
    return resident_bytes(c) + activation_bytes(c, expected) + c.workspace_bytes + overhead_mb * MiB
