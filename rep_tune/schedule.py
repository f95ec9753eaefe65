"""The arithmetic of AToM and ALD schedules, shared by the runtime and the cost model.

Pure Python on purpose: the runtime applies these numbers to tensors, the cost model counts
with them, and both must agree to the token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


def iterations_per_task(images: int, batch: int, epochs: int, cap: int | None = None) -> int:
    """Training iterations of one task: ``epochs`` passes of ceil(images / batch) iterations (the
    last batch of a pass may be short), capped at ``cap``. The one count the learner runs, the
    cost model prices and a deployment's files state."""
    n = max(1, int(epochs)) * -(-int(images) // int(batch))
    return min(n, int(cap)) if cap else n


def ramp(r: int, depth: int, inflect: float = 1.0) -> list[int]:
    """Per-block merge counts of ToMe's ``parse_r((r, inflect))``; inflect=1 is REP's linear ramp 0..2r."""
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / (depth - 1) if depth > 1 else 0.0
    return [int(lo + step * i) for i in range(depth)]


# ToMe inflections ``fit_ramp`` tries, in order of preference (ties keep the earlier one):
# 1 = REP's increasing ramp 0..2r, 0 = ToMe's constant r, -1 = decreasing 2r..0, then the halves.
# The integers come first because they are what the REP reference runtime can express
# (``--scheduling_factor`` is declared ``type=int``).
INFLECTS: tuple[float, ...] = (1.0, 0.0, -1.0, 0.5, -0.5)
INTEGER_INFLECTS: tuple[float, ...] = tuple(i for i in INFLECTS if i == int(i))


@dataclass(frozen=True)
class RampFit:
    """The ToMe ramp ``ramp(r, depth, inflect)`` that best matches a per-block schedule.

    ``diff`` is schedule minus ramp, per block; ``exact`` when it is all zeros.
    """

    r: int
    inflect: float
    ramp: tuple[int, ...]
    diff: tuple[int, ...]

    @property
    def exact(self) -> bool:
        return not any(self.diff)

    def describe(self) -> str:
        return f"ramp(r={self.r}, depth={len(self.ramp)}, inflect={self.inflect:g}) = {list(self.ramp)}"


def fit_ramp(schedule: Sequence[int], inflects: Sequence[float] = INFLECTS,
             span: tuple[float, float] | None = None) -> RampFit:
    """Invert :func:`ramp`: the (r, inflect) whose ramp equals ``schedule``, else the closest one.

    The one inversion of ToMe's ``parse_r((r, inflect))`` in rep-tune: the search space reads a
    config's schedule back into (r, inflect) with it, and the exporters name the flags with it, so
    both always name the same pair. Preference: an exact match with an inflection of ``inflects``
    first (several pairs can give the same integer counts, e.g. ramp(1, 12, 0.5) == ramp(1, 12, 1.0):
    the earlier inflection of ``inflects``, then the smaller r wins); then, when ``span`` is given
    (a continuous range of inflections, as a search space's ``atom.inflect``), an exact match with
    any inflection in it; otherwise the closest ramp of ``inflects``: least L1 distance, then least
    largest per-block error, ties again broken by ``inflects`` order and then the smaller r.
    """
    sched = [int(v) for v in schedule]
    if not inflects and span is None:
        raise ValueError("fit_ramp: give inflections to try, a span, or both")
    if not sched:
        return RampFit(0, float(inflects[0]) if inflects else float(span[1]), (), ())
    best = _fit_listed(sched, inflects) if inflects else None
    if best is not None and (best.exact or span is None):
        return best
    return _fit_span(sched, span) or best or _fit_listed(sched, span)


def _fit_span(sched: list[int], span: tuple[float, float]) -> RampFit | None:
    """The exact ramp with an inflection in ``span``, if any. A ramp is fixed by its first count
    lo = int(r (1 - inflect)) and r: the first and last counts give r, and lo an interval of inflections."""
    depth, lo = len(sched), sched[0]
    for r in sorted({(sched[0] + sched[-1]) // 2, (sched[0] + sched[-1] + 1) // 2}):
        if r <= 0:
            continue
        top, bottom = 1 - lo / r, 1 - (lo + 1) / r           # r (1 - inflect) in [lo, lo + 1)
        a, b = max(bottom, span[0]), min(top, span[1])
        for inflect in (round(b, 6), b, (a + b) / 2, round((a + b) / 2, 6)):
            if a <= inflect <= b and ramp(r, depth, inflect) == sched:
                return RampFit(r, float(inflect), tuple(sched), (0,) * depth)
    return None


def _fit_listed(sched: list[int], inflects: Sequence[float]) -> RampFit:
    depth = len(sched)
    best: tuple[tuple[int, int], RampFit] | None = None
    r_max = 2 * max(sched) + 2           # covers every ramp whose counts can reach the schedule's
    for inflect in inflects:
        for r in range(r_max + 1):
            cand = ramp(r, depth, float(inflect))
            diff = tuple(s - c for s, c in zip(sched, cand))
            key = (sum(abs(d) for d in diff), max(abs(d) for d in diff))
            if best is None or key < best[0]:
                best = (key, RampFit(r, float(inflect), tuple(cand), diff))
                if key[0] == 0:
                    return best[1]
    assert best is not None
    return best[1]


def effective_merges(merge: Sequence[int], mergeable: int) -> list[int]:
    """Merges each block can really make: bipartite matching merges at most half the eligible tokens.

    ``mergeable`` is the number of tokens eligible to merge entering the first block (patches,
    plus prompts when they are not protected). Returns one count per block.
    """
    out, n = [], mergeable
    for r in merge:
        k = max(0, min(int(r), n // 2))
        out.append(k)
        n -= k
    return out


def tokens_per_block(n_protected: int, mergeable: int, merge: Sequence[int]) -> list[int]:
    """Tokens entering each block (protected + still-unmerged eligible tokens)."""
    out, n = [], mergeable
    for k in effective_merges(merge, mergeable):
        out.append(n_protected + n)
        n -= k
    return out


def merged_before(merge: Sequence[int], mergeable: int) -> list[int]:
    """Tokens merged by AToM in the blocks before each block (the quantity ALD compares with tau)."""
    out, total = [], 0
    for k in effective_merges(merge, mergeable):
        out.append(total)
        total += k
    return out


def keep_probability(t: int, merged: int, theta_min: float, gamma: float, tau: int, alpha: float) -> float:
    """ALD keep probability theta(t, l) = alpha(l) * ((1 - theta_min) * exp(-gamma t) + theta_min).

    alpha(l) = alpha when the tokens merged up to block l exceed tau, else 1.
    """
    a = alpha if merged > tau else 1.0
    return a * ((1.0 - theta_min) * math.exp(-gamma * t) + theta_min)


def pld_keep_probability(theta_t: float, block: int, depth: int) -> float:
    """DeepSpeed progressive layer dropping: block i (0-based) of L keeps 1 - (i + 1) / L * (1 - theta(t)).

    theta(t) = (1 - theta_min) * exp(-gamma t) + theta_min falls over time; the keep probability
    falls linearly with depth, the last block reaching theta(t). No token-dependent term.
    """
    return 1.0 - (block + 1) / depth * (1.0 - theta_t)


def _keep_all(theta_t: float, merge: Sequence[int], mergeable: int, tau: int, alpha: float,
              protected_blocks: Sequence[int], kind: str) -> list[float]:
    prot, depth = set(protected_blocks), len(merge)
    if kind == "pld":
        return [1.0 if i in prot else pld_keep_probability(theta_t, i, depth) for i in range(depth)]
    if kind != "ald":
        raise ValueError(f"ald.schedule: expected 'ald' or 'pld', found {kind!r}")
    return [1.0 if i in prot else (alpha if m > tau else 1.0) * theta_t
            for i, m in enumerate(merged_before(merge, mergeable))]


def horizon_scale(horizon: int | None, iterations: int) -> float:
    """How many of the schedule's iterations one run iteration stands for: ``horizon / iterations``.

    ``ald.horizon`` lays the keep schedule over a task of ``horizon`` iterations (the deployment's)
    while the run trains ``iterations`` per task (the search's proxy: far fewer), so both see the
    same keep probability at the same fraction of the task. None (or equal lengths): 1.
    """
    if not horizon or iterations <= 0:
        return 1.0
    return float(horizon) / float(iterations)


def schedule_time(t: float, scale: float = 1.0) -> float:
    """The schedule's iteration that run iteration ``t`` stands for: the middle of its span,
    (t + 0.5) * scale - 0.5, so that a short run's mean keep probability equals the long run's
    (to second order in gamma * scale); exactly ``t`` at scale 1."""
    return t if scale == 1.0 else (t + 0.5) * scale - 0.5


def keep_probabilities(t: float, merge: Sequence[int], mergeable: int, theta_min: float, gamma: float,
                       tau: int, alpha: float, protected_blocks: Sequence[int] = (), kind: str = "ald",
                       scale: float = 1.0) -> list[float]:
    """Keep probability of every block at iteration t; protected blocks always run (1.0).

    ``kind`` 'ald' is REP's adaptive layer dropping, 'pld' DeepSpeed's progressive layer dropping.
    ``scale`` (``horizon_scale``): t is a run iteration standing for ``scale`` schedule iterations.
    """
    theta_t = (1.0 - theta_min) * math.exp(-gamma * schedule_time(t, scale)) + theta_min
    return _keep_all(theta_t, merge, mergeable, tau, alpha, protected_blocks, kind)


def mean_keep_probabilities(iterations: int, merge: Sequence[int], mergeable: int, theta_min: float,
                            gamma: float, tau: int, alpha: float, protected_blocks: Sequence[int] = (),
                            kind: str = "ald", scale: float = 1.0) -> list[float]:
    """Per-block keep probability averaged over iterations t = 0..iterations-1 (closed form).

    Both schedules are linear in theta(t), so the mean uses the mean of exp(-gamma t'), with
    t' = schedule_time(t, scale) = (t + 0.5) scale - 0.5.
    """
    n = max(1, iterations)
    g = gamma * scale
    # mean of exp(-gamma ((t + 0.5) scale - 0.5)) over t = 0..n-1
    offset = math.exp(-gamma * (0.5 * scale - 0.5))
    decay = offset * (1.0 if g == 0 else (1 - math.exp(-g * n)) / (n * (1 - math.exp(-g))))
    return _keep_all((1 - theta_min) * decay + theta_min, merge, mergeable, tau, alpha, protected_blocks, kind)
