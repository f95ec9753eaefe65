"""The cost model's measured parts: the timed-block residual table and the per-iteration fixed cost.

Synthetic calibration runs are written at known multiples of the roofline, so the expected
predictions are exact; one real no-block iteration is timed on this CPU.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from rep_tune.cost import predict
from rep_tune.cost.calibrate import fit, fixed_cost, iteration_config
from rep_tune.cost.latency import rates
from rep_tune.cost.residual import FWD, FWD_BWD, RunKey, table
from rep_tune.device import CalibrationRun, DeviceProfile, IterationRun

from test_cost import cpu_profile, tiny_config

WIDTHS = ((64, 2), (96, 3))


def _runs(prof: DeviceProfile, ratio) -> list[CalibrationRun]:
    """Runs whose times are the roofline's x ratio(width, batch, tokens, kind)."""
    r = rates(prof, "fp32")
    out = []
    for d, h in WIDTHS:
        for tokens in (6, 17, 65):
            for b in (1, 4):
                run = CalibrationRun(batch=b, tokens=tokens, embed_dim=d, num_heads=h, blocks=1, dtype="fp32")
                f, fb = RunKey.of(run).work()
                run.fwd_ms = r.time(f) * ratio(d, b, tokens, FWD)
                run.fwd_bwd_ms = r.time(fb) * ratio(d, b, tokens, FWD_BWD)
                out.append(run)
    return out


def _profile(ratio) -> DeviceProfile:
    prof = cpu_profile(calibrated=True)
    prof.calibration.overhead_ms = 0.0
    prof.calibration.runs = _runs(prof, ratio)
    return prof


def test_the_table_reproduces_its_runs_and_interpolates_in_log_tokens_log_batch_and_width():
    # linear in log tokens and in log batch (so interpolation is exact), and the two axes differ
    # in their effect: a table over batch x tokens alone cannot reproduce it
    def ratio(d, b, n, kind):
        return (1.0 + math.log(n) / 4 - math.log(b) / 3) * (1.5 if kind == FWD_BWD else 1.0) * (d / 64)
    prof = _profile(ratio)
    t = table(prof, rates(prof, "fp32"), "fp32")
    for d, _ in WIDTHS:
        for b, n in ((1, 6), (4, 6), (1, 65), (4, 65), (2, 17), (3, 30), (1, 40)):
            for kind in (FWD, FWD_BWD):
                assert t.ratio(d, b, n, kind) == pytest.approx(ratio(d, b, n, kind), rel=1e-9)
    # one batch x tokens product, two shapes, two ratios (4 x 17 = 68 ~ 1 x 65 + 3)
    assert t.ratio(64, 4, 17, FWD) < t.ratio(64, 1, 68, FWD) - 0.5
    # beyond the grid's tokens and batches: the nearest end
    assert t.ratio(64, 4, 10_000, FWD) == pytest.approx(ratio(64, 4, 65, FWD))
    assert t.ratio(64, 64, 17, FWD) == pytest.approx(ratio(64, 4, 17, FWD))
    # between widths: linear in log width
    w = (math.log(80) - math.log(64)) / (math.log(96) - math.log(64))
    assert t.ratio(80, 1, 65, FWD) == pytest.approx((1 - w) * ratio(64, 1, 65, FWD) + w * ratio(96, 1, 65, FWD))
    # a width never timed: the roofline alone
    assert t.ratio(192, 1, 65, FWD) == 1.0 and t.ratio(32, 1, 65, FWD_BWD) == 1.0
    # a dtype never timed: no table
    assert table(prof, rates(prof, "bf16"), "bf16") is None


