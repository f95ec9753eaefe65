"""Measured block residuals: how far the roofline form is from the profile's timed ViT blocks.

The roofline form (``rep_tune.cost.latency.Rates``) fits one efficiency per class (matmul,
attention, elementwise) for every size. On CPUs and small GPUs the efficiency moves with the sizes:
a 64-wide block over 17 tokens reaches a fraction of what a 384-wide block over 197 tokens does, so
one fit misses small and large blocks in opposite directions (issue 16: median 16 %, p90 43 % on
the calibration's own runs, and -8 % mean signed on held-out training iterations).

Like nn-Meter's kernel lookup, the timed blocks ``rep-tune profile`` records (``calibration.runs``:
a grid of widths, batch sizes and token counts) are kept as a table of ratios, measured / roofline,
forward and forward + backward. A block of width ``D`` over ``R`` token-rows (batch x tokens) is
priced at its roofline time times the ratio interpolated piecewise-linearly in log R (held
constant beyond the grid's ends) and in log D between the two nearest widths; a width outside the
timed ones is priced by the roofline alone. The roofline still
carries what the grid does not vary (prompt prefixes in the keys, merged MLP tokens, eager
attention); the table carries the size-dependent efficiency. The same ``Work`` arithmetic prices
the runs and the configs, so a profile's own runs are reproduced exactly.

Only runs at the priced dtype are used (a bf16 calibration says nothing about fp32 blocks); with
none, ``table`` returns None and the roofline prices alone.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

from rep_tune.cost.calibrate import LAUNCHES_BACKWARD_START, run_work
from rep_tune.cost.work import Work

FWD, FWD_BWD = 0, 1


@dataclass(frozen=True)
class RunKey:
    """The parts of a calibration run the table needs (hashable, so tables are memoised)."""

    batch: int
    tokens: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    blocks: int
    fwd_ms: float
    fwd_bwd_ms: float
    dtype: str
    autocast: bool

    @staticmethod
    def of(run) -> "RunKey":
        return RunKey(run.batch, run.tokens, run.embed_dim, run.num_heads, float(run.mlp_ratio), run.blocks,
                      float(run.fwd_ms), float(run.fwd_bwd_ms), run.dtype or "fp32", bool(getattr(run, "autocast", False)))

    def work(self) -> tuple[Work, Work]:
        """(forward, forward + backward) work of the run's blocks, exactly as ``rep_tune.cost.calibrate`` fits them."""
        f, b = run_work(self)
        return f, f + b + Work(launches=LAUNCHES_BACKWARD_START)


@dataclass(frozen=True)
class ResidualTable:
    """Per width (sorted), the log token-rows (sorted) and the measured / roofline ratio of each pass."""

    widths: tuple[int, ...]
    rows: tuple[tuple[float, ...], ...]                      # log(batch x tokens), per width
    ratios: tuple[tuple[tuple[float, float], ...], ...]      # (fwd, fwd+bwd), per width and row

    def ratio(self, width: float, rows: float, kind: int) -> float:
        """Measured / roofline for a block of ``width`` over ``rows`` token-rows; ``kind`` FWD or FWD_BWD.

        1.0 (the roofline alone) for a width outside the timed ones: efficiency keeps moving with the
        width, so the nearest ratio would be a guess; the profiler times the widths of the backbones
        it knows (``rep_tune.profiler.probe``)."""
        ws = self.widths
        if not ws or width < ws[0] or width > ws[-1]:
            return 1.0
        lr = math.log(max(rows, 1.0))
        j = bisect_left(ws, width)
        if ws[j] == width:
            return self._along(j, lr, kind)
        a, b = math.log(ws[j - 1]), math.log(ws[j])
        w = (math.log(width) - a) / (b - a)
        return (1 - w) * self._along(j - 1, lr, kind) + w * self._along(j, lr, kind)

    def _along(self, i: int, lr: float, kind: int) -> float:
        xs, ys = self.rows[i], self.ratios[i]
        if lr <= xs[0]:
            return ys[0][kind]
        if lr >= xs[-1]:
            return ys[-1][kind]
        j = bisect_left(xs, lr)
        if xs[j] == lr:
            return ys[j][kind]
        w = (lr - xs[j - 1]) / (xs[j] - xs[j - 1])
        return (1 - w) * ys[j - 1][kind] + w * ys[j][kind]


def table(profile, rates, dtype: str) -> ResidualTable | None:
    """The residual table of a calibrated ``profile`` at ``dtype`` for ``rates`` (its roofline), or None
    (uncalibrated, or no run at that dtype with both passes timed)."""
    cal = profile.calibration if profile.calibrated else None
    if cal is None:
        return None
    keys = tuple(RunKey.of(r) for r in cal.runs
                 if (r.dtype or "fp32") == dtype and r.fwd_ms > 0 and r.fwd_bwd_ms > 0)
    return _build(keys, rates) if keys else None


@lru_cache(maxsize=64)
def _build(keys: tuple[RunKey, ...], rates) -> ResidualTable | None:
    per: dict[int, dict[float, list[tuple[float, float]]]] = {}
    for k in keys:
        f, fb = k.work()
        tf, tfb = rates.time(f), rates.time(fb)
        if tf <= 0 or tfb <= 0:
            continue
        lr = math.log(k.batch * k.tokens)
        per.setdefault(k.embed_dim, {}).setdefault(lr, []).append((k.fwd_ms / tf, k.fwd_bwd_ms / tfb))
    if not per:
        return None
    widths = tuple(sorted(per))
    rows, ratios = [], []
    for w in widths:
        xs = sorted(per[w])
        rows.append(tuple(xs))
        # several runs at one row count (e.g. 8 x 90 and 16 x 45): their geometric mean
        ratios.append(tuple(tuple(math.exp(sum(math.log(v[kind]) for v in per[w][x]) / len(per[w][x]))
                                  for kind in (FWD, FWD_BWD)) for x in xs))
    return ResidualTable(widths, tuple(rows), tuple(ratios))


__all__ = ["FWD", "FWD_BWD", "ResidualTable", "RunKey", "table"]
