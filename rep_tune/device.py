"""DeviceProfile: a target device's spec, budgets, calibration and telemetry kind.

Written by ``rep-tune profile`` (measured) or shipped in ``rep_tune/profiles/`` (from data sheets, each
figure with its source). The cost model reads spec + calibration; the search reads budgets.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rep_tune.figures import METRICS, metric
from rep_tune.schema import INT_MAX, INT_MIN, Document, check, read_mapping, short_value, to_dict
from rep_tune.shipped import PROFILES, resolve, shipped_dir

PROFILE_VERSION = 1
PROFILES_DIR = shipped_dir(PROFILES)     # rep_tune/profiles, package data (importlib.resources)
EFFICIENCY_MAX = 1e3     # cost.calibrate.MAX_EFFICIENCY: what the fit gives a class it finds free


def _finite_number(v: Any) -> bool:
    """A real number that converts to a finite float (no bool, nan, inf, or int past the 64-bit range)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return INT_MIN <= v <= INT_MAX if isinstance(v, int) else math.isfinite(v)


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

    def check_ranges(self, source: str | None, dtype: str) -> None:
        """Peaks, bandwidth, capacities and powers are physical: > 0 (capacity >= 0 = unknown)."""
        check(bool(self.peak_tflops), source, "spec.peak_tflops",
              f"a mapping of dtype to TFLOP/s with an entry for dtype {dtype!r}", self.peak_tflops)
        for k, v in self.peak_tflops.items():
            check(v > 0, source, f"spec.peak_tflops.{k}", "a finite number > 0", v)
        check(dtype in self.peak_tflops, source, "dtype", f"one of spec.peak_tflops keys {sorted(self.peak_tflops)}",
              dtype)
        check(self.memory_bandwidth_gbs > 0, source, "spec.memory_bandwidth_gbs", "a finite number > 0 (GB/s)",
              self.memory_bandwidth_gbs)
        check(self.memory_mb >= 0, source, "spec.memory_mb", "a finite number >= 0", self.memory_mb)
        check(self.usable_memory_mb is None or self.usable_memory_mb > 0, source, "spec.usable_memory_mb",
              "a finite number > 0, or null", self.usable_memory_mb)
        if self.usable_memory_mb and self.memory_mb:
            check(self.usable_memory_mb <= self.memory_mb, source, "spec.usable_memory_mb",
                  f"<= spec.memory_mb ({self.memory_mb:g})", self.usable_memory_mb)
        check(self.power_w is None or self.power_w > 0, source, "spec.power_w", "a finite number > 0 (W), or null",
              self.power_w)
        check(self.idle_power_w is None or self.idle_power_w >= 0, source, "spec.idle_power_w",
              "a finite number >= 0 (W), or null", self.idle_power_w)
        if self.power_w is not None and self.idle_power_w is not None:
            check(self.idle_power_w <= self.power_w, source, "spec.idle_power_w", f"<= spec.power_w ({self.power_w:g})",
                  self.idle_power_w)


