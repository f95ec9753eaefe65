"""The work of one timed calibration run (``rep_tune.device.CalibrationRun``): its block shape,
numerics, and forward / backward ``Work``, by the same ``rep_tune.cost.work`` arithmetic that
prices configs. The fit (``rep_tune.cost.calibrate``) and the residual table
(``rep_tune.cost.residual``) both read runs through here, so neither imports the other.
"""
from __future__ import annotations

from rep_tune.cost.work import (BlockShape, Numerics, Work, block_backward, block_forward, block_saved_bytes,
                                block_workspace_bytes, merge_work)

LAUNCHES_BACKWARD_START = 4   # the run's loss (sum), ones_like seed, expand, autograd start


def run_shape(run) -> BlockShape:
    """The block shape of a calibration run (plain tokens: no merging, no prefix)."""
    M = int(run.embed_dim * run.mlp_ratio)
    return BlockShape(run.batch, run.tokens, run.tokens, run.tokens, run.embed_dim, run.num_heads, M, M)


def run_numerics(run) -> Numerics:
    """How a calibration run computed: an fp32 block under autocast at ``dtype`` (as training runs;
    ``run.autocast``), or the whole block converted to ``dtype`` (the profiler's runs today)."""
    dtype = run.dtype or "fp32"
    return Numerics.of(dtype) if getattr(run, "autocast", False) else Numerics.pure(dtype)


def run_work(run) -> tuple[Work, Work]:
    """(forward, backward) work of all the blocks of one calibration run."""
    s, n = run_shape(run), run_numerics(run)
    return run.blocks * block_forward(s, n, atom_metric=False), run.blocks * block_backward(s, n)


def run_saved_bytes(run) -> float:
    """Bytes the memory model expects a calibration run to keep (all blocks, plain tokens) + workspace."""
    s, n = run_shape(run), run_numerics(run)
    return run.blocks * block_saved_bytes(s, n) + block_workspace_bytes(s, n)


def run_passes(run) -> tuple[Work, Work]:
    """(forward, forward + backward) work of a run, as its two timings measure them (the backward
    pass starts with the run's loss and autograd seed: ``LAUNCHES_BACKWARD_START``)."""
    f, b = run_work(run)
    return f, f + b + Work(launches=LAUNCHES_BACKWARD_START)


def merge_run_passes(run) -> tuple[Work, Work]:
    """(forward, forward + backward) work of a timed merge (``rep_tune.device.MergeRun``): every token
    eligible, ``merges`` pairs merged, by the ``merge_work`` that prices a config's merges; the
    backward starts with the run's loss and autograd seed (``LAUNCHES_BACKWARD_START``)."""
    D = run.embed_dim
    s = BlockShape(run.batch, run.tokens, run.tokens - run.merges, run.tokens, D, 1, 4 * D, D)
    n = Numerics.of(run.dtype or "fp32")
    return (merge_work(s, run.tokens, n, backward=False),
            merge_work(s, run.tokens, n, backward=True) + Work(launches=LAUNCHES_BACKWARD_START))


__all__ = ["LAUNCHES_BACKWARD_START", "merge_run_passes", "run_numerics", "run_passes", "run_saved_bytes",
           "run_shape", "run_work"]
