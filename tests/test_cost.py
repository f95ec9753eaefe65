"""Cost model: the Work value type, hand-computed counts, layout-driven counts for every method,
precision, monotonicity, calibration fit, verdict edges, no torch import."""
from __future__ import annotations

import random
import subprocess
import sys

import pytest

from rep_tune.config import preset
from rep_tune.cost import check, predict, verdict
from rep_tune.cost.calibrate import fit
from rep_tune.cost.runs import LAUNCHES_BACKWARD_START, run_work
from rep_tune.cost.counts import LAUNCHES_ITERATION, LAUNCHES_PARAM, PARAM_TENSORS_HEAD, count, embedding
from rep_tune.cost.latency import peak_flops, rates
from rep_tune.cost.memory import MiB, resident_bytes
from rep_tune.cost.work import (LAUNCHES_AUTOCAST_FWD, LAUNCHES_BLOCK_BWD, LAUNCHES_BLOCK_FWD, LAUNCHES_METRIC,
                                ZERO, BlockShape, Numerics, Work, block_backward, block_forward, block_saved_bytes)
from rep_tune.device import Budgets, Calibration, CalibrationRun, DeviceProfile, Spec
from rep_tune.figures import Cost, Figure
from rep_tune.methods import METHODS


def cpu_profile(calibrated: bool = False, **budgets) -> DeviceProfile:
    prof = DeviceProfile(name="unit-cpu", kind="cpu", dtype="fp32",
                         spec=Spec(peak_tflops={"fp32": 0.1}, memory_bandwidth_gbs=20.0, power_w=50.0),
                         budgets=Budgets(**budgets))
    if calibrated:
        prof.calibration = Calibration(efficiency={"matmul": 0.5, "attention": 0.25, "elementwise": 0.5},
                                       launch_ms=0.01, overhead_ms=1.0, memory_overhead_mb=2.0)
    return prof


def tiny_config(**changes):
    """vit_pico at 8 px: 4 patches, width 64, 2 heads, 6 blocks; L2P with one 1-token prompt -> 6 tokens."""
    base = {"backbone.name": "vit_pico_patch4_32", "backbone.img_size": 8, "backbone.pretrained": False, "training.batch_size": 1,
            "prompt.pool_size": 2, "prompt.length": 1, "prompt.top_k": 1, "atom.merge": [], "atom.enabled": False}
    base.update(changes)
    return preset("baseline", "l2p", "vit_micro_patch4_32").replace(**base)


# ---- the Work value type -----------------------------------------------------------------------
def test_work_adds_and_scales_by_field():
    a, b = Work(1.0, 2.0, 3.0, 4.0), Work(matmul_flops=10.0, elementwise_bytes=30.0)
    assert a + b == Work(11.0, 2.0, 33.0, 4.0)
    assert a * 2 == 2 * a == Work(2.0, 4.0, 6.0, 8.0)
    assert 0.5 * a + ZERO == Work(0.5, 1.0, 1.5, 2.0)
    assert a.flops == 3.0 and Work().flops == 0.0
    assert Work.total([a, b, a]) == Work(12.0, 4.0, 36.0, 8.0) and Work.total([]) == ZERO
    with pytest.raises(AttributeError):
        a.matmul_flops = 0.0                                            # a value: immutable


def test_rates_price_each_field():
    r = rates(cpu_profile(True))
    # 0.1 TFLOP/s x 0.5 -> 2e-8 ms per matmul FLOP; x 0.25 -> 4e-8 per attention FLOP;
    # 20 GB/s x 0.5 -> 1e-7 ms per byte; 0.01 ms per launch
    assert r.time(Work(1e6, 0.0, 0.0, 0.0)) == pytest.approx(0.02)
    assert r.time(Work(0.0, 1e6, 0.0, 0.0)) == pytest.approx(0.04)
    assert r.time(Work(0.0, 0.0, 1e6, 0.0)) == pytest.approx(0.1)
    assert r.time(Work(launches=3)) == pytest.approx(0.03)
    assert r.time(Work(1e6, 1e6, 1e6, 3)) == pytest.approx(0.19)


