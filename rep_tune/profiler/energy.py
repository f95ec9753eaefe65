"""Energy of a run's training iterations: measurement windows around them, summed, per iteration.

    energy = RunEnergy.for_this_machine("cpu")
    energy.begin(); ...k iterations...; energy.end(k)      # as often as needed (pause around probes)
    energy.per_iteration()   # Figure in J with its source: measured | integrated | estimated
    energy.close()

The learner (``rep-tune train``, local-target search trials), ``measure_iterations`` and
``rep-tune verify`` use it. The meters are the profiler's (``Monitor.for_this_machine``: Jetson
INA3221 rails, NVML, RAPL); where none is readable the figure is power x time, labelled
``estimated``, and the reason is said once per process on stderr. A meter that fails while
the run goes on never fails the run: from then on the energy is estimated (or omitted when
there is no power figure), and the failure is said once. Importing this module imports no torch.
"""
from __future__ import annotations

import sys
import threading
import time
import warnings
from pathlib import Path

from rep_tune.figures import Figure
from rep_tune.profiler.meter import EstimatedMeter
from rep_tune.profiler.monitor import Monitor, ShortWindowWarning

_STRENGTH = {"measured": 0, "integrated": 1, "estimated": 2}     # a sum is only as good as its weakest part
_SAID: set[str] = set()
_SAID_LOCK = threading.Lock()


def say_once(key: str, message: str) -> None:
    """Print ``message`` on stderr the first time ``key`` is seen in this process."""
    with _SAID_LOCK:
        if key in _SAID:
            return
        _SAID.add(key)
    print(f"rep-tune: {message}", file=sys.stderr, flush=True)


class RunEnergy:
    """Sum of a run's energy windows and of the training iterations they covered."""

    def __init__(self, monitor: Monitor | None, *, power_w: float | None = None, label: str = "run") -> None:
        self.monitor = monitor
        self.power_w = power_w            # fallback when a meter fails or a window has no total
        self.label = label
        self.joules = 0.0
        self.iterations = 0
        self.seconds = 0.0
        self.windows = 0
        self.short_windows = 0
        self.sources: set[str] = set()
        self.notes: list[str] = list(monitor.notes) if monitor is not None else []
        self.incomplete = False           # some window has no figure and no power to estimate it
        self._broken = monitor is None
        self._t0: float | None = None
        self._name = f"rep-tune-{label}-{id(self)}"

    @classmethod
    def for_this_machine(cls, device: str | None = "cpu", *, power_w: float | None = None,
                         powercap: str | Path | None = None, jetson_root: str | Path = "/",
                         label: str = "run") -> "RunEnergy":
        """Meters of this machine; on the CPU an estimate of its loaded power is the fallback."""
        from rep_tune.profiler.detect import detect_meters, estimated_cpu_power_w
        cpu = str(device or "cpu").startswith("cpu")
        guess = power_w if power_w is not None else (estimated_cpu_power_w() if cpu else None)
        try:
            meters, notes = detect_meters(power_w=guess, jetson_root=jetson_root, powercap=powercap)
            monitor = Monitor(meters, notes=notes, track_memory=False)
        except Exception as e:          # a meter that cannot even start: estimate, say why
            monitor = Monitor([EstimatedMeter(guess, f"energy meters failed to start: {e}")],
                              notes=[f"energy meters failed to start: {e}"], track_memory=False)
        run = cls(monitor, power_w=guess, label=label)
        if monitor.estimated:
            why = "; ".join(monitor.notes) or monitor.describe()
            say_once("estimated:" + why, f"energy per iteration is ESTIMATED ({monitor.describe()}): {why}")
        return run

    # ---- windows --------------------------------------------------------------------------------
    def begin(self) -> None:
        """Open a window (the iterations that follow, until ``end``)."""
        self._t0 = time.perf_counter()
        if self._broken:
            return
        try:
            self.monitor.begin_window(self._name)
        except Exception as e:
            self._fail(e)

    def end(self, iterations: int) -> None:
        """Close the window opened by ``begin``; it covered ``iterations`` training iterations."""
        if self._t0 is None:
            return
        elapsed = time.perf_counter() - self._t0
        self._t0 = None
        if iterations <= 0:                  # an empty window (e.g. a probe right at the start): dropped
            if not self._broken:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ShortWindowWarning)
                        self.monitor.end_window(self._name)
                except Exception as e:
                    self._fail(e)
            return
        self.iterations += iterations
        self.seconds += elapsed
        self.windows += 1
        if self._broken:
            self._estimate(elapsed)
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ShortWindowWarning)   # counted, said in the figure's detail
                res = self.monitor.end_window(self._name)
        except Exception as e:
            self._fail(e)
            self._estimate(elapsed)
            return
        self.short_windows += int(res.short_window)
        if res.total_energy is None:
            self.notes += [n for n in res.notes if n not in self.notes]
            self._estimate(elapsed)
            return
        self.joules += res.total_energy.value
        self.sources.add(res.total_energy.source)

    def _estimate(self, elapsed: float) -> None:
        if self.power_w:
            self.joules += self.power_w * elapsed
            self.sources.add("estimated")
        else:
            self.incomplete = True

    def _fail(self, e: BaseException) -> None:
        self._broken = True
        what = self.monitor.describe() if self.monitor is not None else "energy meter"
        fallback = (f"estimated from {self.power_w:g} W x time from now on" if self.power_w
                    else "energy omitted (no power figure to estimate it)")
        note = f"energy meter failed ({what}: {type(e).__name__}: {e}); {fallback}"
        self.notes.append(note)
        say_once("failed:" + what, note)

    # ---- result ---------------------------------------------------------------------------------
    @property
    def source(self) -> str | None:
        return max(self.sources, key=_STRENGTH.__getitem__) if self.sources else None

    def per_iteration(self) -> Figure | None:
        """Energy per training iteration over every closed window (None when nothing was measured)."""
        if not self.iterations or not self.sources or self.incomplete:
            return None
        how = self.monitor.describe() if self.monitor is not None else "no meter"
        if self._broken and "estimated" in self.sources:
            how += f"; meter failed, estimated from {self.power_w:g} W x time"
        detail = (f"{how}; {self.joules:.4g} J over {self.iterations} training iterations "
                  f"({self.seconds:.3g} s, {self.windows} window{'s' if self.windows != 1 else ''})")
        if self.short_windows:
            detail += f"; {self.short_windows} window(s) shorter than the meter's update period"
        machine = self.monitor.machine if self.monitor is not None else ""
        return Figure(self.joules / self.iterations, "J", self.source, detail, machine)

    def close(self) -> None:
        """Stop the meters' pollers (idempotent); a failing stop is ignored."""
        if self.monitor is not None:
            try:
                self.monitor.close()
            except Exception:
                pass

    def __enter__(self) -> "RunEnergy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def training_meter(device: str | None = "cpu") -> "RunEnergy":
    """This machine's energy windows for a training run on ``device`` (what ``rep-tune train`` and
    the search hand to ``runtime.learner.train(energy=training_meter)``)."""
    return RunEnergy.for_this_machine(device, label="train")
