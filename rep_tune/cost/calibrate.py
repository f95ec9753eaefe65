"""Fit a device's efficiency factors and overheads from timed ViT-block runs (CalibrationRun).

The runs are what ``rep-tune profile`` records (``rep_tune.profiler.probe.calibration_run``):
``blocks`` frozen timm Blocks at the run's dtype (converted, or fp32 under autocast when the run
says ``autocast``), timed forward (no grad) and forward + backward to the input. Each run's work is ``rep_tune.cost.work``'s block arithmetic, the same
functions that price configs, so the fitted coefficients are the ones ``predict`` uses:

    ms = blocks * (mm / (peak * e_mm) + att / (peak * e_att) + bytes / (bw * e_ew) + launches * launch_ms) + c0

fitted by non-negative least squares on relative error (each row divided by its measurement).
The blocks' size-dependent residual of that fit is kept as a table (``rep_tune.cost.residual``).

The fixed cost per iteration is measured, not fitted: ``calibration.iterations`` are timed REP
training iterations with every block dropped; ``overhead_ms`` is the median of what the model's
counts of those iterations (embedding, selection, head, loss, clipping, optimizer) leave
unexplained (``fixed_cost``), so ``predict`` adds it once per iteration.
Memory: the run's peak above the activations and workspace the memory model counts is the
framework overhead (median over runs).
"""
from __future__ import annotations

import copy
import statistics

import numpy as np

from rep_tune.cost.latency import bandwidth, peak_flops
from rep_tune.cost.memory import MiB
from rep_tune.cost.runs import run_passes, run_saved_bytes
from rep_tune.cost.work import Work

MAX_EFFICIENCY = 1e3     # a class the fit finds free gets this (its time is then negligible)


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        from scipy.optimize import nnls
        return nnls(A, b)[0]
    except ImportError:   # pragma: no cover - scipy ships with scikit-learn
        x = np.linalg.lstsq(A, b, rcond=None)[0]
        return np.clip(x, 0.0, None)


def _row(w: Work, pm: float, pb: float) -> list[float]:
    return [w.matmul_flops * pm, w.attention_flops * pm, w.elementwise_bytes * pb, w.launches, 1.0]


def design(runs, peak: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows [mm ms, att ms, bytes ms, launches, 1] at efficiency 1, and measured ms."""
    rows, ys = [], []
    pm, pb = 1e3 / peak, 1e3 / bw
    for run in runs:
        f, fb = run_passes(run)
        if run.fwd_ms > 0:
            rows.append(_row(f, pm, pb))
            ys.append(run.fwd_ms)
        if run.fwd_bwd_ms > 0:
            rows.append(_row(fb, pm, pb))
            ys.append(run.fwd_bwd_ms)
    return np.asarray(rows, dtype=float), np.asarray(ys, dtype=float)


def iteration_config(it, dtype: str | None = None):
    """The RepConfig an ``IterationRun`` timed: the paper preset of its method on its backbone, at its
    batch and dtype, the selection query cached (not computed in the timed iterations)."""
    from rep_tune.config import preset
    return preset("paper", it.method, it.backbone).replace(**{
        "training.batch_size": it.batch, "training.precision": dtype or it.dtype, "selection.cache": True,
        "backbone.pretrained": False, "selection.pretrained": False})


def fixed_cost(profile) -> list[float]:
    """Per ``calibration.iterations`` entry: measured ms minus the model's no-block iteration (no
    overhead): what the counts of the work outside the blocks miss."""
    from rep_tune.cost.model import predict
    bare = copy.deepcopy(profile)
    bare.calibration.overhead_ms = 0.0
    gaps = []
    for it in profile.calibration.iterations:
        cfg = iteration_config(it)
        depth = cfg.backbone.arch.depth
        c = predict(cfg, bare, keep=(0.0,) * depth)
        gaps.append(it.ms - c.extras["latency_ms_cached"])
    return gaps


def fit(profile):
    """Return a copy of ``profile`` whose calibration holds fitted efficiency, overheads and fit error.

    ``calibration.efficiency`` gets matmul, attention, elementwise (fractions of the spec peaks at
    the calibration's dtype) and ``launch_ms`` the time per kernel launch. Raises ValueError
    without timed runs.
    """
    out = copy.deepcopy(profile)
    cal = out.calibration
    runs = [r for r in (cal.runs if cal else []) if r.fwd_ms > 0 or r.fwd_bwd_ms > 0]
    if not runs:
        raise ValueError(f"profile {profile.name}: calibration.runs: expected timed runs, found none")
    peak = peak_flops(out, cal.dtype or out.dtype)
    bw = bandwidth(out)
    A, y = design(runs, peak, bw)
    x = _nnls(A / y[:, None], np.ones_like(y))
    pred = A @ x
    rel = np.abs(pred - y) / y
    cal.efficiency = {name: float(min(1.0 / v, MAX_EFFICIENCY)) if v > 0 else MAX_EFFICIENCY
                      for name, v in zip(("matmul", "attention", "elementwise"), x[:3])}
    cal.launch_ms = float(x[3])
    # the fit's constant per timed run of blocks (timer, autograd start) is not a per-iteration cost:
    # kept for the record; the per-iteration fixed cost is measured (calibration.iterations)
    cal.overhead_ms = 0.0
    if cal.iterations:
        gaps = fixed_cost(out)
        cal.overhead_ms = float(max(0.0, statistics.median(gaps)))
    cal.fit_error = {"latency_median_rel": float(np.median(rel)), "run_intercept_ms": float(x[4]),
                     "latency_p90_rel": float(np.percentile(rel, 90)), "latency_runs": float(len(y))}
    mem = [(r.peak_mb, run_saved_bytes(r) / MiB) for r in runs if r.peak_mb]
    if mem:
        cal.memory_overhead_mb = float(max(0.0, statistics.median(m - p for m, p in mem)))
        mrel = [abs(p + cal.memory_overhead_mb - m) / m for m, p in mem]
        cal.fit_error["memory_median_rel"] = float(statistics.median(mrel))
    return out
