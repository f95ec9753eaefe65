"""Fit a device's efficiency factors and overheads from timed ViT-block runs (CalibrationRun).

Model (the one rep_tune.cost.latency predicts with), per run of ``blocks`` blocks:
    ms = blocks * (mm / (peak * e_mm) + att / (peak * e_att) + bytes / (bw * e_ew) + ops * launch_ms) + c0
fitted by non-negative least squares on relative error (each row divided by its measurement).
Memory: the run's peak above the activations and workspace the memory model counts is the
framework overhead (median over runs).
"""
from __future__ import annotations

import copy
import statistics

import numpy as np

from rep_tune.cost.counts import DTYPE_BYTES, OPS_BLOCK_BWD, OPS_BLOCK_FWD, block_flops
from rep_tune.cost.latency import bandwidth, peak_flops
from rep_tune.cost.memory import MB

MAX_EFFICIENCY = 1e3     # a class the fit finds free gets this (its time is then negligible)


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        from scipy.optimize import nnls
        return nnls(A, b)[0]
    except ImportError:   # pragma: no cover - scipy ships with scikit-learn
        x = np.linalg.lstsq(A, b, rcond=None)[0]
        return np.clip(x, 0.0, None)


def run_work(run) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(forward, backward) work of one block of a calibration run."""
    M = int(run.embed_dim * run.mlp_ratio)
    return block_flops(run.batch, run.tokens, run.tokens, run.tokens, run.embed_dim, run.num_heads, M,
                       DTYPE_BYTES.get(run.dtype, 4))


def run_saved_bytes(run) -> float:
    """Activations the memory model expects a calibration run to keep (all blocks, plain tokens)."""
    from rep_tune.cost.counts import SAVED_PER_ND, SAVED_PER_NPD, SAVED_PER_NPM
    B, N, D, H = run.batch, run.tokens, run.embed_dim, run.num_heads
    M = int(D * run.mlp_ratio)
    s = DTYPE_BYTES.get(run.dtype, 4)
    per = s * B * ((SAVED_PER_ND + SAVED_PER_NPD) * N * D + SAVED_PER_NPM * N * M + H * N + 6 * N)
    return run.blocks * per + s * B * max(N * M, H * N * N, 3 * N * D) * 2


def design(runs, peak: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows [mm ms, att ms, bytes ms, launches, 1] at efficiency 1, and measured ms."""
    rows, ys = [], []
    pm, pb = 1e3 / peak, 1e3 / bw
    for run in runs:
        f, b = run_work(run)
        if run.fwd_ms > 0:
            rows.append([run.blocks * f[0] * pm, run.blocks * f[1] * pm, run.blocks * f[2] * pb,
                         run.blocks * OPS_BLOCK_FWD, 1.0])
            ys.append(run.fwd_ms)
        if run.fwd_bwd_ms > 0:
            rows.append([run.blocks * (f[0] + b[0]) * pm, run.blocks * (f[1] + b[1]) * pm,
                         run.blocks * (f[2] + b[2]) * pb, run.blocks * (OPS_BLOCK_FWD + OPS_BLOCK_BWD), 1.0])
            ys.append(run.fwd_bwd_ms)
    return np.asarray(rows, dtype=float), np.asarray(ys, dtype=float)


def fit(profile):
    """Return a copy of ``profile`` whose calibration holds fitted efficiency, overheads and fit error.

    ``calibration.efficiency`` gets matmul, attention, elementwise (fractions of the spec peaks)
    and ``launch_ms`` the time per kernel launch. Raises ValueError without timed runs.
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
    cal.efficiency = {
        "matmul": float(min(1.0 / x[0], MAX_EFFICIENCY)) if x[0] > 0 else MAX_EFFICIENCY,
        "attention": float(min(1.0 / x[1], MAX_EFFICIENCY)) if x[1] > 0 else MAX_EFFICIENCY,
        "elementwise": float(min(1.0 / x[2], MAX_EFFICIENCY)) if x[2] > 0 else MAX_EFFICIENCY,
    }
    cal.launch_ms = float(x[3])
    cal.overhead_ms = float(x[4])
    cal.fit_error = {"latency_median_rel": float(np.median(rel)),
                     "latency_p90_rel": float(np.percentile(rel, 90)), "latency_runs": float(len(y))}
    mem = [(r.peak_mb, run_saved_bytes(r) / MB) for r in runs if r.peak_mb]
    if mem:
        cal.memory_overhead_mb = float(max(0.0, statistics.median(m - p for m, p in mem)))
        mrel = [abs(p + cal.memory_overhead_mb - m) / m for m, p in mem]
        cal.fit_error["memory_median_rel"] = float(statistics.median(mrel))
    return out
