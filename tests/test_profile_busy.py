"""`rep-tune profile` refuses a busy machine: its repeated probes must agree within probe.AGREEMENT.

The probes' timer is replaced by a fake (``probe.time_repeats``): it runs nothing and returns
repeat times with a chosen spread, so each test profiles in about a second on any machine,
busy or not (only the power window and the timm blocks' construction still run).
"""
from __future__ import annotations

import re

import pytest

from rep_tune.cli import main
from rep_tune.device import Calibration, DeviceProfile
from rep_tune.profiler import probe
from rep_tune.profiler.device_profile import EXIT_BUSY, MachineBusy, profile_device
from rep_tune.schema import to_dict


def _base_ms(name: str) -> float:
    """A plausible median per probe: calibration runs grow with batch x tokens x width."""
    m = re.match(r"block d=(\d+) N=(\d+) B=(\d+)", name)
    if m:
        d, n, b = map(int, m.groups())
        return (0.2 + b * n * d / 2e4) * (2.5 if name.endswith("fwd+bwd") else 1.0)
    return 5.0


def _repeats(base: float, s: float, reps: int) -> list[float]:
    """``reps`` repeat times whose ``probe.spread`` is ``s``: the fastest is ``base``, the rest at
    ``base / (1 - s)`` (the median), in a shuffled order."""
    med = base / (1 - s)
    return [med, base] + [med] * (reps - 2)


def fake_timer(spread_of):
    """A timer for ``probe.time_repeats``: ``spread_of(probe name)`` is the spread of its repeats."""
    calls = []

    def timer(name, fn, device, *, warmup=1, reps=3, min_s=0.0, max_s=2.0):
        calls.append(name)
        return _repeats(_base_ms(name), spread_of(name), max(reps, probe.MIN_REPEATS))
    timer.calls = calls
    return timer


def _profile_args(out, *extra):
    return ["profile", "--quick", "--device", "cpu", "--threads", "1", "--watts", "20", "--no-progress",
            "--out", str(out), *extra]


def test_fake_repeats_have_the_spread_asked():
    assert probe.spread(_repeats(4.0, 0.2, 3)) == pytest.approx(0.2)
    assert probe.spread(_repeats(4.0, 0.02, 5)) == pytest.approx(0.02)


def test_quiet_machine_writes_a_calibrated_profile_with_its_spreads(tmp_path, monkeypatch, capsys):
    timer = fake_timer(lambda name: 0.02)
    monkeypatch.setattr(probe, "time_repeats", timer)
    out = tmp_path / "local.yaml"
    assert main(_profile_args(out)) == 0
    captured = capsys.readouterr()
    assert "busy" not in captured.err and "warning" not in captured.err
    assert "repeated probes: worst" in captured.out and "(limit 5 %)" in captured.out
    p = DeviceProfile.load(out)
    assert p.calibrated and p.calibration.noisy is False
    spreads = p.calibration.spreads
    assert {"matmul fp32", "copy", "autocast block fp32", probe.CALIBRATION_RUNS} <= set(spreads)
    assert all(v == pytest.approx(0.02, abs=1e-3) for v in spreads.values())
    agreement = p.identity["probe_agreement"]
    assert agreement["limit"] == probe.AGREEMENT and agreement["worst"] in spreads
    assert all(n >= probe.MIN_REPEATS for n in agreement["repeats"].values())
    # every probe of the profile went through the timer: the calibration grid's fwd and fwd+bwd included
    assert sum(c.startswith("block ") for c in timer.calls) == 2 * len(p.calibration.runs)


