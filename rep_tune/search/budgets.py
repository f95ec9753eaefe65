"""Budgets the search applies per target device: absolute, or relative to the baseline's cost.

Every metric comes from the one registry ``rep_tune.figures.METRICS`` (name, unit, CLI flag,
unit suffixes, default relative budget); nothing here names a metric.

Policy per device and metric, in order:
  1. a flag (``--latency-budget 0.6x`` relative to the baseline's cost on that device, or an
     absolute ``250ms``) wins;
  2. else the profile's absolute budget binds, as written: the costs it is compared with are the
     deployment's (the profile's ``workload`` backbone at its schedule, see ``targets``), which is
     what the budget was written for. There is no fallback to a relative budget when the baseline
     already fits it: a note says so, and the search then answers "the most accurate config
     within the budget";
  3. else (the profile sets no budget for the metric, e.g. ``--device local`` or a fresh
     ``rep-tune profile``), the metric's ``default_relative`` ratio of the baseline's cost
     (latency 0.8x, memory 0.8x), with a note, so that a profile without budgets still asks for a
     trade-off; a metric without a default (energy) is then unconstrained.

The baseline's cost is the prediction on the deployment (or the measurement, for a local target).
The resolved absolute values are what the constraints use and what the outputs record.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from rep_tune.device import DeviceProfile
from rep_tune.figures import METRICS, Cost, metric

_BUDGET = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")


def flag(metric_name: str) -> str:
    """The CLI option of a metric's budget: ``--latency-budget``."""
    return f"--{metric(metric_name).flag}-budget"


@dataclass(frozen=True)
class BudgetRequest:
    """What the user asked for one metric: ``0.6x`` (relative to the baseline) or ``250ms`` (absolute)."""

    metric: str
    value: float
    relative: bool

    def __str__(self) -> str:
        return f"{self.value:g}x baseline" if self.relative else f"{self.value:g} {METRICS[self.metric].unit}"


def parse_budget(text: str, metric_name: str) -> BudgetRequest:
    """Parse ``0.6x`` / ``60%`` (relative) or ``250`` / ``250ms`` / ``2GB`` (absolute, in the metric's unit)."""
    spec = metric(metric_name)
    s = str(text).strip().lower()
    if s.endswith("%"):
        return BudgetRequest(metric_name, _positive(s[:-1], text, metric_name) / 100.0, True)
    if s.endswith("x"):
        return BudgetRequest(metric_name, _positive(s[:-1], text, metric_name), True)
    m = _BUDGET.match(s)
    if not m:
        raise ValueError(f"{flag(metric_name)}: expected a number with an optional unit "
                         f"({', '.join(spec.scales)}) or a ratio like 0.6x, found {text!r}")
    unit = m["unit"] or spec.unit.lower()
    if unit not in spec.scales:
        raise ValueError(f"{flag(metric_name)}: unit {m['unit']!r} is not one of {', '.join(spec.scales)}")
    return BudgetRequest(metric_name, _positive(m["num"], text, metric_name) * spec.scales[unit], False)


def _positive(num: str, text: str, metric_name: str) -> float:
    try:
        v = float(num)
    except ValueError:
        raise ValueError(f"{flag(metric_name)}: expected a positive number, found {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{flag(metric_name)}: expected a positive finite number, found {text!r}")
    return v


@dataclass
class ResolvedBudget:
    """One metric's absolute budget on one device, and how it was obtained."""

    metric: str
    value: float
    basis: str                          # human-readable: "0.6x baseline (predicted 12.3 ms)"
    relative: float | None = None       # the ratio, when relative
    baseline: float | None = None       # the baseline's cost it was resolved against

    def to_dict(self) -> dict:
        return {"value": round(self.value, 6), "unit": METRICS[self.metric].unit, "basis": self.basis,
                "relative": self.relative, "baseline": None if self.baseline is None else round(self.baseline, 6)}


@dataclass
class DeviceBudgets:
    """All budgets applied on one device (at the profile's budget batch size)."""

    device: str
    batch_size: int
    budgets: dict[str, ResolvedBudget] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, **{m: b.to_dict() for m, b in self.budgets.items()},
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, device: str, data: dict) -> DeviceBudgets:
        """Inverse of ``to_dict`` (run.yaml keeps the budgets a run resolved, for resume)."""
        return cls(device, int(data["batch_size"]), {
            m: ResolvedBudget(m, float(v["value"]), v["basis"], v.get("relative"), v.get("baseline"))
            for m, v in data.items() if m in METRICS}, list(data.get("notes", [])))

    def limits(self) -> dict[str, float]:
        """metric -> absolute limit."""
        return {m: b.value for m, b in self.budgets.items()}

    def describe(self) -> str:
        parts = [f"{METRICS[m].flag} <= {METRICS[m].plain(b.value)} [{b.basis}]" for m, b in self.budgets.items()]
        return f"{self.device}: " + ("; ".join(parts) if parts else "no budget")


def resolve(profile: DeviceProfile, baseline: Cost, requests: dict[str, BudgetRequest] | None = None) -> DeviceBudgets:
    """Absolute budgets on ``profile`` from the user's requests, the profile and the baseline's cost there."""
    requests = requests or {}
    out = DeviceBudgets(profile.name, profile.budgets.batch_size)
    for name, spec in METRICS.items():
        fig = baseline.get(name)
        base = None if fig is None else float(fig.value)
        src = "" if fig is None else fig.source
        unit = spec.unit
        req = requests.get(name)
        absolute = profile.budgets.limits.get(name)
        if req is not None and req.relative:
            if base is None:
                raise ValueError(f"{flag(name)} {req}: the baseline has no {name} figure on {profile.name}")
            out.budgets[name] = ResolvedBudget(name, req.value * base, f"{req.value:g}x baseline ({src} {base:.4g} {unit})",
                                               req.value, base)
        elif req is not None:
            out.budgets[name] = ResolvedBudget(name, req.value, flag(name), None, base)
        elif absolute is not None:
            out.budgets[name] = ResolvedBudget(name, float(absolute), f"profile budgets.{name}", None, base)
            if base is not None and base <= absolute:
                out.notes.append(f"profile budgets.{name} = {absolute:g} {unit}: the baseline fits it already "
                                 f"({src} {base:.4g} {unit}); the search looks for the most accurate config within it")
        elif spec.default_relative is not None and base is not None:
            ratio = spec.default_relative
            out.budgets[name] = ResolvedBudget(name, ratio * base, f"default {ratio:g}x baseline ({src} {base:.4g} {unit})",
                                               ratio, base)
            out.notes.append(f"profile {profile.name} sets no budgets.{name}: applied {ratio:g}x the baseline's "
                             f"(set one with {flag(name)})")
    return out


def violation(value: float, budget: float) -> float:
    """Constraint value for Optuna: ``cost / budget - 1`` (<= 0 feasible).

    Same sign as ``cost - budget``, but unit-free, so TPE's sum of violations weighs a 10% excess
    of latency like a 10% excess of memory.
    """
    return float(value) / float(budget) - 1.0
