"""``profile_device``: measure this machine and return a DeviceProfile (what ``rep-tune profile`` writes).

Every timed probe (matmul per dtype, copy, the autocast blocks, the ViT-block calibration runs)
is repeated at least ``probe.MIN_REPEATS`` times and its repeats must agree: ``probe.spread``
(median repeat's excess over the fastest, relative) at most ``probe.AGREEMENT`` (5 %). A probe
that disagrees means the machine was busy while it ran, and the calibration describes the load,
not the device: ``profile_device(allow_noisy=False)`` then raises ``MachineBusy`` (what
``rep-tune profile`` does by default, exit 75); otherwise the profile is returned with
``calibration.noisy: true``. Every probe's spread is in ``calibration.spreads`` either way.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path
from typing import Callable

import torch
from rep_tune.progress import ProgressBar

from rep_tune.device import Budgets, Calibration, DeviceProfile, Spec, shipped_profiles
from rep_tune.profiler import probe
from rep_tune.profiler.detect import estimated_cpu_power_w
from rep_tune.profiler.jetson import is_jetson, jetson_model, power_mode
from rep_tune.profiler.monitor import Monitor
from rep_tune.runtime.measure import sync

IDLE_FRACTION = 0.3          # idle / loaded power assumed when nothing can be measured (estimated)
MEMORY_BUDGET_FRACTION = 0.8
EXIT_BUSY = 75               # EX_TEMPFAIL: the machine was busy; rerun on a quiet one


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %" if x >= 0.01 else f"{100 * x:.1f} %"


def busy_message(probe_name: str, spread: float) -> str:
    """The one line saying which repeated probe disagreed, by how much, against which limit."""
    return (f"the machine was busy: repeated probes of {probe_name} differ by {_pct(spread)} "
            f"(limit {_pct(probe.AGREEMENT)}); the calibration is unreliable")


class MachineBusy(RuntimeError):
    """Repeated probes disagreed beyond ``probe.AGREEMENT``: the calibration would describe the load."""

    exit_code = EXIT_BUSY

    def __init__(self, probe_name: str, spread: float, spreads: dict[str, float]) -> None:
        super().__init__(busy_message(probe_name, spread))
        self.probe, self.spread, self.spreads = probe_name, spread, spreads


def noisy_reason(profile: DeviceProfile) -> str | None:
    """``busy_message`` for a profile whose calibration is marked noisy, else None."""
    if not (profile.calibration and profile.calibration.noisy):
        return None
    agreement = profile.identity.get("probe_agreement") or {}
    worst = agreement.get("worst")
    if worst and worst in profile.calibration.spreads:
        return busy_message(worst, profile.calibration.spreads[worst])
    return "the machine was busy: repeated probes disagree; the calibration is unreliable"


def _settings(kind: str, quick: bool) -> dict:
    cpu = kind == "cpu"
    return {"matmul_n": (512 if quick else 1024) if cpu else (2048 if quick else 8192),
            "copy_mb": (64 if quick else 256) if cpu else (256 if quick else 1024),
            "power_s": 0.3 if quick else 2.0, "reps": max(probe.MIN_REPEATS, 3 if quick else 5),
            "matmul_min_s": 0.0 if quick else 0.3}


def _fit(profile: DeviceProfile) -> tuple[DeviceProfile, str]:
    """Fill the efficiency factors with the cost model's ``calibrate.fit``."""
    from rep_tune.cost.calibrate import fit
    return fit(profile), "efficiency fitted by rep_tune.cost.calibrate.fit"


def _datasheet_match(gpu_name: str) -> DeviceProfile | None:
    """The shipped profile whose ``identity.match`` strings all occur in the GPU's name, if any."""
    for path in shipped_profiles():
        try:
            prof = DeviceProfile.load(path)
        except Exception:
            continue
        match = prof.identity.get("match") or []
        if match and all(re.search(rf"\b{re.escape(m)}\b", gpu_name, re.I) for m in match):
            return prof
    return None


