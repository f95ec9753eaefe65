"""ALD: adaptive layer dropping; which blocks run at a training iteration.

Keep probabilities come from ``rep_tune.schedule`` (the cost model uses the same numbers).
Draws come from a private seeded CPU generator: the same seed and the same sequence of
training forwards give the same drop pattern, whatever else uses the global RNG.

A dropped block is skipped whole, its merges included: later blocks then see more tokens than
``schedule.tokens_per_block`` plans, and the cost model adds the expected un-made merges.
``ald.schedule: pld`` swaps REP's keep probability for DeepSpeed's progressive layer dropping.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rep_tune.config import AldConfig
from rep_tune.schedule import keep_probabilities


class LayerDropper:
    """Samples, per training iteration, which blocks run (True) or are skipped as identity (False)."""

    def __init__(self, cfg: AldConfig, merge: Sequence[int], mergeable: int,
                 protected_blocks: Sequence[int] = (), seed: int = 0) -> None:
        self.cfg = cfg
        self.merge, self.mergeable = list(merge), int(mergeable)
        self.protected = sorted(set(protected_blocks))
        self.depth = len(self.merge)
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.pattern: list[bool] | None = None

    def fix(self, pattern: Sequence[bool] | None) -> None:
        """Run exactly ``pattern`` (one bool per block) at every iteration instead of drawing; None
        draws again. For measurements that must not depend on the draws (benchmarks, profiling):
        a fixed pattern is what ``rep_tune.cost.predict(..., keep=pattern)`` prices."""
        if pattern is not None and len(pattern) != self.depth:
            raise ValueError(f"LayerDropper.fix: expected {self.depth} entries (one per block), found {len(pattern)}")
        self.pattern = None if pattern is None else [bool(x) for x in pattern]

    def probabilities(self, t: float) -> list[float]:
        """Keep probability of every block at iteration t (1.0 for prompt-carrying blocks, or ALD off).

        ``t`` is the schedule's iteration: the learner maps its own iteration onto ``ald.horizon``
        (``rep_tune.schedule.schedule_time``) before it asks.
        """
        if not self.cfg.enabled:
            return [1.0] * self.depth
        c = self.cfg
        return keep_probabilities(t, self.merge, self.mergeable, c.theta_min, c.gamma, c.tau, c.alpha,
                                  self.protected, kind=c.schedule)

    def sample(self, t: float) -> list[bool]:
        """Bernoulli(theta(t, l)) per block; draws one number per block every call (fixed stream use).
        With a fixed pattern (``fix``), that pattern, and no draw."""
        if self.pattern is not None:
            return list(self.pattern)
        p = self.probabilities(t)
        if not self.cfg.enabled:
            return [True] * self.depth
        u = torch.rand(self.depth, generator=self.generator).tolist()
        return [pi >= 1.0 or ui < pi for ui, pi in zip(u, p)]