def test_predict_scales_the_blocks_and_the_query_by_the_measured_ratio():
    cfg = tiny_config(**{"training.batch_size": 4})          # width 64, no merging: no matching work
    plain = cpu_profile(calibrated=True)
    plain.calibration.overhead_ms = 0.0
    doubled = _profile(lambda d, b, n, kind: 3.0 if kind == FWD_BWD else 2.0)
    a, b = predict(cfg, plain), predict(cfg, doubled)
    assert b.extras["blocks_ms"] == pytest.approx(3.0 * a.extras["blocks_ms"], rel=1e-9)   # every block has a gradient
    assert b.extras["query_ms_first_epoch"] == pytest.approx(2.0 * a.extras["query_ms_first_epoch"], rel=1e-9)
    assert b.extras["other_ms"] == pytest.approx(a.extras["other_ms"], rel=1e-12)
    assert "timed-block residuals" in b.latency_ms.detail and "residuals" not in a.latency_ms.detail
    # a profile's own runs are priced exactly: the calibration's block is the config's block
    one = _profile(lambda d, b, n, kind: 1.7)
    assert predict(cfg, one).extras["blocks_ms"] == pytest.approx(1.7 * a.extras["blocks_ms"], rel=1e-9)


def test_the_fixed_cost_is_what_the_counts_of_a_no_block_iteration_miss():
    prof = _profile(lambda d, b, n, kind: 1.0)

    def counted(it: IterationRun) -> float:
        cfg = iteration_config(it)
        return predict(cfg, prof, keep=(0.0,) * cfg.backbone.arch.depth).extras["latency_ms_cached"]
    its = [IterationRun(method="l2p", backbone="vit_pico_patch4_32", batch=b, ms=1.0, dtype="fp32") for b in (4, 8)]
    for it, gap in zip(its, (7.0, 9.0)):
        it.ms = counted(it) + gap
    prof.calibration.iterations = its
    assert fixed_cost(prof) == pytest.approx([7.0, 9.0])
    fitted = fit(prof)
    assert fitted.calibration.overhead_ms == pytest.approx(8.0, rel=1e-6)   # the median of the gaps
    zero = copy.deepcopy(fitted)
    zero.calibration.overhead_ms = 0.0
    for c in (tiny_config(), tiny_config(**{"training.batch_size": 8}), tiny_config(**{"selection.cache": False})):
        assert predict(c, fitted).latency_ms.value - predict(c, zero).latency_ms.value == pytest.approx(8.0)
    # a device faster than the counts of the rest: no negative overhead
    for it in its:
        it.ms = counted(it) / 2
    assert fit(prof).calibration.overhead_ms == 0.0


def test_a_real_no_block_iteration_is_timed_with_every_block_dropped():
    from rep_tune.profiler import probe
    torch.set_num_threads(1)
    runs = probe.iteration_runs(torch.device("cpu"), "fp32", backbone="vit_pico_patch4_32", batches=(2,), reps=2)
    assert [(r.method, r.backbone, r.batch, r.dtype) for r in runs] == [("l2p", "vit_pico_patch4_32", 2, "fp32")]
    assert 0 < runs[0].ms < 5_000
    # the profile's YAML keeps them, and profiles without them keep their old form
    prof = cpu_profile(calibrated=True)
    assert "iterations" not in prof.to_dict()["calibration"]
    prof.calibration.iterations = runs
    assert DeviceProfile.from_dict(prof.to_dict()).calibration.iterations == runs