def _training_dtype(dev: torch.device, achieved: dict[str, float], reps: int,
                    allowed: set[str], repeats: probe.Repeats | None = None) -> tuple[str, str, dict[str, float]]:
    """(dtype, why, block ms per dtype): ``probe.choose_dtype`` on this device's matmul rates and a
    ViT block's forward+backward under autocast (ViT-Ti width on the CPU, ViT-B on a GPU)."""
    dim, heads = (192, 3) if dev.type == "cpu" else (768, 12)
    block_ms = {}
    for name in achieved:
        try:
            block_ms[name] = round(probe.autocast_block_ms(dev, name, batch=16, tokens=197, dim=dim, heads=heads,
                                                           reps=reps, repeats=repeats), 3)
        except RuntimeError:          # autocast unsupported for this dtype here
            pass
    usable = {k: v for k, v in achieved.items() if k in allowed or k == "fp32"}
    dtype, why = probe.choose_dtype(usable, block_ms)
    if dtype not in allowed:
        dtype, why = "fp32", f"fp32 ({dtype} is faster but the data sheet has no {dtype} peak); " + why
    return dtype, why, block_ms


def _power(monitor: Monitor, seconds: float, load: Callable[[], None]) -> tuple[float | None, float | None, str]:
    """(idle W, loaded W, source) from two windows: sleeping, then running ``load`` repeatedly."""
    with monitor.window("idle") as w:
        time.sleep(seconds)
    idle = w.result
    with monitor.window("loaded") as w:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            load()
    loaded = w.result
    if idle.total_energy is None or loaded.total_energy is None:
        return None, None, "unavailable"
    return (idle.total_energy.value / idle.elapsed_s, loaded.total_energy.value / loaded.elapsed_s,
            loaded.total_energy.source)


def profile_device(quick: bool = False, device: str | None = None, *, power_w: float | None = None,
                   threads: int | None = None, progress: bool = True, allow_noisy: bool = True,
                   timer: Callable[..., list[float]] | None = None) -> DeviceProfile:
    """Measure this machine: identity, matmul TFLOP/s per dtype, copy bandwidth, usable memory,
    idle/loaded power, the training dtype, ViT-block calibration runs at that dtype; then the
    cost model's fit when present.

    The profile's ``dtype`` (what REP training runs in here, ``training.precision``) follows
    ``probe.choose_dtype``: bf16 (or fp16) where it reaches >= 1.5x fp32's matmul rate and runs a
    ViT block's forward+backward under autocast >= 1.2x faster; fp32 otherwise. The measurements
    and the reason are in ``identity.dtype_choice`` and ``identity.autocast_block_ms``.

    ``power_w`` is only used when no energy counter is readable (energy then labelled estimated).
    ``threads``: CPU threads to profile with (default: torch's, or 1 when the cores are busy).

    Repeated probes must agree (module doc): when one does not, ``allow_noisy=False`` raises
    ``MachineBusy`` naming it (before the fit); ``allow_noisy=True`` returns the profile with
    ``calibration.noisy`` true. ``calibration.spreads`` holds every probe's spread, and
    ``identity.probe_agreement`` the rule, the worst judged probe and the ones too short to judge.
    ``timer(probe, fn, device, warmup=, reps=, min_s=, max_s=) -> [ms per repeat]`` replaces the
    probes' timer (default ``probe.time_repeats``; a test's fake timer).
    """
    before = torch.get_num_threads()
    try:
        return _profile(quick, device, power_w, threads, progress, allow_noisy, timer)
    finally:
        torch.set_num_threads(before)


def _agreement(rec: probe.Repeats) -> tuple[dict[str, float], dict, tuple[str, float] | None]:
    """(spread per probe, the identity.probe_agreement record, (worst probe, spread) when over the limit)."""
    spreads = rec.spreads()
    judged = rec.judged()
    worst = rec.worst()
    record = {"rule": (f"each probe's repeats (>= {probe.MIN_REPEATS}) agree: (median - fastest) / median "
                       f"<= {probe.AGREEMENT:g}; {probe.CALIBRATION_RUNS} judged together, time-weighted, and so "
                       f"are {probe.MERGE_RUNS}; "
                       f"probes under {probe.JUDGED_MIN_MS:g} ms not judged (timer/launch jitter)"),
              "limit": probe.AGREEMENT,
              "worst": worst[0] if worst else None,
              "repeats": {g: n for g, (_, _, n) in spreads.items()},
              "not_judged": [g for g in spreads if g not in judged]}
    bad = worst if worst is not None and worst[1] > probe.AGREEMENT else None
    return {g: round(s_, 4) for g, (s_, _, _) in spreads.items()}, record, bad


