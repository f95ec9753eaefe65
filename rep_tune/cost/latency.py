"""Roofline latency: matmul and attention FLOPs over peak x efficiency, elementwise bytes over
bandwidth x efficiency, plus kernel launches x per-launch time and a fixed per-iteration overhead.

The same linear form prices a config (``rep_tune.cost.model``) and is fitted to timed block runs
(``rep_tune.cost.calibrate``), so a calibrated profile predicts with exactly the coefficients its
fit chose. Peak FLOP/s is the profile's figure for the dtype being priced (a config's
``training.precision``); the efficiencies are fractions of that peak, fitted at the calibration's
dtype and carried over to the others.
"""
from __future__ import annotations

from dataclasses import dataclass

from rep_tune.cost.work import Work

# Spec-only defaults: fraction of peak a framework typically reaches, and the time per counted
# launch (an eager-mode aten dispatch, views included: ~5 us on a desktop CPU driving a GPU, about
# 3x that on a Jetson's Arm cores; rep_tune.cost.work counts them).
DEFAULT_EFFICIENCY = {
    "gpu": {"matmul": 0.5, "attention": 0.3, "elementwise": 0.6, "launch_ms": 0.005},
    "jetson": {"matmul": 0.35, "attention": 0.2, "elementwise": 0.5, "launch_ms": 0.015},
    "cpu": {"matmul": 0.4, "attention": 0.2, "elementwise": 0.3, "launch_ms": 0.006},
}
CLASSES = ("matmul", "attention", "elementwise")


@dataclass(frozen=True)
class Rates:
    """Per-unit times (ms per FLOP / byte / launch) of one device at one dtype."""

    matmul: float          # ms per matmul FLOP
    attention: float       # ms per attention FLOP
    elementwise: float     # ms per byte of elementwise traffic
    launch: float          # ms per kernel launch
    overhead: float        # ms per iteration
    dtype: str = "fp32"    # the dtype whose peak was used
    peak_dtype: str = "fp32"   # the profile's peak entry actually read (differs when the dtype has none)

    def time(self, w: Work) -> float:
        """Milliseconds of ``w`` (no per-iteration overhead)."""
        return (w.matmul_flops * self.matmul + w.attention_flops * self.attention
                + w.elementwise_bytes * self.elementwise + w.launches * self.launch)


def peak_entry(profile, dtype: str | None = None) -> str | None:
    """The ``spec.peak_tflops`` key used for ``dtype``: itself, else fp32, else the fastest listed."""
    pk = profile.spec.peak_tflops
    dt = dtype or profile.dtype
    if pk.get(dt):
        return dt
    if pk.get("fp32"):
        return "fp32"
    return max(pk, key=pk.get) if pk else None


def peak_flops(profile, dtype: str | None = None) -> float:
    """Peak FLOP/s of the profile at ``dtype`` (falls back to fp32, then to any listed figure)."""
    key = peak_entry(profile, dtype)
    return (profile.spec.peak_tflops[key] if key else 1.0) * 1e12


def bandwidth(profile) -> float:
    """Memory bandwidth in bytes/s (100 GB/s when the profile has none)."""
    return (profile.spec.memory_bandwidth_gbs or 100.0) * 1e9


def efficiencies(profile) -> dict[str, float]:
    """Calibrated efficiency factors, or the spec-only defaults of the profile's kind."""
    base = dict(DEFAULT_EFFICIENCY.get(profile.kind, DEFAULT_EFFICIENCY["gpu"]))
    if profile.calibrated:
        base.update(profile.calibration.efficiency)
    return base


def rates(profile, dtype: str | None = None) -> Rates:
    """Per-unit times of ``profile`` at ``dtype`` (default: the profile's), calibrated when it is."""
    e = efficiencies(profile)
    dt = dtype or profile.dtype
    pf, bw = peak_flops(profile, dt), bandwidth(profile)
    cal = profile.calibration if profile.calibrated else None
    overhead = cal.overhead_ms if cal else 0.0
    launch = cal.launch_ms if cal and cal.launch_ms is not None else e["launch_ms"]
    return Rates(matmul=1e3 / (pf * e["matmul"]), attention=1e3 / (pf * e["attention"]),
                 elementwise=1e3 / (bw * e["elementwise"]), launch=launch, overhead=overhead,
                 dtype=dt, peak_dtype=peak_entry(profile, dt) or dt)
