"""Pick the energy meters this machine offers: Jetson first (NVML answers NOT_SUPPORTED there),
then NVML GPUs (plus RAPL for the CPU when readable), then RAPL alone, else an estimate."""
from __future__ import annotations

import os
from pathlib import Path

from rep_tune.profiler.meter import EnergyMeter, EstimatedMeter
from rep_tune.profiler import rapl
from rep_tune.profiler.rapl import RaplMeter, RaplPermissionError

DEFAULT_CPU_W_PER_CORE = 7.5   # loaded x86 core incl. its share of uncore [W]: 65 W / 8 cores; rough


def estimated_cpu_power_w(cores: int | None = None) -> float:
    """A rough loaded power for this CPU when nothing can be measured (labelled estimated wherever used)."""
    return DEFAULT_CPU_W_PER_CORE * (cores or os.cpu_count() or 1)


def detect_meters(*, power_w: float | None = None, jetson_root: str | Path = "/",
                  powercap: str | Path | None = None) -> tuple[list[EnergyMeter], list[str]]:
    """(meters, notes). ``power_w`` is used only when no counter is readable (estimated energy).
    ``powercap``: the RAPL sysfs root (default ``rapl.POWERCAP``, read at call time)."""
    powercap = rapl.POWERCAP if powercap is None else powercap
    from rep_tune.profiler import jetson, nvml
    notes: list[str] = []
    if jetson.is_jetson(jetson_root):
        try:
            return [jetson.JetsonMeter(jetson_root)], notes
        except (jetson.JetsonRailError, OSError) as e:
            notes.append(f"Jetson detected but INA3221 unusable: {e}")
    meters: list[EnergyMeter] = []
    try:
        meters.append(nvml.NvmlMeter())
    except ImportError:
        notes.append("pynvml not installed: no NVML")
    except Exception as e:       # NVMLError_LibraryNotFound, DriverNotLoaded, no GPU, power unsupported
        notes.append(f"NVML unavailable: {e}")
    try:
        meters.append(RaplMeter(powercap))
    except RaplPermissionError as e:
        notes.append(str(e))
    except (FileNotFoundError, OSError, ValueError) as e:
        notes.append(f"RAPL unavailable: {e}")
    if meters:
        return meters, notes
    why = "no readable energy counter (no NVML GPU, no Jetson INA3221, no readable RAPL)"
    if power_w is None:
        notes.append(why + "; no power figure given: energy unavailable (pass power_w or a profile's spec.power_w)")
    else:
        notes.append(why + f"; energy estimated from {power_w:g} W x time")
    return [EstimatedMeter(power_w, why)], notes
