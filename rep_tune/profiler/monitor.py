"""Measurement windows (after Zeus's ``begin_window`` / ``end_window``).

    monitor = Monitor.for_this_machine()
    with monitor.window("train") as w:
        ...
    print(w.result)      # elapsed time, energy per domain with its source, peak memory

Synchronisation and peak memory come from the one timing-and-memory module,
``rep_tune.runtime.measure``, imported only once torch is (this module never imports torch):
on CUDA the window's memory figure is the allocator peak, on the CPU the process RSS peak
(a whole-process figure, labelled so; peak *training* memory is ``measure.PeakMemory``).
"""
from __future__ import annotations

import socket
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rep_tune.figures import Cost, Figure
from rep_tune.profiler.meter import EnergyMeter


class ShortWindowWarning(UserWarning):
    """A window was shorter than an energy counter's update period."""


@dataclass
class WindowResult:
    """What one window cost. Energy figures carry their source; they are never mixed in a total."""

    name: str
    elapsed_s: float
    energy: dict[str, Figure] = field(default_factory=dict)     # per domain, J
    total_energy: Figure | None = None
    peak_memory_mb: Figure | None = None
    short_window: bool = False
    notes: list[str] = field(default_factory=list)
    machine: str = ""

    def to_cost(self, scope: str = "window") -> Cost:
        return Cost(latency_ms=Figure(self.elapsed_s * 1000, "ms", "measured", "wall clock", self.machine),
                    peak_memory_mb=self.peak_memory_mb, energy_j=self.total_energy, scope=scope)

    def __str__(self) -> str:
        parts = [f"{self.name}: {self.elapsed_s:.3f} s"]
        if self.total_energy:
            parts.append(f"energy {self.total_energy}")
        if self.peak_memory_mb:
            parts.append(f"peak {self.peak_memory_mb}")
        if self.short_window:
            parts.append("SHORT WINDOW")
        return ", ".join(parts)


def cuda_in_use() -> bool:
    """True when torch is already imported and CUDA is available (never imports torch itself)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def _sync() -> None:
    """Synchronise CUDA at a window boundary, when torch is in use (never imports torch itself)."""
    if "torch" in sys.modules:
        from rep_tune.runtime.measure import sync
        sync()


def _memory_window(nested: bool):
    """The window's peak-memory probe: CUDA allocator peak, or process RSS peak (MiB).

    Imports ``rep_tune.runtime.measure`` (and so torch) only when memory is tracked.
    """
    if cuda_in_use():
        from rep_tune.runtime.measure import CudaWindowPeak
        return CudaWindowPeak(reset=not nested)
    from rep_tune.runtime.measure import RssPeak
    return RssPeak()


@dataclass
class _Open:
    t0: float
    energy0: list[dict[str, float]]
    memory: object | None


class WindowHandle:
    """Yielded by ``Monitor.window``; ``result`` is set when the block exits."""

    def __init__(self, name: str):
        self.name = name
        self.result: WindowResult | None = None


class Monitor:
    """Energy meters + timer + peak memory, read at window boundaries (CUDA synchronized there)."""

    def __init__(self, meters: list[EnergyMeter] | None = None, *, machine: str | None = None,
                 track_memory: bool = True, notes: list[str] | None = None):
        self.meters = list(meters or [])
        self.machine = machine or socket.gethostname()
        self.track_memory = track_memory
        self.notes = list(notes or [])        # how the meters were chosen (why estimated, ...)
        self._open: dict[str, _Open] = {}
        for m in self.meters:
            m.start()

    @classmethod
    def for_this_machine(cls, *, power_w: float | None = None, jetson_root: str | Path = "/",
                         powercap: str | Path | None = None, **kwargs) -> "Monitor":
        """Auto-detect: Jetson INA3221, else NVML (+ RAPL for the CPU), else RAPL, else estimated."""
        from rep_tune.profiler.detect import detect_meters
        meters, notes = detect_meters(power_w=power_w, jetson_root=jetson_root, powercap=powercap)
        return cls(meters, notes=notes, **kwargs)

    @property
    def telemetry(self) -> str:
        """DeviceProfile.telemetry kind of the primary meter."""
        return self.meters[0].kind if self.meters else "none"

    @property
    def estimated(self) -> bool:
        return all(m.source == "estimated" for m in self.meters)

    def describe(self) -> str:
        return "; ".join(m.describe() for m in self.meters) or "no energy meter"

    def begin_window(self, name: str) -> None:
        if name in self._open:
            raise ValueError(f"measurement window {name!r} is already open")
        _sync()
        memory = _memory_window(nested=bool(self._open)) if self.track_memory else None
        self._open[name] = _Open(time.perf_counter(), [m.read() for m in self.meters], memory)

    def end_window(self, name: str) -> WindowResult:
        if name not in self._open:
            raise ValueError(f"no open measurement window {name!r}")
        _sync()
        t1 = time.perf_counter()
        readings = [m.read() for m in self.meters]
        w = self._open.pop(name)
        elapsed = t1 - w.t0
        res = WindowResult(name, elapsed, machine=self.machine)
        if w.memory is not None:
            res.peak_memory_mb = w.memory.stop()
        totals: list[Figure] = []
        for meter, e0, e1 in zip(self.meters, w.energy0, readings):
            per = {k: e1[k] - e0.get(k, 0.0) for k in e1}
            figs, total = self._figures(meter, per, elapsed, res)
            res.energy.update(figs)
            if total is not None:
                totals.append(total)
        if totals:
            sources = {f.source for f in totals}
            if len(sources) == 1:
                res.total_energy = Figure(sum(f.value for f in totals), "J", totals[0].source,
                                          " + ".join(f.detail for f in totals), self.machine)
            else:
                res.notes.append(f"no total energy: meters disagree on source ({', '.join(sorted(sources))}); "
                                 "measured and estimated figures are never summed")
        return res

    def _figures(self, meter: EnergyMeter, per: dict[str, float], elapsed: float,
                 res: WindowResult) -> tuple[dict[str, Figure], Figure | None]:
        detail = meter.describe()
        src = meter.source
        if elapsed < meter.update_period_s:
            res.short_window = True
            msg = (f"window {res.name!r} lasted {elapsed * 1000:.1f} ms, shorter than the {meter.kind} "
                   f"update period ({meter.update_period_s * 1000:.0f} ms): energy is unreliable")
            if any(v <= 0 for v in per.values()):
                power = meter.power_w()
                if power:
                    per = {k: (v if v > 0 else power.get(k, 0.0) * elapsed) for k, v in per.items()}
                    src, detail = "estimated", f"short window: instantaneous {meter.kind} power x time"
                    msg += "; the counter had not moved, so energy = instantaneous power x time (estimated)"
                else:
                    per = {k: v for k, v in per.items() if v > 0}
                    msg += "; the counter had not moved and no power reading exists: energy omitted"
            res.notes.append(msg)
            warnings.warn(msg, ShortWindowWarning, stacklevel=3)
        figs = {k: Figure(v, "J", src, detail, self.machine) for k, v in per.items()}
        total = meter.total(per) if per else None
        return figs, (Figure(total, "J", src, detail, self.machine) if total is not None else None)

    @contextmanager
    def window(self, name: str) -> Iterator[WindowHandle]:
        handle = WindowHandle(name)
        self.begin_window(name)
        try:
            yield handle
        finally:
            handle.result = self.end_window(name)

    def close(self) -> None:
        for m in self.meters:
            m.stop()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
