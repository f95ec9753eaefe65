"""The one interface every energy telemetry backend implements, plus the shared power integrator.

A meter reports *cumulative* energy in joules per domain since ``start()``; a measurement window
is the difference of two readings. ``source`` says how the joules were obtained:

measured    a hardware energy counter (NVML total-energy counter, RAPL energy_uj)
integrated  power samples integrated over time (NVML power polling, Jetson INA3221 rails)
estimated   a power figure (spec sheet or a given watts) x elapsed time: no counter at all
"""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Callable

from rep_tune.figures import Source


class EnergyMeter(ABC):
    """Cumulative energy per domain. Subclasses set the class attributes and implement ``read``."""

    kind: str = "none"                 # DeviceProfile.telemetry value: nvml | jetson-ina3221 | rapl | none
    source: Source = "estimated"
    update_period_s: float = 0.0       # windows shorter than this are flagged as unreliable

    @property
    @abstractmethod
    def domains(self) -> tuple[str, ...]:
        """Names of the energy domains ``read()`` returns (e.g. ``gpu0``, ``package-0``, ``VDD_IN``)."""

    @abstractmethod
    def read(self) -> dict[str, float]:
        """Cumulative energy in J per domain since ``start()`` (monotonically non-decreasing)."""

    def total(self, energy: dict[str, float]) -> float | None:
        """Whole-device energy of a window from per-domain energies (default: sum of all domains)."""
        return sum(energy.values()) if energy else None

    def power_w(self) -> dict[str, float] | None:
        """An instantaneous power reading per domain, when the backend has one (short-window fallback)."""
        return None

    def describe(self) -> str:
        return f"{self.kind} ({self.source})"

    def start(self) -> None:
        """Begin background polling, if the backend needs it. Idempotent."""

    def stop(self) -> None:
        """Stop background polling. Idempotent."""

    def __enter__(self) -> "EnergyMeter":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Poller:
    """Calls ``fn`` every ``interval_s`` seconds in a daemon thread until stopped."""

    def __init__(self, fn: Callable[[], None], interval_s: float, name: str = "rep-tune-poller"):
        self.fn, self.interval_s, self.name = fn, interval_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except BaseException as e:   # a failing sensor must not kill the process; read() re-raises
                self.error = e
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.interval_s))
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class PowerIntegrator:
    """Trapezoid integral of power samples (W per domain) over time; thread-safe.

    ``sample()`` takes one reading (the poller calls it every ``interval_s``); ``energy()`` takes
    a fresh sample first, so a window's boundaries are exact for the last interval.
    """

    def __init__(self, read_power: Callable[[], dict[str, float]], interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.read_power, self.clock = read_power, clock
        self._lock = threading.Lock()
        self._last_t: float | None = None
        self._last_p: dict[str, float] = {}
        self._energy: dict[str, float] = {}
        self.samples = 0
        self.poller = Poller(self.sample, interval_s, "rep-tune-power")

    def sample(self) -> dict[str, float]:
        p = self.read_power()
        t = self.clock()
        with self._lock:
            if self._last_t is not None:
                dt = max(0.0, t - self._last_t)
                for k, w in p.items():
                    self._energy[k] = self._energy.get(k, 0.0) + 0.5 * (w + self._last_p.get(k, w)) * dt
            else:
                self._energy = {k: 0.0 for k in p}
            self._last_t, self._last_p = t, p
            self.samples += 1
        return p

    def energy(self) -> dict[str, float]:
        if self.poller.error is not None:
            raise RuntimeError(f"power polling failed: {self.poller.error}") from self.poller.error
        self.sample()
        with self._lock:
            return dict(self._energy)

    def last_power(self) -> dict[str, float]:
        with self._lock:
            return dict(self._last_p)

    def start(self) -> None:
        if self._last_t is None:
            self.sample()
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()


class EstimatedMeter(EnergyMeter):
    """No counter: energy = a constant power figure x elapsed time, always labelled ``estimated``."""

    kind = "none"
    source = "estimated"

    def __init__(self, power_w: float | None, why: str = "", domain: str = "device",
                 clock: Callable[[], float] = time.monotonic):
        self.watts, self.why, self.domain, self.clock = power_w, why, domain, clock
        self._t0 = clock()

    @property
    def domains(self) -> tuple[str, ...]:
        return (self.domain,) if self.watts else ()

    def read(self) -> dict[str, float]:
        if not self.watts:
            return {}
        return {self.domain: self.watts * (self.clock() - self._t0)}

    def power_w(self) -> dict[str, float] | None:
        return {self.domain: self.watts} if self.watts else None

    def describe(self) -> str:
        if not self.watts:
            return "none (no counter readable and no power figure: energy unavailable)"
        return f"none: estimated from {self.watts:g} W x time{' (' + self.why + ')' if self.why else ''}"