# ---- hand-computed block arithmetic ------------------------------------------------------------
def test_block_work_by_hand_fp32():
    # 1 sample, 5 tokens, width 8, 2 heads, MLP 32, fp32
    s = BlockShape(1, 5, 5, 5, 8, 2, 32, 32)
    f, b = block_forward(s, Numerics.of("fp32")), block_backward(s, Numerics.of("fp32"))
    # qkv 5*8*24*2 + proj 5*8*8*2 + fc1 5*8*32*2 + fc2 5*32*8*2 = 1920 + 640 + 2560 + 2560
    assert f.matmul_flops == b.matmul_flops == 7680   # frozen weights: input gradients only
    # QK^T 5*5*8*2 + AV 5*5*8*2 = 800; softmax 5 ops on 2 heads x 5 x 5 = 250; backward 2.5x
    assert (f.attention_flops, b.attention_flops) == (1050, 2625)
    # stream 4 B x (4*40 + 4*40) + compute 4 B x (4*40 + 40 + 2*5*32)
    assert f.elementwise_bytes == 4 * 320 + 4 * 520 == 3360
    assert b.elementwise_bytes == 4 * (7 * 40 + 5 * 40) + 4 * (3 * 40 + 3 * 40 + 3 * 160) == 4800
    assert (f.launches, b.launches) == (LAUNCHES_BLOCK_FWD + LAUNCHES_METRIC, LAUNCHES_BLOCK_BWD)
    # merging 1 of 4 eligible tokens: the MLP runs on 4 tokens
    fm = block_forward(BlockShape(1, 5, 4, 5, 8, 2, 32, 32), Numerics.of("fp32"))
    assert fm.matmul_flops == 2 * (5 * 4 * 64 + 4 * 2 * 8 * 32)


def test_block_work_and_saved_bytes_under_autocast():
    s = BlockShape(1, 5, 5, 5, 8, 2, 32, 32)
    bf = Numerics.of("bf16")
    assert (bf.compute_bytes, bf.stream_bytes, bf.autocast) == (2, 4, True)
    assert Numerics.pure("bf16") == Numerics("bf16", 2, 2, False)
    f = block_forward(s, bf)
    assert f.matmul_flops == 7680                                   # FLOPs do not depend on the dtype
    # stream 4 x 320, compute 2 x 520, LayerNorm outputs and weights cast: 6 x (10 tokens x 8 + 768 weights)
    assert s.weight_elems == 4 * 64 + 8 * 64 == 768
    assert f.elementwise_bytes == 4 * 320 + 2 * 520 + 6 * (80 + 768) == 7408
    assert f.launches == LAUNCHES_BLOCK_FWD + LAUNCHES_METRIC + LAUNCHES_AUTOCAST_FWD
    # saved: per attention token stream (D + 2) + compute 4D + fp32 logsumexp per head; per MLP token stream
    # (D + 4) + compute fc1 output; under autocast + a compute-dtype copy of the 768 weights
    assert block_saved_bytes(s, Numerics.of("fp32")) == 5 * (4 * 10 + 4 * 32 + 4 * 2) + 5 * (4 * 12 + 4 * 32) == 1760
    assert block_saved_bytes(s, bf) == 5 * (4 * 10 + 2 * 32 + 8) + 5 * (4 * 12 + 2 * 32) + 2 * 768 == 2656
    # a prefix of 3 keeps the concatenated keys and values; a merge its size-weighted input
    assert block_saved_bytes(BlockShape(1, 5, 5, 8, 8, 2, 32, 32), Numerics.of("fp32"), 3) == 1760 + 4 * 2 * 8 * 8
    assert block_saved_bytes(BlockShape(1, 5, 4, 5, 8, 2, 32, 32), Numerics.of("fp32"), 0, 4) == \
        5 * 176 + 4 * (4 * 12 + 4 * 32) + 4 * 4 * 8


