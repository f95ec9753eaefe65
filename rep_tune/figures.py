"""Cost metrics and the figures that never travel without their source.

``METRICS`` is the one registry of cost metrics (latency, peak memory, energy, ...): budgets,
constraints, verdicts, CLI flags, trial records, CSV columns and plots all iterate over it, so a
new metric is one ``register_metric`` call (plus the code that measures or predicts it).

Sources of a figure:
measured:    read from a counter or timer on the machine that ran the work
integrated:  power samples integrated over time (NVML polling, INA3221 rails)
predicted:   from the calibrated cost model
estimated:   from a spec-sheet power or an uncalibrated model (no counter available)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

Source = Literal["measured", "integrated", "predicted", "estimated"]
SOURCES: tuple[str, ...] = ("measured", "integrated", "predicted", "estimated")


@dataclass(frozen=True)
class Metric:
    """A cost metric of one training iteration: its key, unit, CLI flag and how budgets treat it.

    ``name`` is the key everywhere (``Cost`` attribute, ``budgets.<name>`` in a profile, the
    constraint ``<name>@<device>``); ``flag`` is the CLI budget option (``--<flag>-budget``);
    ``scales`` maps the unit suffixes a budget may be written in to factors into ``unit``;
    ``default_relative`` is the budget applied, relative to the baseline's cost, when neither the
    user nor the profile sets a binding one (None: the metric is constrained only when asked).
    """

    name: str
    unit: str
    flag: str
    label: str
    scales: Mapping[str, float]
    default_relative: float | None = None
    lower_is_better: bool = True

    def parse_value(self, number: float, unit: str | None) -> float:
        """``number`` in ``unit`` (one of ``scales``, case-insensitive) converted to this metric's unit."""
        u = (unit or self.unit).lower()
        if u not in self.scales:
            raise ValueError(f"--{self.flag}-budget: unit {unit!r} is not one of {', '.join(self.scales)}")
        return number * self.scales[u]

    def plain(self, value: float) -> str:
        """``value`` (in ``unit``) in the largest unit of ``scales`` it reaches, without exponents:
        45000 MiB -> '43.95 GiB', 162 ms -> '162 ms'. Units spelled as this metric's own when they
        differ only in case ('gib' -> 'GiB')."""
        def spell(u: str) -> str:
            own = self.unit
            return own if u == own.lower() else (u[:-2].upper() + "iB" if u.endswith("ib") else u)
        up = [(f, u) for u, f in self.scales.items() if f >= 1 and abs(value) >= f]
        factor, unit = max(up) if up else (1.0, self.unit.lower())
        v = value / factor
        return f"{v:.4g} {spell(unit)}" if abs(v) < 1e4 else f"{v:,.0f} {spell(unit)}"


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (replacing one of the same name) and return it."""
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a metric (tests that register a hypothetical one clean up with this)."""
    METRICS.pop(name, None)


def metric(name: str) -> Metric:
    """The registered metric ``name``; KeyError naming the known ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown cost metric {name!r}: expected one of {', '.join(METRICS)}") from None


LATENCY = register_metric(Metric("latency_ms", "ms", "latency", "time per training iteration",
                                 {"ms": 1.0, "s": 1000.0, "us": 1e-3}, default_relative=0.8))
MEMORY = register_metric(Metric("peak_memory_mb", "MiB", "memory", "peak training memory (MiB = 2**20 bytes)",
                                {"mb": 1.0, "mib": 1.0, "gb": 1024.0, "gib": 1024.0, "kb": 1 / 1024},
                                default_relative=0.8))
ENERGY = register_metric(Metric("energy_j", "J", "energy", "energy per training iteration",
                                {"j": 1.0, "mj": 1e-3, "kj": 1e3}))


@dataclass
class Figure:
    """One number with its unit, where it came from and on what machine."""

    value: float
    unit: str
    source: Source
    detail: str = ""     # e.g. "CUDA allocator peak", "RAPL package-0", "uncalibrated"
    machine: str = ""    # host or profile name

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"figure source: expected one of {', '.join(SOURCES)}, found {self.source!r}")

    def __str__(self) -> str:
        return f"{self.value:.4g} {self.unit} ({self.source}{', ' + self.detail if self.detail else ''})"

    def to_dict(self) -> dict[str, Any]:
        return {"value": None if not math.isfinite(self.value) else round(float(self.value), 6), "unit": self.unit,
                "source": self.source, "detail": self.detail, "machine": self.machine}


class Cost:
    """Cost of one training iteration of a RepConfig at its batch size (or of a whole run, per ``scope``).

    Holds one optional Figure per registered metric: ``cost.latency_ms``, ``cost["energy_j"]``,
    ``Cost(latency_ms=Figure(...))``. Unknown metric names are refused.
    """

    def __init__(self, figures: Mapping[str, Figure | None] | None = None, *, scope: str = "iteration",
                 extras: dict[str, float] | None = None, **named: Figure | None) -> None:
        self.figures: dict[str, Figure] = {}
        for name, fig in {**dict(figures or {}), **named}.items():
            metric(name)                       # refuses unknown names
            if fig is not None:
                self.figures[name] = fig
        self.scope = scope
        self.extras: dict[str, float] = dict(extras or {})

    def __getattr__(self, name: str) -> Figure | None:
        if name in METRICS:
            return self.__dict__.get("figures", {}).get(name)
        raise AttributeError(name)

    def __getitem__(self, name: str) -> Figure | None:
        metric(name)
        return self.figures.get(name)

    def get(self, name: str) -> Figure | None:
        return self.figures.get(name)

    def items(self) -> Iterator[tuple[str, Figure]]:
        """(metric name, figure) in registry order, for the figures present."""
        return ((m, self.figures[m]) for m in METRICS if m in self.figures)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cost) and (self.figures, self.scope, self.extras) == (other.figures, other.scope, other.extras)

    def __repr__(self) -> str:
        figs = ", ".join(f"{k}={v}" for k, v in self.items())
        return f"Cost({figs}, scope={self.scope!r})"

    def as_row(self) -> dict:
        """Flat dict for CSV/YAML: value and source of each registered metric."""
        row: dict = {}
        for name in METRICS:
            f = self.figures.get(name)
            row[name] = None if f is None else round(f.value, 6)
            row[f"{name}_source"] = None if f is None else f.source
        return row

    def to_dict(self) -> dict[str, Any]:
        """Plain data: scope, each figure with its source, extras."""
        return {"scope": self.scope, **{m: f.to_dict() for m, f in self.items()},
                "extras": {k: float(v) for k, v in self.extras.items()}}
