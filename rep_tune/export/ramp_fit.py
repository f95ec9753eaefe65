"""Which ToMe ramp ``parse_r((r, inflect))`` a per-layer merge schedule is, or is closest to.

The REP reference runtime takes only ``--r`` and ``--scheduling_factor`` (ToMe's inflection), so
a per-layer schedule is expressible there exactly when it equals ``ramp(r, depth, inflect)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rep_tune.schedule import ramp

# Inflections tried, in order of preference (the first exact match wins):
# 1 = REP's increasing ramp 0..2r, 0 = ToMe's constant r, 0.5 = r/2..3r/2, negatives decrease.
INFLECTS: tuple[float, ...] = (1.0, 0.0, 0.5, -0.5, -1.0)


@dataclass(frozen=True)
class RampFit:
    """The best ramp for a schedule; ``diff`` is schedule minus ramp, per layer."""

    r: int
    inflect: float
    ramp: list[int]
    diff: list[int]

    @property
    def exact(self) -> bool:
        return not any(self.diff)

    def describe(self) -> str:
        return f"--r {self.r} --scheduling_factor {self.inflect} (ramp({self.r}, {len(self.ramp)}, {self.inflect}) = {self.ramp})"


def fit_ramp(schedule: Sequence[int], inflects: Sequence[float] = INFLECTS) -> RampFit:
    """Exact ramp when one exists, else the closest: least L1 distance, then least max error.

    Ties keep the earlier inflection of ``inflects`` and the smaller r.
    """
    sched = [int(v) for v in schedule]
    depth = len(sched)
    if depth == 0:
        return RampFit(0, 1.0, [], [])
    best: tuple[tuple[int, int], RampFit] | None = None
    r_max = 2 * max(sched) + 2           # covers every ramp whose counts can reach the schedule's
    for inflect in inflects:
        for r in range(r_max + 1):
            cand = ramp(r, depth, inflect)
            diff = [s - c for s, c in zip(sched, cand)]
            key = (sum(abs(d) for d in diff), max(abs(d) for d in diff))
            if best is None or key < best[0]:
                best = (key, RampFit(r, float(inflect), cand, diff))
            if key[0] == 0:
                return best[1]
    assert best is not None
    return best[1]