def test_count_tiny_config_by_hand():
    cfg = tiny_config()
    c = count(cfg)
    assert [b.tokens for b in c.blocks] == [6] * 6                 # CLS + 1 prompt + 4 patches
    blk = block_forward(BlockShape(1, 6, 6, 6, 64, 2, 256, 256), Numerics.of("fp32"))
    assert c.blocks[0].fwd == blk and blk.matmul_flops == 2 * (6 * 4 * 64 * 64 + 6 * 2 * 64 * 256) == 589824
    assert c.blocks_work.matmul_flops == 6 * 2 * 589824              # forward + backward, every block
    assert c.blocks_work.launches == 6 * (LAUNCHES_BLOCK_FWD + LAUNCHES_METRIC + LAUNCHES_BLOCK_BWD)
    # baseline: the query is a plain forward of the backbone (5 tokens, no prompt) + patch embedding
    q_mm = 6 * 2 * (5 * 4 * 64 * 64 + 5 * 2 * 64 * 256) + 2 * 4 * 3 * 16 * 64
    assert c.query.matmul_flops == c.query_first_epoch.matmul_flops == q_mm
    # trainable: prompts 2x1x64 + keys 2x64 + head 64x100+100; Adam keeps two states each
    assert c.trainable == 128 + 128 + 6500 and c.optimizer_state == 2 * c.trainable
    # the rest: embedding, selection (2 x 128 MACs, forward + backward), head (forward, both backward matmuls)
    emb = embedding(cfg.backbone.arch, 1, Numerics.of("fp32"))
    assert c.other.matmul_flops == emb.matmul_flops + 2 * 128 * 2 + 2 * 64 * 100 * 3
    geom = cfg.layout().geometry                                     # L2P: 30 launches, prompts + keys
    assert (geom.launches, geom.param_tensors) == (30, 2)
    assert c.other.launches == (emb.launches + geom.launches + LAUNCHES_ITERATION
                                + LAUNCHES_PARAM * (PARAM_TENSORS_HEAD + geom.param_tensors))


def test_count_merges_and_prefixes():
    c = count(tiny_config(**{"atom.enabled": True, "atom.merge": [0, 1, 0, 0, 0, 1]}))
    assert [b.tokens for b in c.blocks] == [6, 6, 5, 5, 5, 5]
    assert [b.tokens_mlp for b in c.blocks] == [6, 5, 5, 5, 5, 4]
    assert c.blocks[0].match == ZERO and c.blocks[1].match.matmul_flops == 2 * 2 * 2 * 64   # 5 eligible: 3 x 2 scores
    dp = preset("paper", "dualprompt", "vit_micro_patch4_32")
    c = count(dp)
    assert c.blocks[0].tokens == 65                                  # prefixes add no tokens ...
    assert c.blocks[0].kv_len == 65 + dp.prompt.g_length            # ... only keys/values in their layers
    assert c.blocks[2].kv_len - c.blocks[2].tokens == dp.prompt.length
    assert c.blocks[6].kv_len == c.blocks[6].tokens
    assert all(b.keep == 1.0 for b in c.blocks if b.index in dp.layout().prompt_blocks)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("protect", [True, False])
def test_counts_equal_the_layout_for_every_method(method, protect):
    """Tokens, prefixes, gradient blocks, ALD-protected blocks, trainable elements and selection
    work all come from config.layout(), whatever the method."""
    cfg = preset("paper", method, "vit_micro_patch2_28", **{"atom.protect_prompts": protect})
    lay = cfg.layout()
    c = count(cfg, num_classes=10, batch=2)
    assert c.blocks[0].tokens == lay.n_tokens == lay.n_prefix + lay.n_prompt + lay.n_patches
    assert [b.kv_len - b.tokens for b in c.blocks] == list(lay.prefix)
    assert [b.grad for b in c.blocks] == [i >= lay.first_grad for i in range(lay.depth)]
    assert [b.bwd == ZERO for b in c.blocks] == [i < lay.first_grad for i in range(lay.depth)]
    assert all(c.blocks[i].keep == 1.0 for i in lay.prompt_blocks)
    assert c.trainable == lay.trainable(10)
    merges = sum(b.merges for b in c.blocks)
    assert lay.n_tokens - merges == c.extras["tokens_last"] - c.blocks[-1].merges
    emb = embedding(cfg.backbone.arch, 2, Numerics.of("fp32"))
    assert c.other.matmul_flops == emb.matmul_flops + 2 * 2 * lay.geometry.select_macs * 2 + 2 * 2 * 96 * 10 * 3


