"""Jetson INA3221 power rails from sysfs, integrated over time (source: integrated).

Two driver layouts:
- JetPack 5+ (hwmon): ``/sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon*/in{N}_label``,
  ``in{N}_input`` (bus voltage, mV), ``curr{N}_input`` (current, mA).
- L4T 32.x (iio): ``/sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device*/in_power{N}_input`` (mW)
  with ``rail_name_{N}``.
Which rails make the module's total depends on the board (``total_rule``).
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rep_tune.profiler.meter import EnergyMeter, PowerIntegrator

AGX_ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
AGX_XAVIER_RAILS = ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V")


class JetsonRailError(RuntimeError):
    """The rails the module's total needs are not all present."""


@dataclass
class Rail:
    name: str                  # label, e.g. VDD_IN
    monitor: str               # i2c device, e.g. 1-0040
    read_mw: Callable[[], float]


def _num(path: Path) -> float:
    return float(path.read_text().strip())


def find_rails(root: str | Path = "/") -> list[Rail]:
    """All labelled INA3221 rails under ``root`` (both driver layouts); unconnected (NC) rails skipped."""
    root = Path(root)
    rails: list[Rail] = []
    for hw in sorted(root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*")):
        monitor = hw.parent.parent.name
        for label in sorted(hw.glob("in*_label")):
            n = re.fullmatch(r"in(\d+)_label", label.name)
            v, c = hw / f"in{n[1]}_input", hw / f"curr{n[1]}_input"
            name = label.read_text().strip()
            if not (v.exists() and c.exists()) or name.upper() == "NC" or name.lower().startswith("sum of"):
                continue
            rails.append(Rail(name, monitor, lambda v=v, c=c: _num(v) * _num(c) / 1000.0))
    for dev in sorted(root.glob("sys/bus/i2c/drivers/ina3221x/*/iio:device*")):
        monitor = dev.parent.name
        for label in sorted(dev.glob("rail_name_*")):
            n = label.name.rsplit("_", 1)[1]
            p = dev / f"in_power{n}_input"
            name = label.read_text().strip()
            if not p.exists() or name.upper() == "NC":
                continue
            rails.append(Rail(name, monitor, lambda p=p: _num(p)))
    return rails


def total_rule(rails: list[str], model: str = "") -> tuple[list[str], str]:
    """Which rails sum to the module's input power, and why. Raises JetsonRailError when one is missing.

    Orin Nano/NX, Xavier NX: VDD_IN. Jetson Nano: POM_5V_IN alone (the other rails are inside it).
    AGX Orin: VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 (VDDQ_VDD2_1V8AO is inside VIN_SYS_5V0).
    AGX Xavier: all rails.
    """
    have, m = set(rails), model.lower()

    def need(names: tuple[str, ...], board: str) -> list[str]:
        missing = [r for r in names if r not in have]
        if missing:
            raise JetsonRailError(f"{board}: rail(s) {', '.join(missing)} not found among INA3221 rails "
                                  f"{sorted(have)}; cannot compute total module power")
        return list(names)

    if not have:
        raise JetsonRailError("no INA3221 rails found in sysfs (ina3221 hwmon or ina3221x iio driver)")
    agx_orin = ("AGX Orin: VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 "
                "(VDDQ_VDD2_1V8AO is already inside VIN_SYS_5V0)")
    nano = "Jetson Nano: POM_5V_IN (module input; the other rails are inside it)"
    # the board name decides when known; otherwise the rail names do
    if "agx orin" in m:
        return need(AGX_ORIN_RAILS, "AGX Orin"), agx_orin
    if "jetson nano" in m:
        return need(("POM_5V_IN",), "Jetson Nano"), nano
    if any(k in m for k in ("orin nano", "orin nx", "xavier nx")):
        return need(("VDD_IN",), model), "VDD_IN (module input)"
    if "agx xavier" in m:
        return sorted(have), "AGX Xavier: sum of all rails"
    if "VDD_IN" in have:
        return ["VDD_IN"], "VDD_IN (module input)"
    if "POM_5V_IN" in have:
        return ["POM_5V_IN"], nano
    if have & set(AGX_ORIN_RAILS):
        return need(AGX_ORIN_RAILS, "AGX Orin"), agx_orin
    if have & set(AGX_XAVIER_RAILS):
        return sorted(have), "AGX Xavier: sum of all rails"
    return sorted(have), f"unknown module {model!r}: sum of all rails (may double-count nested rails)"


def is_jetson(root: str | Path = "/", machine: str | None = None) -> bool:
    """aarch64 and (``/etc/nv_tegra_release`` or ``/usr/lib/aarch64-linux-gnu/tegra``)."""
    root = Path(root)
    return (machine or platform.machine()) == "aarch64" and (
        (root / "etc/nv_tegra_release").exists() or (root / "usr/lib/aarch64-linux-gnu/tegra").is_dir())


def jetson_model(root: str | Path = "/") -> str:
    """Board name from the device tree (e.g. 'NVIDIA Jetson AGX Orin Developer Kit'), '' if unknown."""
    p = Path(root) / "proc/device-tree/model"
    try:
        return p.read_bytes().decode(errors="replace").strip("\x00 \n")
    except OSError:
        return ""


def power_mode(run: Callable[[list[str]], str] | None = None) -> str | None:
    """Current nvpmodel mode name (``nvpmodel -q``), or None where nvpmodel is absent."""
    if run is None:
        if shutil.which("nvpmodel") is None:
            return None
        run = lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout  # noqa: E731
    try:
        out = run(["nvpmodel", "-q"])
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"NV Power Mode:\s*(\S+)", out or "")
    return m[1] if m else None


class JetsonMeter(EnergyMeter):
    """INA3221 rails polled every ``poll_s`` (default 0.1 s) and integrated; domains = rails + ``total``."""

    kind = "jetson-ina3221"
    source = "integrated"

    def __init__(self, root: str | Path = "/", model: str | None = None, poll_s: float = 0.1):
        self.model = jetson_model(root) if model is None else model
        found = find_rails(root)
        self.rails = {r.name: r for r in found}
        self.total_rails, self.rule = total_rule(list(self.rails), self.model)
        self.update_period_s = 2 * poll_s
        self.integrator = PowerIntegrator(self._power, poll_s)

    @property
    def domains(self) -> tuple[str, ...]:
        return (*self.rails, "total")

    def _power(self) -> dict[str, float]:
        p = {name: r.read_mw() / 1000.0 for name, r in self.rails.items()}
        p["total"] = sum(p[n] for n in self.total_rails)
        return p

    def read(self) -> dict[str, float]:
        return self.integrator.energy()

    def total(self, energy: dict[str, float]) -> float | None:
        return energy.get("total")

    def power_w(self) -> dict[str, float] | None:
        return self._power()

    def start(self) -> None:
        self.integrator.start()

    def stop(self) -> None:
        self.integrator.stop()

    def describe(self) -> str:
        return f"jetson-ina3221 ({self.source}, every {self.integrator.poller.interval_s:g} s): total = {self.rule}"