# ---- AToM merges: their own measured ratio -----------------------------------------------------
def _merges(prof: DeviceProfile, ratio) -> list:
    """Timed merges whose times are the roofline's x ratio(kind), at widths 64/96, batch 1 and 4."""
    from rep_tune.cost.residual import MergeKey
    from rep_tune.device import MergeRun
    r = rates(prof, "fp32")
    out = []
    for d, _ in WIDTHS:
        for tokens in (6, 17, 65):
            for b in (1, 4):
                m = MergeRun(batch=b, tokens=tokens, embed_dim=d, merges=max(1, tokens // 8), dtype="fp32")
                f, fb = MergeKey.of(m).work()
                m.fwd_ms, m.fwd_bwd_ms = r.time(f) * ratio(FWD), r.time(fb) * ratio(FWD_BWD)
                out.append(m)
    return out


def test_merges_are_priced_at_their_own_measured_ratio():
    from rep_tune.cost.counts import count
    from rep_tune.cost.residual import merge_table
    cfg = tiny_config(**{"training.batch_size": 4, "atom.enabled": True, "atom.merge": [0, 1, 0, 0, 0, 1]})
    base = _profile(lambda d, b, n, kind: 1.0)                     # blocks at the roofline
    timed = copy.deepcopy(base)
    timed.calibration.merges = _merges(timed, lambda kind: 4.0 if kind == FWD_BWD else 2.5)
    r = rates(base, "fp32")
    assert merge_table(base, r, "fp32") is None and merge_table(timed, r, "fp32").ratio(64, 4, 5, FWD_BWD) == 4.0
    a, b = predict(cfg, base), predict(cfg, timed)
    c = count(cfg, batch=4, iters_per_task=a.extras["iters_per_task"])
    match = [(blk.keep, r.time(blk.match), blk.grad) for blk in c.blocks if blk.merges]
    assert len(match) == 2 and all(t > 0 for _, t, _ in match)
    # only the merges change: by (ratio - 1) x their roofline time, weighted by ALD's keep probability
    want = sum(k * t * ((4.0 if grad else 2.5) - 1.0) for k, t, grad in match)
    assert b.extras["blocks_ms"] - a.extras["blocks_ms"] == pytest.approx(want, rel=1e-9)
    assert b.latency_ms.value - a.latency_ms.value == pytest.approx(want, rel=1e-9)
    assert "timed merges" in b.latency_ms.detail and "timed merges" not in a.latency_ms.detail
    # a config that merges nothing is priced as before, and says nothing of merges
    plain = tiny_config(**{"training.batch_size": 4})
    assert predict(plain, timed).latency_ms.value == pytest.approx(predict(plain, base).latency_ms.value, rel=1e-12)
    assert "timed merges" not in predict(plain, timed).latency_ms.detail
    # merges timed at another dtype say nothing about fp32 ones
    for m in timed.calibration.merges:
        m.dtype = "bf16"
    assert merge_table(timed, r, "fp32") is None


def test_a_real_merge_is_timed_and_kept_in_the_profile():
    from rep_tune.device import MergeRun
    from rep_tune.profiler import probe
    torch.set_num_threads(1)
    rec = probe.Repeats()
    m = probe.merge_run(torch.device("cpu"), 4, 65, 64, 8, reps=3, repeats=rec)
    assert (m.batch, m.tokens, m.embed_dim, m.merges, m.dtype) == (4, 65, 64, 8, "fp32")
    assert 0 < m.fwd_ms < m.fwd_bwd_ms < 5_000
    assert set(rec.groups.values()) == {probe.MERGE_RUNS}
    # the grid: the block grid's widths and tokens at the training batch sizes, an eighth merged
    grid = probe.merge_grid("cpu", quick=True)
    assert {(d, t) for _, t, d, _ in grid} == {(d, t) for _, t, d, _ in probe.calibration_grid("cpu", True)}
    assert {b for b, *_ in grid} == {16} and all(r == max(1, t // 8) for _, t, _, r in grid)
    # the YAML keeps them; profiles without them keep their old form; a bad one is named
    prof = cpu_profile(calibrated=True)
    assert "merges" not in prof.to_dict()["calibration"]
    prof.calibration.merges = [m]
    assert DeviceProfile.from_dict(prof.to_dict()).calibration.merges == [m]
    bad = prof.to_dict()
    bad["calibration"]["merges"][0]["merges"] = 40
    with pytest.raises(ValueError, match=r"calibration\.merges\[0\]\.merges.*tokens / 2.*40"):
        DeviceProfile.from_dict(bad)
    assert MergeRun(batch=1, tokens=2, embed_dim=1, merges=1).fwd_ms == 0.0
