"""Profiler: energy telemetry backends, measurement windows, and device probing.

    from rep_tune.profiler import Monitor
    monitor = Monitor.for_this_machine()
    with monitor.window("train") as w:
        ...
    w.result.total_energy      # Figure with source measured | integrated | estimated

``profile_device(quick, device)`` (rep_tune.profiler.device_profile) measures this machine and
returns a DeviceProfile. Importing this package does not import torch.
"""
from __future__ import annotations

from rep_tune.profiler.meter import EnergyMeter, EstimatedMeter, PowerIntegrator
from rep_tune.profiler.monitor import Monitor, ShortWindowWarning, WindowResult

__all__ = ["EnergyMeter", "EstimatedMeter", "PowerIntegrator", "Monitor", "ShortWindowWarning",
           "WindowResult", "profile_device"]


def profile_device(quick: bool = False, device: str | None = None, **kwargs):
    """Measure this machine and return a DeviceProfile (see ``device_profile.profile_device``)."""
    from rep_tune.profiler.device_profile import profile_device as _profile
    return _profile(quick=quick, device=device, **kwargs)
