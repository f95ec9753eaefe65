"""Measured block residuals: how far the roofline form is from the profile's timed ViT blocks.

The roofline form (``rep_tune.cost.latency.Rates``) fits one efficiency per class (matmul,
attention, elementwise) for every size. On CPUs and small GPUs the efficiency moves with the sizes:
a 64-wide block over 17 tokens reaches a fraction of what a 384-wide block over 197 tokens does, so
one fit misses small and large blocks in opposite directions (issue 16: median 16 %, p90 43 % on
the calibration's own runs, and -8 % mean signed on held-out training iterations).

Like nn-Meter's kernel lookup, the timed blocks ``rep-tune profile`` records (``calibration.runs``:
a grid of widths, batch sizes and token counts) are kept as a table of ratios, measured / roofline,
forward and forward + backward. A block of width ``D`` over ``B`` sequences of ``N`` tokens is
priced at its roofline time times the ratio interpolated piecewise-linearly in log N along each
timed batch size, then in log B between the two nearest batch sizes, then in log D between the two
nearest widths (held constant beyond the grid's ends in N and B); a width outside the timed ones is
priced by the roofline alone. Batch and tokens stay two axes: an earlier form folded them into one
row count (B x N) and interleaved runs whose efficiency differs by 2x (issue 16). The roofline still
carries what the grid does not vary (prompt prefixes in the keys, merged MLP tokens, eager
attention); the table carries the size-dependent efficiency. The same ``Work`` arithmetic prices
the runs and the configs, so a profile's own runs are reproduced exactly.

Only runs at the priced dtype are used (a bf16 calibration says nothing about fp32 blocks); with
none, ``table`` returns None and the roofline prices alone.

AToM's merges get a table of their own (``merge_table``) from the profile's timed merges
(``calibration.merges``), over width, batch and the tokens the merge matches: their argsort,
gathers and scatters run far from the block grid's efficiencies (on the AMD host, configs that
merge were under-predicted by ~10 % while those that do not were within 1 % on average,
``benchmarks/results/cost_model_vm_amd_b32.csv``).
"""
from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

from rep_tune.cost.runs import merge_run_passes, run_passes
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
        return run_passes(self)


def _lerp(xs: tuple[float, ...], ys: tuple, x: float, kind: int | None = None) -> float:
    """Piecewise-linear ys(x) over sorted xs, held constant beyond the ends (``kind`` picks a pass)."""
    pick = (lambda y: y[kind]) if kind is not None else (lambda y: y)
    if x <= xs[0]:
        return pick(ys[0])
    if x >= xs[-1]:
        return pick(ys[-1])
    j = bisect_left(xs, x)
    if xs[j] == x:
        return pick(ys[j])
    w = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
    return (1 - w) * pick(ys[j - 1]) + w * pick(ys[j])


@dataclass(frozen=True)
class WidthGrid:
    """The timed runs of one width: per batch size (sorted, as logs), the log token counts (sorted)
    and the (fwd, fwd+bwd) measured / roofline ratio at each."""

    batches: tuple[float, ...]                                   # log batch
    tokens: tuple[tuple[float, ...], ...]                        # log tokens, per batch
    ratios: tuple[tuple[tuple[float, float], ...], ...]          # per batch and token count

    def ratio(self, lb: float, ln: float, kind: int) -> float:
        """Linear in log tokens along each timed batch size, then linear in log batch between the two
        nearest batch sizes (constant beyond the grid's ends)."""
        along = tuple(_lerp(xs, ys, ln, kind) for xs, ys in zip(self.tokens, self.ratios))
        return _lerp(self.batches, along, lb)


