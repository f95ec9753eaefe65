"""The arithmetic of AToM and ALD schedules, shared by the runtime and the cost model.

Pure Python on purpose: the runtime applies these numbers to tensors, the cost model counts
with them, and both must agree to the token.
"""
from __future__ import annotations

import math
from typing import Sequence


def ramp(r: int, depth: int, inflect: float = 1.0) -> list[int]:
    """Per-block merge counts of ToMe's ``parse_r((r, inflect))``; inflect=1 is REP's linear ramp 0..2r."""
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / (depth - 1) if depth > 1 else 0.0
    return [int(lo + step * i) for i in range(depth)]


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


def keep_probabilities(t: int, merge: Sequence[int], mergeable: int, theta_min: float, gamma: float,
                       tau: int, alpha: float, protected_blocks: Sequence[int] = (), kind: str = "ald") -> list[float]:
    """Keep probability of every block at iteration t; protected blocks always run (1.0).

    ``kind`` 'ald' is REP's adaptive layer dropping, 'pld' DeepSpeed's progressive layer dropping.
    """
    theta_t = (1.0 - theta_min) * math.exp(-gamma * t) + theta_min
    return _keep_all(theta_t, merge, mergeable, tau, alpha, protected_blocks, kind)


def mean_keep_probabilities(iterations: int, merge: Sequence[int], mergeable: int, theta_min: float,
                            gamma: float, tau: int, alpha: float, protected_blocks: Sequence[int] = (),
                            kind: str = "ald") -> list[float]:
    """Per-block keep probability averaged over iterations t = 0..iterations-1 (closed form).

    Both schedules are linear in theta(t), so the mean uses the mean of exp(-gamma t).
    """
    n = max(1, iterations)
    # mean of exp(-gamma t) over t = 0..n-1
    decay = 1.0 if gamma == 0 else (1 - math.exp(-gamma * n)) / (n * (1 - math.exp(-gamma)))
    return _keep_all((1 - theta_min) * decay + theta_min, merge, mergeable, tau, alpha, protected_blocks, kind)
