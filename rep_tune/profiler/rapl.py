"""Intel/AMD RAPL energy counters from ``/sys/class/powercap`` (source: measured).

``energy_uj`` wraps at ``max_energy_range_uj``; a background poll (default every 1 s, far below
the time a package needs to wrap) counts the wraps so that long windows stay correct.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from rep_tune.profiler.meter import EnergyMeter, Poller

POWERCAP = Path("/sys/class/powercap")

PERMISSION_HELP = (
    "RAPL energy counters are readable by root only on this kernel (since CVE-2020-8694, "
    "'Platypus', energy_uj is mode 0400). Fix: run rep-tune as root, or make the counters "
    "readable: `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*:*/energy_uj` (until reboot), or persistently with a udev rule, "
    "e.g. /etc/udev/rules.d/99-rapl.rules: "
    "SUBSYSTEM==\"powercap\", ACTION==\"add\", RUN+=\"/bin/chmod o+r /sys%p/energy_uj\". "
    "Without it, energy is only estimated."
)


class RaplPermissionError(PermissionError):
    """energy_uj exists but cannot be read; the message says how to fix it."""


@dataclass
class RaplDomain:
    name: str          # e.g. "package-0", "package-0/dram"
    path: Path         # the intel-rapl:N[:M] directory
    max_range_uj: int
    top_level: bool


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError as e:
        raise RaplPermissionError(f"cannot read {path}: {e.strerror or e}. {PERMISSION_HELP}") from None


def find_domains(root: Path = POWERCAP) -> list[RaplDomain]:
    """RAPL zones under ``root`` (``intel-rapl:N`` and sub-zones ``intel-rapl:N:M``), named from ``name``."""
    zones = sorted(p for p in root.glob("intel-rapl:*") if (p / "energy_uj").exists())
    tops = {p.name: (p / "name").read_text().strip() for p in zones if p.name.count(":") == 1}
    out = []
    for p in zones:
        name = (p / "name").read_text().strip() if (p / "name").exists() else p.name
        top = p.name.count(":") == 1
        if not top:
            parent = p.name.rsplit(":", 1)[0]
            name = f"{tops.get(parent, parent)}/{name}"
        rng = p / "max_energy_range_uj"
        out.append(RaplDomain(name, p, int(rng.read_text().strip()) if rng.exists() else 2 ** 32, top))
    return out


class RaplMeter(EnergyMeter):
    """Cumulative RAPL energy per zone with wraparound correction."""

    kind = "rapl"
    source = "measured"
    update_period_s = 0.001          # RAPL updates about every 1 ms

    def __init__(self, root: str | Path = POWERCAP, poll_s: float = 1.0):
        self.zones = find_domains(Path(root))
        if not self.zones:
            raise FileNotFoundError(f"no RAPL zones (intel-rapl:*/energy_uj) under {root}")
        self._lock = threading.Lock()
        self._last = {z.name: _read_int(z.path / "energy_uj") for z in self.zones}   # raises RaplPermissionError
        self._base = dict(self._last)
        self._wraps = {z.name: 0 for z in self.zones}
        self.poller = Poller(self._update, poll_s, "rep-tune-rapl")

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(z.name for z in self.zones)

    def _update(self) -> dict[str, float]:
        with self._lock:
            out = {}
            for z in self.zones:
                raw = _read_int(z.path / "energy_uj")
                if raw < self._last[z.name]:
                    self._wraps[z.name] += 1
                self._last[z.name] = raw
                uj = raw - self._base[z.name] + self._wraps[z.name] * z.max_range_uj
                out[z.name] = uj / 1e6
            return out

    def read(self) -> dict[str, float]:
        if self.poller.error is not None:
            raise self.poller.error
        return self._update()

    def total(self, energy: dict[str, float]) -> float | None:
        """Packages plus DRAM zones (core/uncore are inside the package; psys would double-count)."""
        keep = [z.name for z in self.zones
                if (z.top_level and not z.name.startswith("psys")) or z.name.endswith("/dram")]
        vals = [energy[k] for k in keep if k in energy]
        return sum(vals) if vals else None

    def start(self) -> None:
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()

    def describe(self) -> str:
        return f"rapl ({self.source}): {', '.join(self.domains)}"