def test_coda_prices_its_components_and_half_length_prefixes():
    cfg = preset("paper", "coda", "vit_micro_patch2_28")
    p = cfg.prompt
    c = count(cfg, num_classes=10)
    assert [b.kv_len - b.tokens for b in c.blocks[:6]] == [p.length // 2] * 5 + [0]
    # M components of L x D, a key and an attention vector each, per prompted block
    assert c.trainable == len(p.layers) * p.pool_size * (p.length * 96 + 2 * 96) + 96 * 10 + 10
    # per sample: q*A, the cosine with K and the weighted sum of M components, in every prompted block
    more = count(cfg.replace(**{"prompt.pool_size": 2 * p.pool_size}), num_classes=10)
    extra = len(p.layers) * p.pool_size * (3 * 96 + p.length * 96)
    assert more.other.matmul_flops - c.other.matmul_flops == pytest.approx(2.0 * 16 * extra * 2)


def test_totals_match_per_block_detail():
    for cfg in (preset("paper"), preset("paper", "dualprompt"), preset("paper", "coda"), preset("baseline")):
        d, f = count(cfg), count(cfg, detail=False)
        assert f.blocks == []
        tot = Work.total(b.keep * b.work for b in d.blocks)
        for name in ("matmul_flops", "attention_flops", "elementwise_bytes", "launches"):
            assert getattr(tot, name) == pytest.approx(getattr(f.blocks_work, name), rel=1e-12)
        assert sum(b.saved_bytes for b in d.blocks) == pytest.approx(f.saved_worst, rel=1e-12)


REFERENCE_SCHEDULE = {"training.epochs": 3, "training.iters_per_task": None}   # TrainingConfig's defaults


def test_surrogate_cache_steady_state():
    prof = cpu_profile(True)
    cached = predict(preset("paper", **REFERENCE_SCHEDULE), prof)
    uncached = predict(preset("paper", **REFERENCE_SCHEDULE).replace(**{"selection.cache": False}), prof)
    assert cached.extras["query_ms"] == 0.0
    assert cached.extras["latency_ms_first_epoch"] == pytest.approx(uncached.latency_ms.value)
    assert uncached.latency_ms.value > cached.latency_ms.value > cached.extras["latency_ms_cached"]


# ---- the schedule mean -----------------------------------------------------------------------
def test_latency_is_the_schedule_mean():
    prof = cpu_profile(True)
    cfg = preset("paper", **REFERENCE_SCHEDULE)                        # 3 epochs, cached query
    c = predict(cfg, prof)
    x = c.extras
    first, cached = x["latency_ms_first_epoch"], x["latency_ms_cached"]
    assert cached < c.latency_ms.value < first
    assert c.latency_ms.value == pytest.approx((first + 2 * cached) / 3)   # equal epochs when the size is unknown
    one = predict(cfg.replace(**{"training.epochs": 1}), prof)
    assert one.latency_ms.value == pytest.approx(one.extras["latency_ms_first_epoch"])
    # 1,000 images at batch 16: 63 iterations per epoch; capped at 100: 63 computing the query, 37 cached
    capped = predict(cfg.replace(**{"training.iters_per_task": 100}), prof, images_per_task=1000)
    assert capped.extras["iters_per_task"] == 100 and capped.extras["first_epoch_iterations"] == 63
    y = capped.extras
    assert capped.latency_ms.value == pytest.approx((63 * y["latency_ms_first_epoch"] + 37 * y["latency_ms_cached"]) / 100)


def test_precision_sets_peak_and_bytes():
    prof = cpu_profile(True)
    prof.spec.peak_tflops["bf16"] = 0.8
    fp32, bf16 = preset("paper"), preset("paper").replace(**{"training.precision": "bf16"})
    c32, c16 = count(fp32), count(bf16)
    assert c16.numerics == Numerics.of("bf16") and c32.numerics == Numerics.of("fp32")
    assert c16.blocks_work.matmul_flops == c32.blocks_work.matmul_flops
    assert c16.saved_worst < c32.saved_worst
    assert resident_bytes(c16) == resident_bytes(c32)          # fp32 parameters, gradients, optimizer state
    assert peak_flops(prof, "bf16") == 8 * peak_flops(prof, "fp32")
    p32, p16 = predict(fp32, prof), predict(bf16, prof)
    assert p16.latency_ms.value < p32.latency_ms.value
    assert p16.peak_memory_mb.value < p32.peak_memory_mb.value
    assert "bf16" in p16.latency_ms.detail and "efficiency fitted at fp32" in p16.latency_ms.detail
    # the profile's dtype does not override the config's precision; --precision-like overrides do
    prof.dtype = "bf16"
    assert predict(fp32, prof).latency_ms.value == pytest.approx(p32.latency_ms.value)
    assert predict(fp32, prof, precision="bf16").latency_ms.value == pytest.approx(p16.latency_ms.value)
    # a dtype the device lists no peak for is priced at the fp32 peak, and says so
    del prof.spec.peak_tflops["bf16"]
    prof.dtype = "fp32"
    assert "at the fp32 peak" in predict(bf16, prof).latency_ms.detail


# ---- monotonicity ------------------------------------------------------------------------------
def _random_cfg(rng: random.Random):
    method = rng.choice(list(METHODS))
    cfg = preset("paper", method, rng.choice(["vit_micro_patch2_28", "vit_tiny_patch16_224"]))
    merge = [rng.randint(0, 10) for _ in range(12)]
    return cfg.replace(**{"atom.merge": merge, "ald.theta_min": rng.uniform(0.2, 1.0),
                          "ald.alpha": rng.uniform(0.5, 1.0), "ald.tau": rng.randint(0, 30),
                          "training.batch_size": rng.choice([4, 16])})


@pytest.mark.parametrize("seed", range(2))
def test_more_merges_never_cost_more(seed):
    rng = random.Random(seed)
    prof = cpu_profile(True)
    for _ in range(30):
        cfg = _random_cfg(rng)
        base = predict(cfg, prof)
        more = [m + (rng.randint(1, 6) if m > 0 else 0) for m in cfg.atom.merge]   # blocks that already merge
        hi = predict(cfg.replace(**{"atom.merge": more}), prof)
        assert hi.latency_ms.value <= base.latency_ms.value + 1e-9
        assert hi.peak_memory_mb.value <= base.peak_memory_mb.value + 1e-9


@pytest.mark.parametrize("seed", range(2))
def test_lower_keep_probability_never_costs_more(seed):
    rng = random.Random(100 + seed)
    prof = cpu_profile(True)
    for _ in range(30):
        cfg = _random_cfg(rng).replace(**{"atom.enabled": False})   # see test_dropped_block_does_not_merge
        t = rng.choice([None, 0, 500, 3000])
        ref = predict(cfg, prof, t=t)
        for change in ({"ald.theta_min": cfg.ald.theta_min * rng.uniform(0.3, 1.0)},
                       {"ald.alpha": cfg.ald.alpha * 0.8}, {"ald.gamma": cfg.ald.gamma * 3}):
            lo = predict(cfg.replace(**change), prof, t=t)
            assert lo.latency_ms.value <= ref.latency_ms.value + 1e-9
            assert lo.peak_memory_mb.value <= ref.peak_memory_mb.value + 1e-9
            assert lo.extras["peak_memory_mb_expected"] <= ref.extras["peak_memory_mb_expected"] + 1e-9
        later = predict(cfg, prof, t=(t or 0) + 1000)                  # keep decays with t
        assert later.latency_ms.value <= ref.latency_ms.value + 1e-9 or t is None
        off = predict(cfg.replace(**{"ald.enabled": False}), prof, t=t)
        assert off.latency_ms.value >= ref.latency_ms.value


def test_ramp_and_keep_monotone_on_paper_configs():
    prof = cpu_profile(True)
    from rep_tune.schedule import ramp
    for method in METHODS:
        lat = [predict(preset("paper", method).replace(**{"atom.merge": ramp(r, 12)}), prof).latency_ms.value
               for r in (2, 4, 6, 8, 10)]
        assert lat == sorted(lat, reverse=True)
        lat = [predict(preset("paper", method).replace(**{"ald.theta_min": th}), prof).latency_ms.value
               for th in (1.0, 0.9, 0.7, 0.5, 0.3, 0.1)]
        assert lat == sorted(lat, reverse=True)


def test_dropped_block_does_not_merge():
    """The runtime skips a dropped block whole, its merges included: later blocks see more tokens."""
    cfg = preset("paper").replace(**{"atom.merge": [0, 20] + [0] * 10, "ald.theta_min": 0.5, "ald.tau": 100})
    c = count(cfg, t=10**6)                       # keep = theta_min = 0.5 everywhere
    assert c.blocks[2].tokens == pytest.approx(222 - 0.5 * 20)   # 196 patches + CLS + 25 prompt tokens


# ---- calibration -------------------------------------------------------------------------------
def test_fit_recovers_known_efficiencies():
    prof = cpu_profile()
    truth = {"matmul": 0.6, "attention": 0.3, "elementwise": 0.4}
    launch = 0.02
    peak, bw = peak_flops(prof), prof.spec.memory_bandwidth_gbs * 1e9

    def ms(w: Work) -> float:
        return (w.matmul_flops / (peak * truth["matmul"]) * 1e3 + w.attention_flops / (peak * truth["attention"]) * 1e3
                + w.elementwise_bytes / (bw * truth["elementwise"]) * 1e3 + w.launches * launch) + 0.5
    runs = []
    for d, h in ((64, 2), (96, 3), (192, 3)):
        for n in (17, 65, 110):
            for b in (1, 8, 16):
                for blocks in (1, 3):
                    r = CalibrationRun(batch=b, tokens=n, embed_dim=d, num_heads=h, blocks=blocks)
                    f, bk = run_work(r)
                    r.fwd_ms = ms(f)
                    r.fwd_bwd_ms = ms(f + bk + Work(launches=LAUNCHES_BACKWARD_START))
                    runs.append(r)
    prof.calibration = Calibration(runs=runs)
    out = fit(prof)
    for k, v in truth.items():
        assert out.calibration.efficiency[k] == pytest.approx(v, rel=1e-6)
    assert out.calibration.launch_ms == pytest.approx(launch, rel=1e-6)
    assert out.calibration.fit_error["run_intercept_ms"] == pytest.approx(0.5, rel=1e-6)
    assert out.calibration.overhead_ms == 0.0          # per iteration: measured (calibration.iterations), none here
    assert out.calibration.fit_error["latency_median_rel"] < 1e-9
    assert out.calibrated and not prof.calibrated                    # a copy; the input is untouched
    assert predict(preset("paper"), out).latency_ms.source == "predicted"


def test_fit_without_runs_is_an_error():
    prof = cpu_profile()
    prof.calibration = Calibration()
    with pytest.raises(ValueError, match="calibration.runs"):
        fit(prof)


def test_sources():
    c = predict(preset("paper"), cpu_profile())
    assert (c.latency_ms.source, c.latency_ms.detail.split(",")[0]) == ("estimated", "uncalibrated")
    assert c.energy_j.source == "estimated"
    assert c.energy_j.value == pytest.approx(50.0 * c.latency_ms.value / 1e3)
    c = predict(preset("paper"), cpu_profile(True))
    assert c.latency_ms.source == c.peak_memory_mb.source == "predicted"
    assert c.peak_memory_mb.unit == "MiB"
    assert c.peak_memory_mb.value == pytest.approx(c.extras["resident_mb"] + c.extras["activations_mb"]
                                                   + c.extras["workspace_mb"] + 2.0)   # + memory overhead
    prof = cpu_profile(True)
    prof.spec.power_w = None
    assert predict(preset("paper"), prof).energy_j is None


# ---- verdict -----------------------------------------------------------------------------------
def _cost(lat=100.0, mem=50.0, energy=None) -> Cost:
    return Cost(latency_ms=Figure(lat, "ms", "predicted"), peak_memory_mb=Figure(mem, "MiB", "predicted"),
                energy_j=None if energy is None else Figure(energy, "J", "estimated"), extras={"batch_size": 16})


def test_verdict_edges():
    v = verdict(_cost(), Budgets(latency_ms=100.0, peak_memory_mb=50.0))
    assert v.fits and all(c.fits and c.over_by == 0 and c.ratio == 1.0 for c in v.checks)
    v = verdict(_cost(lat=100.0 + 1e-9), Budgets(latency_ms=100.0, peak_memory_mb=50.0))
    assert not v.fits
    lat = next(c for c in v.checks if c.name == "latency_ms")
    assert not lat.fits and lat.over_by == pytest.approx(1e-9, abs=1e-12)
    assert next(c for c in v.checks if c.name == "peak_memory_mb").fits
    v = verdict(_cost(lat=1e9, mem=1e9), Budgets())                  # nothing set: nothing constrains
    assert v.fits and v.checks == []
    v = verdict(_cost(lat=150.0), Budgets(latency_ms=100.0))
    assert [c.name for c in v.checks] == ["latency_ms"] and v.checks[0].over_by == pytest.approx(50.0)
    assert v.checks[0].ratio == pytest.approx(1.5)


def test_verdict_margin_and_missing_figure():
    assert not verdict(_cost(lat=95.0), Budgets(latency_ms=100.0), margin=0.1).fits
    assert verdict(_cost(lat=90.0), Budgets(latency_ms=100.0), margin=0.1).fits
    v = verdict(_cost(energy=None), Budgets(energy_j=1.0))           # a budget without a prediction
    assert not v.fits and v.checks[0].predicted is None
    assert verdict(_cost(energy=1.0), Budgets(energy_j=1.0)).fits


@pytest.fixture
def power_metric():
    """A hypothetical metric registered for one test (rep_tune.figures.METRICS), removed after."""
    from rep_tune.figures import Metric, register_metric, unregister_metric
    m = register_metric(Metric("power_w", "W", "power", "mean power while training", {"w": 1.0, "mw": 1e-3}))
    yield m
    unregister_metric("power_w")


def test_verdict_and_budgets_handle_a_newly_registered_metric(power_metric):
    from rep_tune.figures import METRICS
    b = Budgets(latency_ms=100.0, power_w=15.0)
    assert b.power_w == 15.0 and [name for name, _ in b.items()] == ["latency_ms", "power_w"]
    c = _cost()
    c.figures["power_w"] = Figure(20.0, "W", "estimated", "spec power")
    v = verdict(c, b)
    pw = next(x for x in v.checks if x.name == "power_w")
    assert not v.fits and not pw.fits and pw.unit == "W" and pw.over_by == pytest.approx(5.0)
    assert "power_w: 20 / 15 W" in str(v)
    assert verdict(c, Budgets(power_w=25.0)).fits
    # a budget on the new metric with no figure for it cannot be confirmed
    assert not verdict(_cost(), Budgets(power_w=25.0)).fits
    # profiles read and write the new budget; the cost model's own costs carry no power figure
    prof = cpu_profile(True, latency_ms=1e6, power_w=10.0)
    prof2 = DeviceProfile.from_dict(prof.to_dict())
    assert prof2.budgets.power_w == 10.0 and "power_w" in METRICS
    _, v = check(preset("paper"), prof2)
    assert [x.name for x in v.checks] == ["latency_ms", "power_w"] and v.checks[1].predicted is None


def test_check_predicts_at_the_budget_batch_size():
    prof = cpu_profile(True, latency_ms=1e6, batch_size=4)
    cfg = preset("paper")                                            # batch 16
    cost, v = check(cfg, prof)
    assert cost.extras["batch_size"] == 4 and v.batch_size == 4 and v.fits
    assert cost.latency_ms.value < predict(cfg, prof).latency_ms.value


# ---- the prediction hot path -------------------------------------------------------------------
def test_two_thousand_predictions_run_without_torch():
    """Pre-screening prices thousands of candidates: 2,000 distinct predictions run, and torch is
    never imported (speed is measured in benchmarks/bench_cost_model.py, not asserted here)."""
    code = ("import random, sys\nimport rep_tune.cost\nfrom rep_tune.config import preset\n"
            "from rep_tune.device import DeviceProfile, Spec\n"
            "p = DeviceProfile(name='x', kind='gpu', spec=Spec(peak_tflops={'fp32': 10.0}))\n"
            "rng = random.Random(0)\n"
            "bases = [preset('paper', m) for m in ('l2p', 'dualprompt', 'coda')]\n"
            "n = 0\n"
            "for i in range(2000):\n"
            "    cfg = bases[i % 3].replace(**{'atom.merge': [rng.randint(0, 8) for _ in range(12)]}) if i < 30 else bases[i % 3]\n"
            "    c = rep_tune.cost.predict(cfg, p, batch=1 + i % 64, t=i)\n"
            "    n += c.latency_ms.value > 0\n"
            "rep_tune.cost.verdict(c, p.budgets)\n"
            "assert n == 2000, n\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_cli_cost(tmp_path, capsys):
    from rep_tune.cli import main
    prof = cpu_profile(True, latency_ms=1e6, peak_memory_mb=1e5, batch_size=16)
    prof.save(tmp_path / "p.yaml")
    preset("paper", **REFERENCE_SCHEDULE).save(tmp_path / "c.yaml")
    assert main(["cost", "--config", str(tmp_path / "c.yaml"), "--device", str(tmp_path / "p.yaml")]) == 0
    out = capsys.readouterr().out
    assert "verdict: FITS" in out and "latency_ms:" in out and "(predicted" in out
    cost = predict(preset("paper", **REFERENCE_SCHEDULE), prof)
    # the headline is the schedule mean; its parts follow
    assert f"latency     {cost.latency_ms}" in out
    assert f"first epoch (query computed) {cost.extras['latency_ms_first_epoch']:.4g} ms" in out
    assert f"later epochs (query cached) {cost.extras['latency_ms_cached']:.4g} ms" in out
    prof.budgets.latency_ms = 1.0
    prof.save(tmp_path / "p.yaml")
    assert main(["cost", "--device", str(tmp_path / "p.yaml"), "--preset", "baseline"]) == 1
    assert "over by" in capsys.readouterr().out


def test_calibration_runs_under_autocast_are_priced_as_training_runs():
    """A run converted to bf16 moves bf16 everywhere; one under autocast keeps the fp32 stream and
    casts the weights, as REP training at training.precision bf16 does."""
    pure = CalibrationRun(batch=8, tokens=65, embed_dim=96, num_heads=3, blocks=2, dtype="bf16")
    auto = CalibrationRun(batch=8, tokens=65, embed_dim=96, num_heads=3, blocks=2, dtype="bf16")
    auto.autocast = True
    (fp, bp), (fa, ba) = run_work(pure), run_work(auto)
    assert fp.matmul_flops == fa.matmul_flops and bp.attention_flops == ba.attention_flops
    s = BlockShape(8, 65, 65, 65, 96, 3, 384, 384)
    assert fa == 2 * block_forward(s, Numerics.of("bf16"), atom_metric=False)
    assert fp == 2 * block_forward(s, Numerics.pure("bf16"), atom_metric=False)
    assert fa.elementwise_bytes > fp.elementwise_bytes and fa.launches > fp.launches
