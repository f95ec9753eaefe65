"""Budgets the search applies per target device: absolute, or relative to the baseline's cost.

A profile's budgets are written for real workloads (ViT-Ti/B at 224 px). The embedded default's
tiny backbone meets them with any config, so a search under them shows no trade-off. Budgets
can therefore be given relative to the cost of the *baseline* preset (no surrogate, no AToM,
no ALD) on the same device: ``--latency-budget 0.6x`` means 60% of the baseline's latency per
training iteration there (its predicted cost, or its measured cost when the target is this
machine). The resolved absolute value is what constraints use and what outputs record.

Default policy when no budget flag is given, per metric:
  * the profile's absolute budget when it binds (the baseline's cost exceeds it);
  * otherwise DEFAULT_RELATIVE (latency 0.8x, memory 0.8x of the baseline), with a note saying
    the profile's budget did not bind. Energy is constrained only when a budget is given
    (by flag or by the profile).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from rep_tune.device import DeviceProfile
from rep_tune.figures import Cost

METRICS = ("latency_ms", "peak_memory_mb", "energy_j")
UNITS = {"latency_ms": "ms", "peak_memory_mb": "MB", "energy_j": "J"}
SHORT = {"latency_ms": "latency", "peak_memory_mb": "memory", "energy_j": "energy"}
DEFAULT_RELATIVE = {"latency_ms": 0.8, "peak_memory_mb": 0.8}
_UNIT_SCALE = {"latency_ms": {"ms": 1.0, "s": 1000.0, "us": 1e-3},
               "peak_memory_mb": {"mb": 1.0, "mib": 1.0, "gb": 1024.0, "gib": 1024.0, "kb": 1 / 1024},
               "energy_j": {"j": 1.0, "mj": 1e-3, "kj": 1e3}}
_BUDGET = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class BudgetRequest:
    """What the user asked for one metric: ``0.6x`` (relative to the baseline) or ``250ms`` (absolute)."""

    metric: str
    value: float
    relative: bool

    def __str__(self) -> str:
        return f"{self.value:g}x baseline" if self.relative else f"{self.value:g} {UNITS[self.metric]}"


def parse_budget(text: str, metric: str) -> BudgetRequest:
    """Parse ``0.6x`` / ``60%`` (relative) or ``250`` / ``250ms`` / ``2GB`` (absolute, in the metric's unit)."""
    s = str(text).strip().lower()
    if s.endswith("%"):
        return BudgetRequest(metric, _positive(s[:-1], text, metric) / 100.0, True)
    if s.endswith("x"):
        return BudgetRequest(metric, _positive(s[:-1], text, metric), True)
    m = _BUDGET.match(s)
    if not m:
        raise ValueError(f"--{SHORT[metric]}-budget: expected a number with an optional unit "
                         f"({', '.join(_UNIT_SCALE[metric])}) or a ratio like 0.6x, found {text!r}")
    unit = m["unit"] or UNITS[metric].lower()
    scale = _UNIT_SCALE[metric].get(unit)
    if scale is None:
        raise ValueError(f"--{SHORT[metric]}-budget: unit {m['unit']!r} not one of {', '.join(_UNIT_SCALE[metric])}")
    return BudgetRequest(metric, _positive(m["num"], text, metric) * scale, False)


def _positive(num: str, text: str, metric: str) -> float:
    try:
        v = float(num)
    except ValueError:
        raise ValueError(f"--{SHORT[metric]}-budget: expected a positive number, found {text!r}") from None
    if v <= 0:
        raise ValueError(f"--{SHORT[metric]}-budget: expected a positive number, found {text!r}")
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
        return {"value": round(self.value, 6), "unit": UNITS[self.metric], "basis": self.basis,
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

    def describe(self) -> str:
        parts = [f"{SHORT[m]} <= {b.value:.4g} {UNITS[m]} [{b.basis}]" for m, b in self.budgets.items()]
        return f"{self.device}: " + ("; ".join(parts) if parts else "no budget")


def resolve(profile: DeviceProfile, baseline: Cost, requests: dict[str, BudgetRequest] | None = None,
            *, default_relative: dict[str, float] | None = None) -> DeviceBudgets:
    """Absolute budgets on ``profile`` from the user's requests, the profile and the baseline's cost there."""
    requests = requests or {}
    defaults = DEFAULT_RELATIVE if default_relative is None else default_relative
    out = DeviceBudgets(profile.name, profile.budgets.batch_size)
    for metric in METRICS:
        fig = getattr(baseline, metric)
        base = None if fig is None else float(fig.value)
        src = "" if fig is None else fig.source
        req = requests.get(metric)
        if req is not None and req.relative:
            if base is None:
                raise ValueError(f"--{SHORT[metric]}-budget {req}: the baseline has no {metric} figure on {profile.name}")
            out.budgets[metric] = ResolvedBudget(metric, req.value * base, f"{req.value:g}x baseline ({src} {base:.4g} {UNITS[metric]})",
                                                 req.value, base)
        elif req is not None:
            out.budgets[metric] = ResolvedBudget(metric, req.value, "--" + SHORT[metric] + "-budget", None, base)
        else:
            absolute = getattr(profile.budgets, metric)
            if absolute is not None and (base is None or base > absolute):
                out.budgets[metric] = ResolvedBudget(metric, float(absolute), f"profile budgets.{metric}", None, base)
            elif metric in defaults and base is not None:
                ratio = defaults[metric]
                out.budgets[metric] = ResolvedBudget(metric, ratio * base, f"default {ratio:g}x baseline ({src} {base:.4g} {UNITS[metric]})",
                                                     ratio, base)
                if absolute is not None:
                    out.notes.append(f"profile budgets.{metric} = {absolute:g} {UNITS[metric]} does not bind "
                                     f"(the baseline needs {base:.4g}): applied {ratio:g}x baseline instead")
            elif absolute is not None:
                out.budgets[metric] = ResolvedBudget(metric, float(absolute), f"profile budgets.{metric}", None, base)
    return out


def violation(value: float, budget: float) -> float:
    """Constraint value for Optuna: ``cost / budget - 1`` (<= 0 feasible).

    Same sign as ``cost - budget``, but unit-free, so TPE's sum of violations weighs a 10% excess
    of latency like a 10% excess of memory.
    """
    return float(value) / float(budget) - 1.0
