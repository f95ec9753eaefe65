"""Cost model: hand-computed counts, monotonicity, calibration fit, verdict edges, no torch import."""
from __future__ import annotations

import random
import subprocess
import sys

import pytest

from rep_tune.config import preset
from rep_tune.cost import check, predict, verdict
from rep_tune.cost.calibrate import fit, run_work
from rep_tune.cost.counts import OPS_BLOCK_BWD, OPS_BLOCK_FWD, block_flops, count
from rep_tune.cost.latency import peak_flops
from rep_tune.device import Budgets, Calibration, CalibrationRun, DeviceProfile, Spec
from rep_tune.figures import Cost, Figure


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


# ---- hand-computed counts ----------------------------------------------------------------------
def test_block_flops_by_hand():
    # 1 sample, 5 tokens, width 8, 2 heads, MLP 32, fp32
    fwd, bwd = block_flops(1, 5, 5, 5, 8, 2, 32, 4)
    # qkv 5*8*24*2 + proj 5*8*8*2 + fc1 5*8*32*2 + fc2 5*32*8*2 = 1920 + 640 + 2560 + 2560
    assert fwd[0] == 7680
    # QK^T 5*5*8*2 + AV 5*5*8*2 = 800; softmax 5 ops on 2 heads x 5 x 5 = 250
    assert fwd[1] == 1050
    assert fwd[2] == 4 * (5 * 8 * 7 + 5 * 8 * 5 + 5 * 32 * 2) == 3200
    assert bwd[0] == 7680            # frozen weights: input gradients only, one matmul per linear
    assert bwd[1] == 2625            # 2.5x forward attention (dQ, dK, dV, dP, recompute)
    # merging 1 of 4 eligible tokens: the MLP runs on 4 tokens
    fwd_m, _ = block_flops(1, 5, 4, 5, 8, 2, 32, 4)
    assert fwd_m[0] == 2 * (5 * 4 * 64 + 4 * 2 * 8 * 32)


def test_count_tiny_config_by_hand():
    cfg = tiny_config()
    c = count(cfg)
    assert [b.tokens for b in c.blocks] == [6] * 6                 # CLS + 1 prompt + 4 patches
    per_block_mm = 2 * (6 * 4 * 64 * 64 + 6 * 2 * 64 * 256)
    assert c.blocks[0].fwd[0] == per_block_mm == 589824
    assert c.work[0] == 6 * 2 * per_block_mm                        # forward + backward, every block
    assert c.ops == 6 * (OPS_BLOCK_FWD + OPS_BLOCK_BWD)
    # baseline: the query is a plain forward of the backbone (5 tokens, no prompt) + patch embedding
    q_mm = 6 * 2 * (5 * 4 * 64 * 64 + 5 * 2 * 64 * 256) + 2 * 4 * 3 * 16 * 64
    assert c.query[0] == q_mm
    # trainable: prompts 2x1x64 + keys 2x64 + head 64x100+100; Adam keeps two states each
    assert c.trainable == 128 + 128 + 6500 and c.optimizer_state == 2 * c.trainable


def test_count_merges_and_prefixes():
    c = count(tiny_config(**{"atom.enabled": True, "atom.merge": [0, 1, 0, 0, 0, 1]}))
    assert [b.tokens for b in c.blocks] == [6, 6, 5, 5, 5, 5]
    assert [b.tokens_mlp for b in c.blocks] == [6, 5, 5, 5, 5, 4]
    dp = preset("paper", "dualprompt", "vit_micro_patch4_32")
    c = count(dp)
    assert c.blocks[0].tokens == 65                                  # prefixes add no tokens ...
    assert c.blocks[0].kv_len == 65 + dp.prompt.g_length            # ... only keys/values in their layers
    assert c.blocks[2].kv_len - c.blocks[2].tokens == dp.prompt.length
    assert c.blocks[6].kv_len == c.blocks[6].tokens
    assert all(b.keep == 1.0 for b in c.blocks if b.index in dp.layout().prompt_blocks)


def test_totals_match_per_block_detail():
    for cfg in (preset("paper"), preset("paper", "dualprompt"), preset("baseline")):
        d, f = count(cfg), count(cfg, detail=False)
        for j in range(3):
            tot = sum(b.keep * (b.fwd[j] + b.bwd[j] + b.match[j]) for b in d.blocks)
            assert tot == pytest.approx(f.work[j], rel=1e-12)
        assert sum(b.saved_bytes for b in d.blocks) == pytest.approx(f.saved_worst, rel=1e-12)


def test_surrogate_cache_steady_state():
    prof = cpu_profile(True)
    cached = predict(preset("paper"), prof)
    uncached = predict(preset("paper").replace(**{"selection.cache": False}), prof)
    assert cached.extras["query_ms"] == 0.0
    assert cached.extras["latency_ms_first_epoch"] == pytest.approx(uncached.latency_ms.value)
    assert uncached.latency_ms.value > cached.latency_ms.value


# ---- monotonicity ------------------------------------------------------------------------------
def _random_cfg(rng: random.Random):
    method = rng.choice(["l2p", "dualprompt"])
    cfg = preset("paper", method, rng.choice(["vit_micro_patch4_32", "vit_tiny_patch16_224"]))
    merge = [rng.randint(0, 10) for _ in range(12)]
    return cfg.replace(**{"atom.merge": merge, "ald.theta_min": rng.uniform(0.2, 1.0),
                          "ald.alpha": rng.uniform(0.5, 1.0), "ald.tau": rng.randint(0, 30),
                          "training.batch_size": rng.choice([4, 16])})


