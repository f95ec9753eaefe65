"""NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py).

Energy: the total-energy counter (mJ, Volta and newer) = measured; where it is NOT_SUPPORTED,
power (``nvmlDeviceGetPowerUsage``, mW) is polled at >= 10 Hz and integrated = integrated.
Every other query may be NOT_SUPPORTED too (Jetson Orin answers so for power, memory, clocks):
``gpu_info`` records those as None and lists them under ``unsupported``.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from rep_tune.profiler.meter import EnergyMeter, PowerIntegrator

ENERGY_COUNTER_PERIOD_S = 0.1     # typical update period of the NVML energy counter
POWER_AVERAGE_PERIOD_S = 1.0      # nvmlDeviceGetPowerUsage is a 1 s average on Ampere (not GA100) and newer


def _nvml():
    import pynvml        # imported here: the import boundary tests replace
    return pynvml


def _not_supported(nv, e: BaseException) -> bool:
    return getattr(e, "value", None) == getattr(nv, "NVML_ERROR_NOT_SUPPORTED", 3)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def init() -> Any:
    """nvmlInit (idempotent in NVML); returns the pynvml module. Raises when NVML is absent."""
    nv = _nvml()
    nv.nvmlInit()
    return nv


def visible_indices(nv: Any) -> list[int]:
    """NVML indices of the GPUs this process sees (CUDA_VISIBLE_DEVICES: indices or GPU- UUIDs)."""
    count = nv.nvmlDeviceGetCount()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None or env.strip() == "":
        return list(range(count)) if env is None else []
    out = []
    for tok in (t.strip() for t in env.split(",")):
        if tok.isdigit() and int(tok) < count:
            out.append(int(tok))
        elif tok.startswith("GPU-"):
            for i in range(count):
                if _text(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i))) == tok:
                    out.append(i)
        else:
            break          # CUDA stops at the first invalid entry
    return out


def gpu_info(index: int = 0, nv: Any = None) -> dict[str, Any]:
    """Identity and state of one GPU; unsupported queries are None and listed under ``unsupported``."""
    nv = nv or init()
    h = nv.nvmlDeviceGetHandleByIndex(index)
    info: dict[str, Any] = {"index": index}
    unsupported: list[str] = []

    def q(key: str, fn: Callable[[], Any]) -> None:
        try:
            info[key] = fn()
        except nv.NVMLError as e:
            info[key] = None
            unsupported.append(key if _not_supported(nv, e) else f"{key} ({_text(e)})")

    q("name", lambda: _text(nv.nvmlDeviceGetName(h)))
    q("driver", lambda: _text(nv.nvmlSystemGetDriverVersion()))

    def mem(attr: str) -> float:
        return getattr(nv.nvmlDeviceGetMemoryInfo(h), attr) / 2 ** 20
    q("memory_total_mb", lambda: mem("total"))
    q("memory_used_mb", lambda: mem("used"))
    q("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
    q("sm_clock_max_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM))
    q("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
    q("utilization_gpu_pct", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
    q("utilization_mem_pct", lambda: nv.nvmlDeviceGetUtilizationRates(h).memory)
    q("power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
    q("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
    info["unsupported"] = unsupported
    return info


class NvmlMeter(EnergyMeter):
    """GPU energy per visible GPU (domains ``gpu0``, ``gpu1``...): counter when supported, else polling."""

    kind = "nvml"

    def __init__(self, indices: list[int] | None = None, poll_s: float = 0.1, nv: Any = None):
        if poll_s > 0.1:
            raise ValueError(f"poll_s={poll_s}: power must be polled at >= 10 Hz (poll_s <= 0.1)")
        self.nv = nv or init()
        self.indices = list(indices) if indices is not None else visible_indices(self.nv)
        if not self.indices:
            raise RuntimeError("NVML sees no GPU for this process")
        self.handles = {f"gpu{i}": self.nv.nvmlDeviceGetHandleByIndex(i) for i in self.indices}
        self.counter = all(self._energy_supported(h) for h in self.handles.values())
        if self.counter:
            self.source, self.update_period_s = "measured", ENERGY_COUNTER_PERIOD_S
            self._base = self._counter_j()
        else:
            self.source, self.update_period_s = "integrated", max(2 * poll_s, POWER_AVERAGE_PERIOD_S)
            self._power_raw()      # fails here, not in the poller, when power is unsupported too
            self.integrator = PowerIntegrator(self._power_raw, poll_s)

    def _energy_supported(self, h: Any) -> bool:
        try:
            self.nv.nvmlDeviceGetTotalEnergyConsumption(h)
            return True
        except self.nv.NVMLError as e:
            if _not_supported(self.nv, e):
                return False
            raise

    def _counter_j(self) -> dict[str, float]:
        return {k: self.nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0 for k, h in self.handles.items()}

    def _power_raw(self) -> dict[str, float]:
        return {k: self.nv.nvmlDeviceGetPowerUsage(h) / 1000.0 for k, h in self.handles.items()}

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.handles)

    def read(self) -> dict[str, float]:
        if self.counter:
            now = self._counter_j()
            return {k: now[k] - self._base[k] for k in now}
        return self.integrator.energy()

    def power_w(self) -> dict[str, float] | None:
        try:
            return self._power_raw()
        except self.nv.NVMLError:
            return None

    def start(self) -> None:
        if not self.counter:
            self.integrator.start()

    def stop(self) -> None:
        if not self.counter:
            self.integrator.stop()

    def describe(self) -> str:
        how = "total-energy counter" if self.counter else "power polled and integrated"
        return f"nvml ({self.source}, {how}): {', '.join(self.domains)}"