@dataclass(init=False)
class Budgets:
    """What one training iteration may cost on this device: one limit per registered cost metric
    (``rep_tune.figures.METRICS``: latency_ms, peak_memory_mb, energy_j, ...), absolute, at
    ``batch_size``. In the file the limits are flat keys (``latency_ms: 95``); unset = no limit.
    """

    batch_size: int = 16
    rationale: str = ""                # why these numbers
    limits: dict[str, float | None] = field(default_factory=dict)

    def __init__(self, batch_size: int = 16, rationale: str = "", limits: dict[str, float | None] | None = None,
                 **metric_limits: float | None) -> None:
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "rationale", rationale)
        object.__setattr__(self, "limits", {})
        for name, value in {**dict(limits or {}), **metric_limits}.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> float | None:
        if name in METRICS:
            return self.__dict__.get("limits", {}).get(name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("batch_size", "rationale", "limits"):
            object.__setattr__(self, name, value)
        else:
            metric(name)                   # KeyError naming the known metrics
            self.limits[name] = value

    def items(self) -> list[tuple[str, float]]:
        """(metric, limit) for every set limit, in registry order."""
        return [(m, self.limits[m]) for m in METRICS if self.limits.get(m) is not None]

    @classmethod
    def __schema_in__(cls, data: dict, source: str | None, prefix: str) -> dict:
        allowed = ("batch_size", "rationale", *METRICS)
        for key in data:
            check(key in allowed or key == "limits", source, f"{prefix}.{key}" if prefix else key,
                  "one of " + ", ".join(allowed), key)
        for key in METRICS:                # checked here so the error names the key as written in the file
            v = data.get(key)
            check(v is None or _finite_number(v), source, f"{prefix}.{key}" if prefix else key,
                  "a finite number or null", short_value(v))
        raw = data.pop("limits", None) or {}
        where = f"{prefix}.limits" if prefix else "limits"
        check(isinstance(raw, dict), source, where, "a mapping of metric to limit", raw)
        for key, v in raw.items():
            check(key in METRICS, source, f"{where}.{key}", "one of " + ", ".join(METRICS), key)
            check(v is None or _finite_number(v), source, f"{where}.{key}", "a finite number or null", short_value(v))
        limits = dict(raw)
        limits.update({k: data.pop(k) for k in list(data) if k in METRICS})
        data["limits"] = limits
        return data

    def __schema_out__(self, plain: dict) -> dict:
        return {**{m: self.limits.get(m) for m in METRICS}, "batch_size": self.batch_size,
                "rationale": self.rationale}


@dataclass
class Workload:
    """The training workload the budgets were written for: what is deployed on the device.

    A search trains a *proxy* for accuracy (the embedded backbone by default) and prices the same
    knobs on this workload with the cost model: ``backbone``/``surrogate`` at ``img_size``, at the
    deployment's schedule (``epochs`` passes over ``images_per_task`` images per task, capped at
    ``iters_per_task``), so ALD's decay and the query cache's first epoch are priced as deployed.
    The batch size is ``budgets.batch_size``.
    """

    backbone: str = "vit_base_patch16_224"
    surrogate: str | None = "vit_tiny_patch16_224"
    img_size: int = 224
    epochs: int = 5
    images_per_task: int = 5000       # Split CIFAR-100 in 10 tasks: 5,000 training images per task
    iters_per_task: int | None = None  # cap (the reference runtime's --budget_per_task); None = no cap
    num_classes: int = 100
    dataset: str = "cifar100"

    def iterations(self, batch_size: int) -> int:
        """Training iterations per task at ``batch_size`` (``rep_tune.schedule.iterations_per_task``)."""
        from rep_tune.schedule import iterations_per_task
        return iterations_per_task(self.images_per_task, batch_size, self.epochs, self.iters_per_task)


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
    autocast: bool = False             # fp32 blocks under autocast at ``dtype`` (as training runs), else converted

    def check_ranges(self, source: str | None, field_name: str) -> None:
        for name in ("batch", "tokens", "embed_dim", "num_heads", "blocks"):
            check(getattr(self, name) >= 1, source, f"{field_name}.{name}", "int >= 1", getattr(self, name))
        check(self.mlp_ratio > 0, source, f"{field_name}.mlp_ratio", "a finite number > 0", self.mlp_ratio)
        for name in ("fwd_ms", "fwd_bwd_ms"):
            check(getattr(self, name) >= 0, source, f"{field_name}.{name}", "a finite number >= 0 (ms)",
                  getattr(self, name))
        check(self.peak_mb is None or self.peak_mb >= 0, source, f"{field_name}.peak_mb",
              "a finite number >= 0 (MiB), or null", self.peak_mb)


@dataclass
class IterationRun:
    """One timed REP training iteration with every block dropped (ALD's pattern fixed to none):
    what an iteration costs outside the blocks and the query (patch embedding, prompt selection and
    assembly, final norm, head, loss, gradient clipping, optimizer step, the framework's per-step
    work). ``rep_tune.cost.calibrate.fit`` sets ``overhead_ms`` to what the model's counts miss of it."""

    method: str
    backbone: str
    batch: int
    ms: float
    dtype: str = "fp32"

    def check_ranges(self, source: str | None, field_name: str) -> None:
        check(self.batch >= 1, source, f"{field_name}.batch", "int >= 1", self.batch)
        check(self.ms > 0, source, f"{field_name}.ms", "a finite number > 0 (ms)", self.ms)


@dataclass
class MergeRun:
    """One timed AToM merge (``rep_tune.runtime.atom.merge_tokens``) of ``merges`` pairs among
    ``batch`` x ``tokens`` mergeable tokens of width ``embed_dim``: forward (no grad) and forward +
    backward to the input. The merge's gathers, scatters and argsort do not run at the block
    grid's efficiencies, so the cost model prices merges by their own measured / roofline ratio
    (``rep_tune.cost.residual.merge_table``)."""

    batch: int
    tokens: int
    embed_dim: int
    merges: int
    fwd_ms: float = 0.0
    fwd_bwd_ms: float = 0.0
    dtype: str = "fp32"

    def check_ranges(self, source: str | None, field_name: str) -> None:
        for name in ("batch", "tokens", "embed_dim", "merges"):
            check(getattr(self, name) >= 1, source, f"{field_name}.{name}", "int >= 1", getattr(self, name))
        check(self.merges <= self.tokens // 2, source, f"{field_name}.merges", f"int <= tokens / 2 ({self.tokens // 2})",
              self.merges)
        for name in ("fwd_ms", "fwd_bwd_ms"):
            check(getattr(self, name) >= 0, source, f"{field_name}.{name}", "a finite number >= 0 (ms)",
                  getattr(self, name))


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
    iterations: list[IterationRun] = field(default_factory=list)   # timed iterations with no block: the fixed cost
    merges: list[MergeRun] = field(default_factory=list)           # timed AToM merges: their own price
    fit_error: dict[str, float] = field(default_factory=dict)    # e.g. {"latency_median_rel": 0.06}
    # agreement of the profiler's repeated probes (rep_tune.profiler.probe.spread: (median - fastest) / median
    # of each probe's repeats); noisy: one exceeded probe.AGREEMENT (a busy machine: the runs are unreliable)
    noisy: bool = False
    spreads: dict[str, float] = field(default_factory=dict)      # e.g. {"matmul fp32": 0.012, "copy": 0.008}

    def __schema_out__(self, plain: dict) -> dict:
        """Profiles written before the agreement check (no spreads) keep their file form and checksum."""
        if not self.noisy and not self.spreads:
            plain.pop("noisy", None)
            plain.pop("spreads", None)
        if not self.iterations:
            plain.pop("iterations", None)
        if not self.merges:
            plain.pop("merges", None)
        return plain

    def check_ranges(self, source: str | None) -> None:
        """Efficiencies in (0, EFFICIENCY_MAX] (launch_ms >= 0); overheads >= 0; every run sane."""
        for k, v in self.efficiency.items():
            if k == "launch_ms":
                check(v >= 0, source, f"calibration.efficiency.{k}", "a finite number >= 0 (ms)", v)
            else:
                check(0 < v <= EFFICIENCY_MAX, source, f"calibration.efficiency.{k}",
                      f"a fraction of the spec peak in (0, {EFFICIENCY_MAX:g}]", v)
        check(self.overhead_ms >= 0, source, "calibration.overhead_ms", "a finite number >= 0 (ms)", self.overhead_ms)
        check(self.launch_ms is None or self.launch_ms >= 0, source, "calibration.launch_ms",
              "a finite number >= 0 (ms), or null", self.launch_ms)
        check(self.memory_overhead_mb >= 0, source, "calibration.memory_overhead_mb", "a finite number >= 0 (MiB)",
              self.memory_overhead_mb)
        for i, run in enumerate(self.runs):
            run.check_ranges(source, f"calibration.runs[{i}]")
        for i, it in enumerate(self.iterations):
            it.check_ranges(source, f"calibration.iterations[{i}]")
        for i, m in enumerate(self.merges):
            m.check_ranges(source, f"calibration.merges[{i}]")
        for k, v in self.fit_error.items():
            check(v >= 0, source, f"calibration.fit_error.{k}", "a finite number >= 0", v)
        for k, v in self.spreads.items():
            check(v >= 0, source, f"calibration.spreads.{k}", "a finite number >= 0 (relative spread)", v)


@dataclass
class DeviceProfile(Document):
    """A target device for the search."""

    name: str
    kind: Literal["gpu", "jetson", "cpu"]
    version: int = PROFILE_VERSION
    description: str = ""
    dtype: str = "fp32"                # dtype REP training runs in on this device
    spec: Spec = field(default_factory=Spec)
    budgets: Budgets = field(default_factory=Budgets)
    workload: Workload = field(default_factory=Workload)
    calibration: Calibration | None = None
    telemetry: Literal["nvml", "jetson-ina3221", "rapl", "none"] = "none"
    identity: dict[str, Any] = field(default_factory=dict)   # model, driver, power mode, host
    sources: list[str] = field(default_factory=list)

    def validate(self, source: str | None = None) -> "DeviceProfile":
        """Range checks the cost model and the search rely on; SchemaError names the field.

        Every number is finite (the schema refuses nan/inf). Peak FLOP/s, bandwidth, powers,
        efficiencies and budgets are > 0: a zero or negative one turns into a negative or
        infinite predicted cost. ``spec.peak_tflops`` must list ``dtype``: the cost model would
        otherwise fall back to another dtype's figure, or to 1 TFLOP/s when the table is empty.
        """
        check(self.version == PROFILE_VERSION, source, "version", str(PROFILE_VERSION), self.version)
        check(bool(self.name.strip()), source, "name", "a non-empty string", self.name)
        self.spec.check_ranges(source, self.dtype)
        b = self.budgets
        check(b.batch_size >= 1, source, "budgets.batch_size", "int >= 1", b.batch_size)
        for name, v in b.limits.items():
            check(v is None or (_finite_number(v) and v > 0), source, f"budgets.{name}", "a finite number > 0, or null",
                  short_value(v))
        if self.spec.usable_memory_mb and b.peak_memory_mb:
            check(b.peak_memory_mb <= self.spec.usable_memory_mb, source, "budgets.peak_memory_mb",
                  f"<= spec.usable_memory_mb ({self.spec.usable_memory_mb})", b.peak_memory_mb)
        w = self.workload
        for name in ("img_size", "epochs", "images_per_task", "num_classes"):
            check(getattr(w, name) >= 1, source, f"workload.{name}", "int >= 1", getattr(w, name))
        check(w.iters_per_task is None or w.iters_per_task >= 1, source, "workload.iters_per_task", "int >= 1 or null",
              w.iters_per_task)
        if self.calibration is not None:
            self.calibration.check_ranges(source)
        return self

    @property
    def calibrated(self) -> bool:
        return bool(self.calibration and self.calibration.efficiency)

    def checksum(self) -> str:
        """sha256 of the profile's content (provenance of a config searched against it)."""
        return hashlib.sha256(json.dumps(to_dict(self), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> "DeviceProfile":
        """Load a profile file, or a shipped profile by name (``jetson_orin``).

        An existing path is the user's file; a missing ``jetson_orin`` or ``profiles/jetson_orin.yaml``
        is the shipped one (from any folder); anything else missing raises FileNotFoundError.
        """
        p = resolve(path, PROFILES)
        return cls.from_dict(read_mapping(p), source=str(p))


def shipped_profiles() -> list[Path]:
    """The profiles that ship with rep-tune."""
    return sorted(PROFILES_DIR.glob("*.yaml"))