def _identity(dev: torch.device, kind: str, threads: int | None) -> dict:
    """What the machine is (host, CPU/GPU, driver, Jetson model and power mode); on CPU also sets
    torch's thread count (``probe.pick_cpu_threads``) and says why."""
    if dev.type == "cpu":
        n_threads, why_threads = probe.pick_cpu_threads(threads)
        torch.set_num_threads(n_threads)
    ident = probe.identity(dev)
    if dev.type == "cpu":
        ident["threads_choice"] = why_threads
    if kind == "jetson":
        ident.update(model=jetson_model(), power_mode=power_mode())
    if dev.type == "cuda" and kind == "gpu":
        try:
            from rep_tune.profiler import nvml
            ident["nvml"] = nvml.gpu_info(torch.cuda.current_device() if dev.index is None else dev.index)
            ident["driver"] = ident["nvml"].get("driver")
        except Exception as e:      # NVML absent or unusable: identity from torch only
            ident["nvml"] = f"unavailable: {e}"
    return ident


def _measure_power(dev: torch.device, s: dict, power_w: float | None,
                   figure_sources: dict[str, str]) -> tuple[float | None, float | None, Monitor]:
    """Idle and loaded power: measured/integrated where a counter exists, else an estimate labelled
    as such in ``figure_sources``; the (closed) monitor says which."""
    guess = power_w if power_w is not None else (estimated_cpu_power_w() if dev.type == "cpu" else None)
    monitor = Monitor.for_this_machine(power_w=guess, track_memory=False)
    a = torch.randn(s["matmul_n"], s["matmul_n"], device=dev)

    def load() -> None:
        a @ a
        sync(dev)
    try:
        idle_w, loaded_w, psrc = _power(monitor, s["power_s"], load)
    finally:
        monitor.close()
    if psrc == "estimated":
        basis = f"{power_w:g} W given" if power_w is not None else (
            f"{os.cpu_count()} cores x {guess / (os.cpu_count() or 1):g} W/core, a rough x86 figure")
        idle_w = round(IDLE_FRACTION * loaded_w, 2)
        figure_sources["spec.power_w"] = f"estimated ({basis}; no readable energy counter)"
        figure_sources["spec.idle_power_w"] = f"estimated ({IDLE_FRACTION:g} x loaded power)"
    elif psrc != "unavailable":
        figure_sources["spec.power_w"] = f"{psrc} ({monitor.describe()}, matmul loop {s['power_s']:g} s)"
        figure_sources["spec.idle_power_w"] = f"{psrc} ({monitor.describe()}, idle {s['power_s']:g} s)"
    return idle_w, loaded_w, monitor


def _peaks(dev: torch.device, sheet, achieved: dict[str, float], bandwidth: float, s: dict,
           figure_sources: dict[str, str]) -> tuple[dict[str, float], float]:
    """Peak TFLOPS per dtype and memory bandwidth: the data sheet's where a shipped profile matches
    the GPU, else the achieved figures (said so in ``figure_sources``)."""
    if sheet is not None:
        peaks, bw_spec = dict(sheet.spec.peak_tflops), sheet.spec.memory_bandwidth_gbs
        figure_sources["spec.peak_tflops"] = f"data sheet, from shipped profile {sheet.name!r}"
        figure_sources["spec.memory_bandwidth_gbs"] = f"data sheet, from shipped profile {sheet.name!r}"
    else:
        peaks, bw_spec = dict(achieved), bandwidth
        figure_sources["spec.peak_tflops"] = (f"measured: achieved {s['matmul_n']}^3 matmul per dtype (no data sheet); "
                                              "a dtype slower than fp32 is emulated/unaccelerated here, not a peak")
        figure_sources["spec.memory_bandwidth_gbs"] = f"measured: {s['copy_mb']} MB tensor copy"
    figure_sources["spec.usable_memory_mb"] = ("measured: CUDA mem_get_info free" if dev.type == "cuda"
                                               else "measured: available RAM (psutil or /proc/meminfo)")
    return peaks, bw_spec


def _slow_dtypes(achieved: dict[str, float]) -> dict[str, str]:
    """CPU dtypes slower than fp32 here (emulated: no native support), each with why."""
    return {k: f"{v:.4g} TFLOPS achieved < fp32 {achieved['fp32']:.4g}: no native support on this CPU, "
               "do not train in it" for k, v in achieved.items() if k != "fp32" and v < achieved["fp32"]}


