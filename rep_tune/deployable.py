"""The deployable part of a config: ``target``, ``expected`` and ``provenance``, typed.

``rep-tune search`` writes them into ``best_<device>.yaml``; ``rep-tune verify`` compares a
device's measurements with ``expected`` and ``target.budgets``; the exporters and ``verify``
read ``target.deployment``'s schedule. All three read these types (``RepConfig.target`` etc.),
so a malformed field is refused when the file is loaded, naming the file and the field, before
any work starts; nothing parses these sections by hand.

The metric-named fields (``latency_ms``, ``peak_memory_mb``, ``energy_j``) are the metric
registry's names (``rep_tune.figures.METRICS``): the check at the bottom of this module keeps
the two in step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from rep_tune.figures import METRICS
from rep_tune.schema import SchemaError, check

SOURCES = ("measured", "predicted", "estimated")


@dataclass
class ExpectedFigure:
    """One figure the search expects on the target: its value, unit and where it comes from.

    ``accuracy``: for accuracies, ``direct`` (measured on the deployed backbone) or ``proxy``;
    ``ci95``/``seeds``/``test_images``: a confirmed accuracy's interval and what it rests on.
    """

    value: float
    unit: str
    source: Literal["measured", "predicted", "estimated"]
    detail: str = ""
    machine: str = ""
    accuracy: Literal["direct", "proxy"] | None = None
    ci95: list[float] | None = None
    seeds: list[int] | None = None
    test_images: int | None = None
    proxy: dict[str, Any] | None = None

    def to_figure(self):
        """As a ``figures.Figure`` (what verify compares measurements with)."""
        from rep_tune.figures import Figure
        return Figure(self.value, self.unit, self.source, self.detail, self.machine)


@dataclass
class Expected:
    """What the search expects of the deployed config (``expected:``).

    ``final_acc``: the answer's accuracy (the confirmed test accuracy when confirmed, else the
    search's score); ``search_acc``: the search's own score beside a confirmed one; one figure per
    cost metric on the target; ``gain_over_<role>``: deltas and ratios against the paper preset /
    baseline trials; ``confirmed``: the confirmation stage's figures (``search.confirm``).
    """

    final_acc: ExpectedFigure | None = None
    forgetting: ExpectedFigure | None = None
    search_acc: ExpectedFigure | None = None
    latency_ms: ExpectedFigure | None = None
    peak_memory_mb: ExpectedFigure | None = None
    energy_j: ExpectedFigure | None = None
    gain_over_paper: dict[str, Any] | None = None
    gain_over_baseline: dict[str, Any] | None = None
    confirmed: dict[str, Any] | None = None

    def figure(self, metric: str) -> ExpectedFigure | None:
        """The expected figure of cost metric ``metric`` (a ``METRICS`` name), None when absent."""
        return getattr(self, metric)

    def validate(self, source: str | None, prefix: str = "expected") -> None:
        for m in METRICS:
            fig = self.figure(m)
            if fig is not None:
                check(fig.value > 0, source, f"{prefix}.{m}.value", "a finite number > 0", fig.value)


@dataclass
class TargetBudget:
    """One budget as the search resolved it: absolute ``value`` in ``unit`` (empty: the metric's unit
    in ``figures.METRICS``), and why (``basis``); ``relative``: the ratio asked for (None for an
    absolute budget), of ``baseline``'s cost."""

    value: float
    unit: str = ""
    basis: str = ""
    relative: float | None = None
    baseline: float | None = None


@dataclass
class TargetBudgets:
    """The budgets the config was chosen under (``target.budgets``), at ``batch_size``."""

    batch_size: int | None = None
    latency_ms: TargetBudget | None = None
    peak_memory_mb: TargetBudget | None = None
    energy_j: TargetBudget | None = None
    notes: list[str] = field(default_factory=list)

    def limits(self) -> dict[str, TargetBudget]:
        """Metric -> budget, for the metrics that have one."""
        return {m: b for m in METRICS if (b := getattr(self, m)) is not None}


@dataclass
class DeployTarget:
    """The device the config was chosen for (``target:``): the profile's name and path, its kind,
    the budgets, and the deployment workload (backbone, schedule, iterations per task)."""

    device: str
    profile: str | None = None
    kind: str | None = None
    budgets: TargetBudgets = field(default_factory=TargetBudgets)
    deployment: dict[str, Any] = field(default_factory=dict)

    def validate(self, source: str | None, prefix: str = "target") -> None:
        check(self.budgets.batch_size is None or self.budgets.batch_size >= 1, source,
              f"{prefix}.budgets.batch_size", "an int >= 1, or null", self.budgets.batch_size)
        for m, b in self.budgets.limits().items():
            check(b.value > 0, source, f"{prefix}.budgets.{m}.value", "a finite number > 0", b.value)


@dataclass
class Provenance:
    """Where the config came from: rep-tune's version, the study and trial, the profile (with its
    checksum), the search space, sampler and seed, the search's fidelity, host and date."""

    rep_tune_version: str
    study_name: str | None = None
    storage: str | None = None
    trial: int | None = None
    config_hash: str | None = None
    profile: str | None = None
    profile_checksum: str | None = None
    search_space: str | None = None
    sampler: str | None = None
    seed: int | None = None
    search_fidelity: dict[str, Any] | None = None
    host: str | None = None
    date: str | None = None


for _cls in (Expected, TargetBudgets):   # a metric added to the registry needs its field here
    _missing = set(METRICS) - {f.name for f in dataclasses.fields(_cls)}
    if _missing:
        raise SchemaError(None, _cls.__name__, "a field per metric of figures.METRICS", sorted(_missing))
