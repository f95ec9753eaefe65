"""Roofline latency: matmul and attention FLOPs over peak x efficiency, elementwise bytes over
bandwidth x efficiency, plus kernel launches x per-launch time and a fixed per-iteration overhead.

The same linear form is used to predict and to fit (rep_tune.cost.calibrate), so a calibrated
profile predicts with exactly the coefficients its fit chose.
"""
from __future__ import annotations

from dataclasses import dataclass

# Spec-only defaults: fraction of peak a framework typically reaches, launch cost per kernel.
DEFAULT_EFFICIENCY = {
    "gpu": {"matmul": 0.5, "attention": 0.3, "elementwise": 0.6, "launch_ms": 0.008},
    "jetson": {"matmul": 0.35, "attention": 0.2, "elementwise": 0.5, "launch_ms": 0.03},
    "cpu": {"matmul": 0.4, "attention": 0.2, "elementwise": 0.3, "launch_ms": 0.006},
}
CLASSES = ("matmul", "attention", "elementwise")


@dataclass(frozen=True)
class Rates:
    """Per-unit times (ms per FLOP / byte / launch) of one device at one dtype."""

    matmul: float          # ms per matmul FLOP
    attention: float       # ms per attention FLOP
    elementwise: float     # ms per byte of elementwise traffic
    op: float              # ms per kernel launch
    overhead: float        # ms per iteration

    def time(self, work: tuple[float, float, float], ops: float = 0.0) -> float:
        return work[0] * self.matmul + work[1] * self.attention + work[2] * self.elementwise + ops * self.op


def peak_flops(profile, dtype: str | None = None) -> float:
    """Peak FLOP/s of the profile at ``dtype`` (falls back to fp32, then to any listed figure)."""
    pk = profile.spec.peak_tflops
    dt = dtype or profile.dtype
    v = pk.get(dt) or pk.get("fp32") or (max(pk.values()) if pk else 1.0)
    return v * 1e12


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
    """Per-unit times of ``profile`` (calibrated factors when present)."""
    e = efficiencies(profile)
    pf, bw = peak_flops(profile, dtype), bandwidth(profile)
    cal = profile.calibration if profile.calibrated else None
    overhead = cal.overhead_ms if cal else 0.0
    launch = cal.launch_ms if cal and cal.launch_ms is not None else e["launch_ms"]
    return Rates(matmul=1e3 / (pf * e["matmul"]), attention=1e3 / (pf * e["attention"]),
                 elementwise=1e3 / (bw * e["elementwise"]), op=launch, overhead=overhead)
