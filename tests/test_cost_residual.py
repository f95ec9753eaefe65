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