@pytest.mark.parametrize("seed", range(3))
def test_more_merges_never_cost_more(seed):
    rng = random.Random(seed)
    prof = cpu_profile(True)
    for _ in range(40):
        cfg = _random_cfg(rng)
        base = predict(cfg, prof)
        more = [m + (rng.randint(1, 6) if m > 0 else 0) for m in cfg.atom.merge]   # blocks that already merge
        hi = predict(cfg.replace(**{"atom.merge": more}), prof)
        assert hi.latency_ms.value <= base.latency_ms.value + 1e-9
        assert hi.peak_memory_mb.value <= base.peak_memory_mb.value + 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_lower_keep_probability_never_costs_more(seed):
    rng = random.Random(100 + seed)
    prof = cpu_profile(True)
    for _ in range(40):
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
    for method in ("l2p", "dualprompt"):
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
    assert c.blocks[2].tokens == pytest.approx(90 - 0.5 * 20)


# ---- calibration -------------------------------------------------------------------------------
def test_fit_recovers_known_efficiencies():
    prof = cpu_profile()
    truth = {"matmul": 0.6, "attention": 0.3, "elementwise": 0.4}
    launch = 0.02
    peak, bw = peak_flops(prof), prof.spec.memory_bandwidth_gbs * 1e9
    runs = []
    for d, h in ((64, 2), (96, 3), (192, 3)):
        for n in (17, 65, 110):
            for b in (1, 8, 16):
                for blocks in (1, 3):
                    r = CalibrationRun(batch=b, tokens=n, embed_dim=d, num_heads=h, blocks=blocks)
                    f, bk = run_work(r)

                    def ms(w, ops, blocks=blocks):
                        return blocks * (w[0] / (peak * truth["matmul"]) * 1e3 + w[1] / (peak * truth["attention"]) * 1e3
                                         + w[2] / (bw * truth["elementwise"]) * 1e3 + ops * launch) + 0.5
                    r.fwd_ms = ms(f, OPS_BLOCK_FWD)
                    r.fwd_bwd_ms = ms(tuple(a + c for a, c in zip(f, bk)), OPS_BLOCK_FWD + OPS_BLOCK_BWD)
                    runs.append(r)
    prof.calibration = Calibration(runs=runs)
    out = fit(prof)
    for k, v in truth.items():
        assert out.calibration.efficiency[k] == pytest.approx(v, rel=1e-6)
    assert out.calibration.launch_ms == pytest.approx(launch, rel=1e-6)
    assert out.calibration.overhead_ms == pytest.approx(0.5, rel=1e-6)
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
    assert (c.latency_ms.source, c.latency_ms.detail) == ("estimated", "uncalibrated")
    assert c.energy_j.source == "estimated"
    assert c.energy_j.value == pytest.approx(50.0 * c.latency_ms.value / 1e3)
    c = predict(preset("paper"), cpu_profile(True))
    assert c.latency_ms.source == c.peak_memory_mb.source == "predicted"
    prof = cpu_profile(True)
    prof.spec.power_w = None
    assert predict(preset("paper"), prof).energy_j is None


# ---- verdict -----------------------------------------------------------------------------------
def _cost(lat=100.0, mem=50.0, energy=None) -> Cost:
    return Cost(latency_ms=Figure(lat, "ms", "predicted"), peak_memory_mb=Figure(mem, "MB", "predicted"),
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


def test_check_predicts_at_the_budget_batch_size():
    prof = cpu_profile(True, latency_ms=1e6, batch_size=4)
    cfg = preset("paper")                                            # batch 16
    cost, v = check(cfg, prof)
    assert cost.extras["batch_size"] == 4 and v.batch_size == 4 and v.fits
    assert cost.latency_ms.value < predict(cfg, prof).latency_ms.value


# ---- no torch on the hot path ------------------------------------------------------------------
def test_predict_does_not_import_torch():
    code = ("import sys\nimport rep_tune.cost\nfrom rep_tune.config import preset\n"
            "from rep_tune.device import DeviceProfile, Spec\n"
            "p = DeviceProfile(name='x', kind='gpu', spec=Spec(peak_tflops={'fp32': 10.0}))\n"
            "c = rep_tune.cost.predict(preset('paper'), p)\n"
            "rep_tune.cost.verdict(c, p.budgets)\n"
            "assert c.latency_ms.value > 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_cli_cost(tmp_path, capsys):
    from rep_tune.cli import main
    prof = cpu_profile(True, latency_ms=1e6, peak_memory_mb=1e5, batch_size=16)
    prof.save(tmp_path / "p.yaml")
    preset("paper").save(tmp_path / "c.yaml")
    assert main(["cost", "--config", str(tmp_path / "c.yaml"), "--device", str(tmp_path / "p.yaml")]) == 0
    out = capsys.readouterr().out
    assert "verdict: FITS" in out and "latency_ms:" in out and "(predicted" in out
    prof.budgets.latency_ms = 1.0
    prof.save(tmp_path / "p.yaml")
    assert main(["cost", "--device", str(tmp_path / "p.yaml"), "--preset", "baseline"]) == 1
    assert "over by" in capsys.readouterr().out
