"""`rep-tune profile --quick` for real on this machine's CPU, and `rep-tune devices`."""
from __future__ import annotations

import pytest

from rep_tune.cli import main
from rep_tune.device import DeviceProfile


@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "local.yaml"
    # --allow-noisy: these tests check the profile's content, not this machine's quiet (a busy machine,
    # e.g. a benchmark running on the same cores, is refused without it: tests/test_profile_busy.py)
    rc = main(["profile", "--quick", "--device", "cpu", "--out", str(out), "--no-progress", "--watts", "20",
               "--allow-noisy"])
    assert rc == 0
    return out


def test_quick_cpu_profile_is_valid_and_labelled(quick_profile, capsys):
    p = DeviceProfile.load(quick_profile)
    assert p.kind == "cpu" and p.telemetry in ("none", "rapl")
    # the training dtype follows probe.choose_dtype on the measured figures (bf16 on CPUs with AMX/avx512_bf16)
    from rep_tune.profiler.probe import choose_dtype
    assert p.dtype == choose_dtype(p.identity["achieved_tflops"], p.identity["autocast_block_ms"])[0]
    assert p.identity["dtype_choice"].startswith(p.dtype) and set(p.identity["autocast_block_ms"]) >= {"fp32"}
    assert p.spec.peak_tflops["fp32"] > 0 and p.spec.memory_bandwidth_gbs > 0
    assert 0 < p.spec.usable_memory_mb <= p.spec.memory_mb
    assert p.budgets.peak_memory_mb == pytest.approx(0.8 * p.spec.usable_memory_mb, rel=1e-3)
    assert p.budgets.latency_ms is None and p.budgets.rationale
    fs = p.identity["figure_sources"]
    assert fs["spec.peak_tflops"].startswith("measured")
    if p.telemetry == "none":            # no counter here: power figures must say estimated
        assert fs["spec.power_w"].startswith("estimated") and "20 W given" in fs["spec.power_w"]
        assert p.spec.power_w == pytest.approx(20.0, rel=0.05)
        assert p.spec.idle_power_w < p.spec.power_w
        assert "ESTIMATED" in p.description


def test_quick_profile_has_calibration_runs(quick_profile):
    p = DeviceProfile.load(quick_profile)
    runs = p.calibration.runs
    assert len(runs) >= 8
    assert {r.tokens for r in runs} >= {17, 65, 197} and {r.batch for r in runs} >= {1, 16}
    assert len({r.embed_dim for r in runs}) >= 2
    assert all(r.fwd_ms > 0 and r.fwd_bwd_ms > 0 and r.dtype == p.dtype for r in runs)
    big = max(runs, key=lambda r: r.batch * r.tokens * r.embed_dim)
    small = min(runs, key=lambda r: r.batch * r.tokens * r.embed_dim)
    assert big.fwd_bwd_ms > small.fwd_ms
    # every probe's repeats are judged and recorded, quiet or not
    from rep_tune.profiler.probe import CALIBRATION_RUNS, MIN_REPEATS
    assert {"matmul fp32", "copy", CALIBRATION_RUNS} <= set(p.calibration.spreads)
    assert all(v >= 0 for v in p.calibration.spreads.values())
    assert all(n >= MIN_REPEATS for n in p.identity["probe_agreement"]["repeats"].values())
    # the fixed cost per iteration: timed no-block iterations of the embedded default at 3 batch sizes,
    # and the overhead the fit derives from them (what the counts of the rest miss, never negative)
    from rep_tune.config import EMBEDDED_BACKBONE
    from rep_tune.cost.calibrate import fixed_cost
    its = p.calibration.iterations
    assert [(i.backbone, i.batch, i.dtype) for i in its] == [(EMBEDDED_BACKBONE, b, p.dtype) for b in (8, 16, 32)]
    assert all(i.ms > 0 for i in its)
    gaps = sorted(fixed_cost(p))
    assert p.calibration.overhead_ms == pytest.approx(max(0.0, gaps[1]), abs=1e-6)      # the median of 3
    # AToM merges timed on the grid's widths and tokens, judged with the other probes
    from rep_tune.profiler.probe import MERGE_RUNS, merge_grid
    ms = p.calibration.merges
    assert [(m.batch, m.tokens, m.embed_dim, m.merges) for m in ms] == merge_grid("cpu", quick=True)
    assert all(0 < m.fwd_ms < m.fwd_bwd_ms and m.dtype == p.dtype for m in ms)
    assert MERGE_RUNS in p.calibration.spreads


def test_devices_cli_lists_user_profile(quick_profile, capsys):
    assert main(["devices", "--dir", str(quick_profile.parent)]) == 0
    out = capsys.readouterr().out
    assert "jetson_orin " in out and "local-" in out and "(user)" in out


def test_dtype_rule():
    from rep_tune.profiler.probe import choose_dtype
    fp32_only = choose_dtype({"fp32": 0.1, "bf16": 0.05}, {"fp32": 10.0, "bf16": 20.0})
    assert fp32_only[0] == "fp32" and "bf16" in fp32_only[1]
    assert choose_dtype({"fp32": 0.1, "bf16": 0.5}, {"fp32": 10.0, "bf16": 6.0})[0] == "bf16"
    assert choose_dtype({"fp32": 0.1, "bf16": 0.5}, {"fp32": 10.0, "bf16": 9.5})[0] == "fp32"   # block not faster
    assert choose_dtype({"fp32": 0.1, "bf16": 0.12}, {"fp32": 10.0, "bf16": 5.0})[0] == "fp32"  # matmul not faster
    assert choose_dtype({"fp32": 10, "bf16": 400, "fp16": 400}, {"fp32": 10.0, "bf16": 3.0, "fp16": 2.9})[0] == "bf16"
    assert choose_dtype({"fp32": 10, "fp16": 100}, {"fp32": 10.0, "fp16": 4.0})[0] == "fp16"  # no bf16 (e.g. T4)