def _default_budgets(usable: float) -> Budgets:
    """A profiled machine's budgets: none on latency, memory a fraction of what was usable."""
    return Budgets(
        latency_ms=None, batch_size=16, peak_memory_mb=round(MEMORY_BUDGET_FRACTION * usable, 1), energy_j=None,
        rationale=(f"Profiled machine: no latency budget by default (set one, or use a budget relative to a "
                   f"baseline); peak memory {MEMORY_BUDGET_FRACTION:.0%} of the memory usable at profiling "
                   f"time ({usable:.0f} MB), leaving room for the data loader and other processes."))


def _profile(quick: bool, device: str | None, power_w: float | None, threads: int | None,
             progress: bool, allow_noisy: bool = True,
             timer: Callable[..., list[float]] | None = None) -> DeviceProfile:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here")
    kind = "jetson" if is_jetson() else ("gpu" if dev.type == "cuda" else "cpu")
    s = _settings("cpu" if dev.type == "cpu" else "gpu", quick)
    grid = probe.calibration_grid("cpu" if dev.type == "cpu" else "gpu", quick)
    dtypes = probe.supported_dtypes(dev)
    rec = probe.Repeats(timer)
    bar = ProgressBar(7 + len(dtypes) + len(grid), "profile", unit="steps", enabled=progress, transient=True)

    def step(text: str) -> None:
        bar.set_postfix_str(text)
        bar.update(1)

    ident = _identity(dev, kind, threads)
    figure_sources: dict[str, str] = {}
    step("identity")

    achieved: dict[str, float] = {}
    for name in dtypes:
        bar.set_postfix_str(f"matmul {name}")
        # on CPU, half-precision matmuls are usually emulated (10-50x slower): a smaller size suffices
        n = s["matmul_n"] // 2 if dev.type == "cpu" and name != "fp32" else s["matmul_n"]
        achieved[name] = round(probe.matmul_tflops(dev, name, n, reps=s["reps"], min_s=s["matmul_min_s"],
                                                   repeats=rec), 5)
        step(f"matmul {name}")
    bandwidth = round(probe.copy_bandwidth_gbs(dev, s["copy_mb"], reps=s["reps"], repeats=rec), 2)
    step("bandwidth")
    total_mb, usable_mb = probe.memory_mb(dev)
    step("memory")

    idle_w, loaded_w, monitor = _measure_power(dev, s, power_w, figure_sources)
    step("power")

    sheet = _datasheet_match(ident.get("gpu", "")) if dev.type == "cuda" else None
    dtype, why_dtype, block_ms = _training_dtype(dev, achieved, s["reps"],
                                                 allowed=set(sheet.spec.peak_tflops) if sheet else set(achieved),
                                                 repeats=rec)
    ident.update(dtype_choice=why_dtype, autocast_block_ms=block_ms)
    step("dtype")
    runs = probe.run_grid(dev, grid, dtype, reps=s["reps"], progress=lambda t: step(t), repeats=rec)
    bar.set_postfix_str("fixed cost per iteration")
    iterations = probe.iteration_runs(dev, dtype, reps=s["reps"])
    step("fixed cost")
    bar.set_postfix_str("AToM merges")
    merges = probe.merge_runs(dev, dtype, quick=quick, reps=s["reps"], repeats=rec)
    step("merges")
    bar.close()
    spreads, agreement, busy = _agreement(rec)
    if busy is not None and not allow_noisy:
        raise MachineBusy(busy[0], busy[1], spreads)

    peaks, bw_spec = _peaks(dev, sheet, achieved, bandwidth, s, figure_sources)
    ident.update(achieved_tflops=achieved, achieved_bandwidth_gbs=bandwidth, figure_sources=figure_sources,
                 quick=quick, probe_agreement=agreement)
    if dev.type == "cpu" and (slow := _slow_dtypes(achieved)):
        ident["slow_dtypes"] = slow
    usable = round(usable_mb, 1)
    estimated = [k for k, v in figure_sources.items() if v.startswith("estimated")]
    desc = (f"Measured by `rep-tune profile{' --quick' if quick else ''}` on {ident['host']} "
            f"({ident.get('gpu') or ident['cpu']}). Telemetry: {monitor.describe()}. "
            + (f"ESTIMATED figures (no counter): {', '.join(estimated)}." if estimated else "No estimated figures.")
            + (f" NOISY calibration: {busy_message(*busy)}." if busy else ""))
    profile = DeviceProfile(
        name=f"local-{ident['host']}-{dev.type}", kind=kind, description=desc, dtype=dtype,
        spec=Spec(peak_tflops=peaks, memory_bandwidth_gbs=bw_spec, memory_mb=round(total_mb, 1),
                  usable_memory_mb=usable, power_w=None if loaded_w is None else round(loaded_w, 2),
                  idle_power_w=None if idle_w is None else round(idle_w, 2), cpu=ident["cpu"]),
        budgets=_default_budgets(usable),
        calibration=Calibration(measured_on=f"{ident['host']} {dt.datetime.now().isoformat(timespec='seconds')}",
                                dtype=dtype, runs=runs, iterations=iterations, merges=merges, noisy=busy is not None,
                                spreads=spreads),
        telemetry=monitor.telemetry if not monitor.estimated else "none",
        identity=ident,
        sources=[f"rep-tune profile ({'quick' if quick else 'full'}) on {ident['host']}"]
                + ([f"data sheet peaks: {s_}" for s_ in sheet.sources] if sheet else []),
    )
    profile, how = _fit(profile)
    profile.identity["efficiency_fit"] = how
    return profile.validate()


