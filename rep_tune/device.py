"""DeviceProfile: a target device's spec, budgets, calibration and telemetry kind.

Written by ``rep-tune profile`` (measured) or shipped in ``profiles/`` (from data sheets, each
figure with its source). The cost model reads spec + calibration; the search reads budgets.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rep_tune.schema import check, from_dict, read_mapping, to_dict, write_mapping

PROFILE_VERSION = 1
PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


@dataclass
class Spec:
    """Peak figures (data sheet or measured), per dtype where it matters."""

    peak_tflops: dict[str, float] = field(default_factory=dict)     # {"fp32": 66.9, "fp16": 989, "bf16": 989}
    memory_bandwidth_gbs: float = 0.0
    memory_mb: float = 0.0             # nominal capacity
    usable_memory_mb: float | None = None   # what training can really allocate (shared memory on Jetson)
    power_w: float | None = None       # board/TDP power under load (for estimated energy)
    idle_power_w: float | None = None
    cpu: str | None = None


@dataclass
class Budgets:
    """What one training iteration may cost on this device. Absolute (ms, MB, J) at ``batch_size``."""

    latency_ms: float | None = None    # per training iteration at batch_size
    batch_size: int = 16
    peak_memory_mb: float | None = None
    energy_j: float | None = None      # per training iteration, optional
    rationale: str = ""                # why these numbers


@dataclass
class CalibrationRun:
    """One timed run of ViT blocks on the device (input of the cost model's fit)."""

    batch: int
    tokens: int
    embed_dim: int
    num_heads: int
    blocks: int
    mlp_ratio: float = 4.0
    fwd_ms: float = 0.0                # forward of `blocks` blocks
    fwd_bwd_ms: float = 0.0            # forward + backward to the input (frozen weights)
    peak_mb: float | None = None       # peak memory above the idle baseline
    dtype: str = "fp32"


@dataclass
class Calibration:
    """Measured efficiency factors (fraction of peak reached) and fitted overheads."""

    measured_on: str = ""              # host and date
    dtype: str = "fp32"
    efficiency: dict[str, float] = field(default_factory=dict)   # {"matmul": .., "attention": .., "elementwise": ..}
    overhead_ms: float = 0.0           # fixed per-iteration overhead (optimizer step, python)
    launch_ms: float | None = None     # time per kernel launch (dominates tiny blocks on CPU and Jetson)
    memory_overhead_mb: float = 0.0    # framework / allocator overhead
    runs: list[CalibrationRun] = field(default_factory=list)
    fit_error: dict[str, float] = field(default_factory=dict)    # e.g. {"latency_median_rel": 0.06}


@dataclass
class DeviceProfile:
    """A target device for the search."""

    name: str
    kind: Literal["gpu", "jetson", "cpu"]
    version: int = PROFILE_VERSION
    description: str = ""
    dtype: str = "fp32"                # dtype REP training runs in on this device
    spec: Spec = field(default_factory=Spec)
    budgets: Budgets = field(default_factory=Budgets)
    calibration: Calibration | None = None
    telemetry: Literal["nvml", "jetson-ina3221", "rapl", "none"] = "none"
    identity: dict[str, Any] = field(default_factory=dict)   # model, driver, power mode, host
    sources: list[str] = field(default_factory=list)

    def validate(self, source: str | None = None) -> "DeviceProfile":
        check(self.version == PROFILE_VERSION, source, "version", str(PROFILE_VERSION), self.version)
        check(bool(self.name), source, "name", "a non-empty string", self.name)
        for k, v in self.spec.peak_tflops.items():
            check(v > 0, source, f"spec.peak_tflops.{k}", "number > 0", v)
        check(self.dtype in self.spec.peak_tflops or not self.spec.peak_tflops, source, "dtype",
              f"one of spec.peak_tflops keys {sorted(self.spec.peak_tflops)}", self.dtype)
        check(self.spec.memory_bandwidth_gbs >= 0, source, "spec.memory_bandwidth_gbs", "number >= 0", self.spec.memory_bandwidth_gbs)
        b = self.budgets
        check(b.batch_size >= 1, source, "budgets.batch_size", "int >= 1", b.batch_size)
        for name in ("latency_ms", "peak_memory_mb", "energy_j"):
            v = getattr(b, name)
            check(v is None or v > 0, source, f"budgets.{name}", "number > 0 or null", v)
        if self.spec.usable_memory_mb and b.peak_memory_mb:
            check(b.peak_memory_mb <= self.spec.usable_memory_mb, source, "budgets.peak_memory_mb",
                  f"<= spec.usable_memory_mb ({self.spec.usable_memory_mb})", b.peak_memory_mb)
        return self

    @property
    def calibrated(self) -> bool:
        return bool(self.calibration and self.calibration.efficiency)

    def checksum(self) -> str:
        """sha256 of the profile's content (provenance of a config searched against it)."""
        return hashlib.sha256(json.dumps(to_dict(self), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "DeviceProfile":
        return from_dict(cls, data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "DeviceProfile":
        """Load a profile file, or a shipped profile by name (``jetson_orin``)."""
        p = Path(path)
        if not p.exists() and (PROFILES_DIR / f"{path}.yaml").exists():
            p = PROFILES_DIR / f"{path}.yaml"
        return cls.from_dict(read_mapping(p), source=str(p))

    def save(self, path: str | Path) -> Path:
        return write_mapping(self.to_dict(), path)


def shipped_profiles() -> list[Path]:
    """The profiles that ship with rep-tune."""
    return sorted(PROFILES_DIR.glob("*.yaml"))
