"""Cost figures that never travel without their source.

measured:    read from a counter or timer on the machine that ran the work
integrated:  power samples integrated over time (NVML polling, INA3221 rails)
predicted:   from the calibrated cost model
estimated:   from a spec-sheet power or an uncalibrated model (no counter available)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Source = Literal["measured", "integrated", "predicted", "estimated"]


@dataclass
class Figure:
    """One number with its unit, where it came from and on what machine."""

    value: float
    unit: str
    source: Source
    detail: str = ""     # e.g. "CUDA allocator peak", "RAPL package-0", "uncalibrated"
    machine: str = ""    # host or profile name

    def __str__(self) -> str:
        return f"{self.value:.4g} {self.unit} ({self.source}{', ' + self.detail if self.detail else ''})"


@dataclass
class Cost:
    """Cost of one training iteration of a RepConfig at its batch size (or of a whole run, per ``scope``)."""

    latency_ms: Figure | None = None
    peak_memory_mb: Figure | None = None
    energy_j: Figure | None = None
    scope: str = "iteration"
    extras: dict[str, float] = field(default_factory=dict)   # e.g. flops, tokens, blocks run

    def as_row(self) -> dict:
        """Flat dict for CSV/YAML: value and source of each figure."""
        row: dict = {}
        for name in ("latency_ms", "peak_memory_mb", "energy_j"):
            f = getattr(self, name)
            row[name] = None if f is None else round(f.value, 6)
            row[f"{name}_source"] = None if f is None else f.source
        return row
