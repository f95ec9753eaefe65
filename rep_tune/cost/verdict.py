"""Verdict: does a predicted cost fit a device's budgets, and by how much is it over."""
from __future__ import annotations

from dataclasses import dataclass, field

from rep_tune.figures import METRICS


@dataclass
class BudgetCheck:
    """One budget against one predicted figure."""

    name: str                 # a registered metric (rep_tune.figures.METRICS)
    budget: float
    predicted: float | None   # None when the cost has no figure for this budget
    unit: str
    source: str | None
    ratio: float | None       # predicted / budget
    fits: bool                # predicted * (1 + margin) <= budget; False when there is no figure
    over_by: float            # predicted - budget/(1 + margin), 0 when it fits (absolute, in unit)

    def __str__(self) -> str:
        if self.predicted is None:
            return f"{self.name}: budget {self.budget:g} {self.unit}, no prediction -> cannot confirm"
        state = "fits" if self.fits else f"over by {self.over_by:.4g} {self.unit} ({100 * (self.ratio - 1):+.1f}%)"
        return (f"{self.name}: {self.predicted:.4g} / {self.budget:g} {self.unit} "
                f"({100 * self.ratio:.1f}% of budget, {self.source}) -> {state}")


@dataclass
class Verdict:
    """Per-budget checks; ``fits`` only when every set budget is met. Unset budgets do not constrain."""

    checks: list[BudgetCheck] = field(default_factory=list)
    margin: float = 0.0
    batch_size: int | None = None   # batch size the cost was predicted at (the budget's)

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.checks)

    def __str__(self) -> str:
        head = f"verdict: {'FITS' if self.fits else 'DOES NOT FIT'}"
        if self.batch_size is not None:
            head += f" (at the budget's batch size {self.batch_size})"
        if self.margin:
            head += f", margin {100 * self.margin:g}%"
        return "\n".join([head] + [f"  {c}" for c in self.checks] +
                         ([] if self.checks else ["  no budgets set: nothing constrains"]))


def verdict(cost, budgets, margin: float = 0.0) -> Verdict:
    """Check ``cost`` against ``budgets`` (a device.Budgets). Exactly at the budget fits.

    Every set budget of every registered metric is checked (``budgets.items()`` iterates
    ``rep_tune.figures.METRICS``); a budget whose metric ``cost`` has no figure for cannot be
    confirmed and does not fit.

    ``margin`` is the headroom required: a figure fits when figure * (1 + margin) <= budget.
    ``cost`` should be predicted at ``budgets.batch_size`` (see ``check``).
    """
    checks = []
    for name, limit in budgets.items():
        unit = METRICS[name].unit
        fig = cost.get(name)
        if fig is None:
            checks.append(BudgetCheck(name, limit, None, unit, None, None, False, float("nan")))
            continue
        need = fig.value * (1.0 + margin)
        fits = need <= limit
        checks.append(BudgetCheck(name, limit, fig.value, unit, fig.source, fig.value / limit, fits,
                                  0.0 if fits else need - limit))
    batch = cost.extras.get("batch_size") if cost.extras else None
    return Verdict(checks, margin, int(batch) if batch else None)


def check(config, profile, margin: float = 0.0, **predict_kwargs) -> tuple[object, Verdict]:
    """Predict ``config`` at the budget's batch size on ``profile`` and judge it: (cost, verdict)."""
    from rep_tune.cost.model import predict
    cost = predict(config, profile, batch=profile.budgets.batch_size, **predict_kwargs)
    return cost, verdict(cost, profile.budgets, margin)