def summary(profile: DeviceProfile, path: str | Path | None = None) -> str:
    """Human summary of a measured profile, saying which figures are estimated."""
    fs = profile.identity.get("figure_sources", {})
    tag = lambda key: f"  [{fs[key].split(' ', 1)[0].rstrip(':').upper()}]" if key in fs else ""   # noqa: E731
    sp = profile.spec
    lines = [f"device profile {profile.name} ({profile.kind}, dtype {profile.dtype})"]
    if path:
        lines.append(f"written to {path}")
    peaks = ", ".join(f"{k} {v:.4g}" for k, v in sp.peak_tflops.items())
    lines += [f"  matmul TFLOP/s: {peaks}{tag('spec.peak_tflops')}",
              f"  training dtype: {profile.identity.get('dtype_choice', profile.dtype)}",
              f"  memory bandwidth: {sp.memory_bandwidth_gbs:.4g} GB/s{tag('spec.memory_bandwidth_gbs')}",
              f"  memory: {sp.memory_mb:.0f} MB total, {sp.usable_memory_mb or 0:.0f} MB usable{tag('spec.usable_memory_mb')}",
              f"  power: idle {sp.idle_power_w} W{tag('spec.idle_power_w')}, loaded {sp.power_w} W{tag('spec.power_w')}",
              f"  telemetry: {profile.telemetry}",
              f"  calibration: {len(profile.calibration.runs) if profile.calibration else 0} ViT-block runs, "
              f"{len(profile.calibration.merges) if profile.calibration else 0} AToM merges; "
              f"efficiency {'fitted' if profile.calibrated else 'empty'} ({profile.identity.get('efficiency_fit', '')})",
              f"  budgets: latency {profile.budgets.latency_ms} ms, peak memory {profile.budgets.peak_memory_mb} MB "
              f"at batch {profile.budgets.batch_size}"]
    cal = profile.calibration
    if cal and cal.spreads:
        agreement = profile.identity.get("probe_agreement") or {}
        worst = agreement.get("worst")
        limit = agreement.get("limit", 0.05)
        head = (f"NOISY: {noisy_reason(profile)}" if cal.noisy else
                f"worst {worst} {_pct(cal.spreads[worst])} (limit {_pct(limit)})" if worst in cal.spreads else
                "no probe long enough to judge")
        lines.append(f"  repeated probes: {head}; " + ", ".join(f"{k} {_pct(v)}" for k, v in cal.spreads.items()))
    for k, v in profile.identity.get("slow_dtypes", {}).items():
        lines.append(f"  note: {k}: {v}")
    est = [k for k, v in fs.items() if v.startswith("estimated")]
    if est:
        lines.append(f"  ESTIMATED (no energy counter readable here): {', '.join(est)}")
    return "\n".join(lines)