@dataclass(frozen=True)
class ResidualTable:
    """Per timed width (sorted), the grid of measured / roofline ratios over batch size and tokens.

    Batch and tokens are kept apart: at one batch x tokens product, a block over many short
    sequences and one over few long ones differ in attention's share and in how the kernels tile
    (on this repository's 2-core host the fwd+bwd ratio is ~1.0 at 197 tokens and ~2 at 17-90 tokens,
    batch 8-16: folding the two into one row count interleaves them)."""

    widths: tuple[int, ...]
    grids: tuple[WidthGrid, ...]

    def ratio(self, width: float, batch: float, tokens: float, kind: int) -> float:
        """Measured / roofline for a block of ``width`` over ``batch`` sequences of ``tokens``;
        ``kind`` FWD or FWD_BWD.

        1.0 (the roofline alone) for a width outside the timed ones: efficiency keeps moving with the
        width, so the nearest ratio would be a guess; the profiler times the widths of the backbones
        it knows (``rep_tune.profiler.probe``)."""
        ws = self.widths
        if not ws or width < ws[0] or width > ws[-1]:
            return 1.0
        lb, ln = math.log(max(batch, 1.0)), math.log(max(tokens, 1.0))
        j = bisect_left(ws, width)
        if ws[j] == width:
            return self.grids[j].ratio(lb, ln, kind)
        a, b = math.log(ws[j - 1]), math.log(ws[j])
        w = (math.log(width) - a) / (b - a)
        return (1 - w) * self.grids[j - 1].ratio(lb, ln, kind) + w * self.grids[j].ratio(lb, ln, kind)


def table(profile, rates, dtype: str) -> ResidualTable | None:
    """The residual table of a calibrated ``profile`` at ``dtype`` for ``rates`` (its roofline), or None
    (uncalibrated, or no run at that dtype with both passes timed)."""
    cal = profile.calibration if profile.calibrated else None
    if cal is None:
        return None
    keys = tuple(RunKey.of(r) for r in cal.runs
                 if (r.dtype or "fp32") == dtype and r.fwd_ms > 0 and r.fwd_bwd_ms > 0)
    return _build(keys, rates) if keys else None


@dataclass(frozen=True)
class MergeKey:
    """The parts of a timed merge (``rep_tune.device.MergeRun``) the merge table needs (hashable)."""

    batch: int
    tokens: int
    embed_dim: int
    merges: int
    fwd_ms: float
    fwd_bwd_ms: float
    dtype: str

    @staticmethod
    def of(run) -> "MergeKey":
        return MergeKey(run.batch, run.tokens, run.embed_dim, run.merges, float(run.fwd_ms), float(run.fwd_bwd_ms),
                        run.dtype or "fp32")

    def work(self) -> tuple[Work, Work]:
        return merge_run_passes(self)


def merge_table(profile, rates, dtype: str) -> ResidualTable | None:
    """Measured / roofline ratios of the profile's timed AToM merges at ``dtype``, over width, batch
    and matched tokens (FWD: a merge in a block without gradient, FWD_BWD: with its backward), or
    None (no merge timed at that dtype: merges are priced by the roofline alone)."""
    cal = profile.calibration if profile.calibrated else None
    if cal is None:
        return None
    keys = tuple(MergeKey.of(m) for m in getattr(cal, "merges", ())
                 if (m.dtype or "fp32") == dtype and m.fwd_ms > 0 and m.fwd_bwd_ms > 0)
    return _build(keys, rates) if keys else None


@lru_cache(maxsize=64)
def _build(keys: tuple, rates) -> ResidualTable | None:
    """The table of ``keys`` (``RunKey`` or ``MergeKey``: anything with batch, tokens, embed_dim,
    fwd_ms, fwd_bwd_ms and ``work()``) priced by ``rates``."""
    per: dict[int, dict[int, dict[int, list[tuple[float, float]]]]] = {}
    for k in keys:
        f, fb = k.work()
        tf, tfb = rates.time(f), rates.time(fb)
        if tf <= 0 or tfb <= 0:
            continue
        per.setdefault(k.embed_dim, {}).setdefault(k.batch, {}).setdefault(k.tokens, []).append(
            (k.fwd_ms / tf, k.fwd_bwd_ms / tfb))
    if not per:
        return None

    def gmean(vs: list[tuple[float, float]], kind: int) -> float:   # repeated runs of one shape
        return math.exp(sum(math.log(v[kind]) for v in vs) / len(vs))

    grids = []
    for w in sorted(per):
        bs = sorted(per[w])
        grids.append(WidthGrid(
            batches=tuple(math.log(b) for b in bs),
            tokens=tuple(tuple(math.log(n) for n in sorted(per[w][b])) for b in bs),
            ratios=tuple(tuple((gmean(per[w][b][n], FWD), gmean(per[w][b][n], FWD_BWD)) for n in sorted(per[w][b]))
                         for b in bs)))
    return ResidualTable(tuple(sorted(per)), tuple(grids))


__all__ = ["FWD", "FWD_BWD", "MergeKey", "ResidualTable", "RunKey", "WidthGrid", "merge_table", "table"]