def test_busy_machine_is_refused_naming_the_probe(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(probe, "time_repeats", fake_timer(lambda name: 0.20 if name == "copy" else 0.02))
    out = tmp_path / "local.yaml"
    assert main(_profile_args(out)) == EXIT_BUSY == 75
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err                      # one line
    assert err == ("rep-tune profile: the machine was busy: repeated probes of copy differ by 20 % (limit 5 %); "
                   "the calibration is unreliable: rerun on a quiet machine, or pass --allow-noisy to write it "
                   "marked noisy")
    assert not out.exists()


def test_busy_calibration_runs_are_refused_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(probe, "time_repeats",
                        fake_timer(lambda name: 0.12 if name.startswith("block ") else 0.01))
    assert main(_profile_args(tmp_path / "p.yaml")) == 75
    assert f"repeated probes of {probe.CALIBRATION_RUNS} differ by 12 %" in capsys.readouterr().err


def test_allow_noisy_writes_the_profile_marked_noisy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(probe, "time_repeats", fake_timer(lambda name: 0.20 if name == "copy" else 0.02))
    out = tmp_path / "local.yaml"
    assert main(_profile_args(out, "--allow-noisy")) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("rep-tune profile: warning: the machine was busy: repeated probes of copy "
                                   "differ by 20 % (limit 5 %)")
    assert "calibration.noisy: true" in captured.err and "NOISY" in captured.out
    p = DeviceProfile.load(out)
    assert p.calibration.noisy is True and p.calibrated            # fitted, but marked
    assert p.calibration.spreads["copy"] == pytest.approx(0.20, abs=1e-3)
    assert p.calibration.spreads["matmul fp32"] == pytest.approx(0.02, abs=1e-3)
    assert "NOISY calibration" in p.description


def test_api_refuses_only_when_asked(monkeypatch):
    timer = fake_timer(lambda name: 0.3 if name == "matmul fp32" else 0.0)
    with pytest.raises(MachineBusy) as e:
        profile_device(quick=True, device="cpu", threads=1, power_w=20, progress=False, allow_noisy=False, timer=timer)
    assert e.value.probe == "matmul fp32" and e.value.spread == pytest.approx(0.3) and e.value.exit_code == 75
    # the default (search's `local` target, benchmarks) returns the profile, marked
    p = profile_device(quick=True, device="cpu", threads=1, power_w=20, progress=False, timer=timer)
    assert p.calibration.noisy and p.identity["probe_agreement"]["worst"] == "matmul fp32"


def test_agreement_rule():
    # one disturbed repeat of three is tolerated (the median ignores it); two are not
    assert probe.spread([10.0, 10.1, 30.0]) < probe.AGREEMENT
    assert probe.spread([10.0, 13.0, 30.0]) > probe.AGREEMENT
    assert probe.spread([5.0]) == 0.0
    rec = probe.Repeats(timer=lambda name, fn, device, **kw: {"tiny": [0.1, 0.2, 0.2], "few": [10.0, 20.0],
                                                              "ok": [10.0, 10.2, 10.3]}[name])
    for name in ("tiny", "few", "ok"):
        rec.median_ms(name, lambda: None, "cpu")
    assert rec.judged() == {"ok": pytest.approx(0.2 / 10.2)}          # tiny: < JUDGED_MIN_MS; few: < MIN_REPEATS
    assert set(rec.spreads()) == {"tiny", "few", "ok"}                 # all recorded
    # a group is time-weighted: a tiny run's jitter counts for its share of the time only
    grid = probe.Repeats(timer=lambda name, fn, device, **kw: {"a": [0.2, 0.3, 0.3], "b": [20.0, 20.1, 20.2]}[name])
    grid.median_ms("a", lambda: None, "cpu", group="runs")
    grid.median_ms("b", lambda: None, "cpu", group="runs")
    (s, total, n), = grid.spreads().values()
    assert s == pytest.approx((0.1 + 0.1) / 20.4) and s < probe.AGREEMENT and n == 3


def test_repeat_ms_keeps_every_repeat_and_at_least_three():
    ticks = iter(range(0, 10_000, 5))                   # a fake clock: 5 s per reading
    calls = []
    times = probe.repeat_ms(lambda: calls.append(1), "cpu", warmup=1, reps=5, max_s=2.0,
                            clock=lambda: float(next(ticks)))
    assert len(times) == probe.MIN_REPEATS and len(calls) == 1 + probe.MIN_REPEATS   # max_s cut 5 to 3, not 1
    assert all(t == pytest.approx(5000.0) for t in times)


def test_old_profiles_keep_their_file_form():
    assert "noisy" not in to_dict(Calibration()) and "spreads" not in to_dict(Calibration())
    assert to_dict(Calibration(spreads={"copy": 0.01}))["noisy"] is False
