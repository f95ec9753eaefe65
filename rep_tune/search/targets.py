"""Targets: the device profiles a search applies constraints for, and where their costs come from.

A target's cost is *measured* (the runtime's timer and allocator peak during training) when its
profile describes this machine: ``--device local``, or a profile written by ``rep-tune profile``
on this host (``identity.host`` equals this host name). Otherwise it is *predicted* by the
calibrated cost model (``rep_tune.cost.predict``; "estimated" when the profile is uncalibrated).
Pre-screening always uses the prediction, since it happens before training.

Costs are compared with budgets at the profile's ``budgets.batch_size``: predictions are made for
the config with that batch size; measured costs are taken at the config's own batch size.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from rep_tune.config import RepConfig
from rep_tune.device import DeviceProfile, shipped_profiles
from rep_tune.figures import Cost
from rep_tune.search.budgets import DeviceBudgets


@dataclass
class Target:
    """One device the search serves."""

    profile: DeviceProfile
    key: str                      # slug for constraint keys (``latency_ms@jetson_orin``) and file names
    local: bool                   # costs measured on this machine
    path: str | None = None
    budgets: DeviceBudgets | None = None

    @property
    def cost_source(self) -> str:
        return "measured" if self.local else "predicted"

    def predict(self, config: RepConfig, num_classes: int | None = None) -> Cost:
        """Predicted cost of one training iteration of ``config`` at this profile's budget batch size."""
        from rep_tune.cost import predict

        kwargs = {"num_classes": num_classes} if num_classes else {}
        return predict(config, self.profile, iters_per_task=config.training.iters_per_task,
                       batch=self.profile.budgets.batch_size, **kwargs)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "device"


def is_this_machine(profile: DeviceProfile) -> bool:
    host = (profile.identity or {}).get("host")
    return bool(host) and str(host) == socket.gethostname()


def local_profile(batch_size: int = 16) -> DeviceProfile:
    """A profile of this machine: ``rep_tune.profiler.profile_device(quick=True)`` when available."""
    try:
        from rep_tune.profiler import profile_device  # written by the profiler's developer
        prof = profile_device(quick=True)
    except (ImportError, AttributeError):
        prof = DeviceProfile(name="local", kind="cpu", description="this machine (not profiled)",
                             identity={"host": socket.gethostname()})
    prof.identity = {**(prof.identity or {}), "host": socket.gethostname()}
    prof.budgets.batch_size = batch_size
    return prof


def load_targets(devices: list[str], batch_size: int = 16) -> list[Target]:
    """Profiles from files, folders (every ``*.yaml`` in them), shipped names, or ``local``."""
    out: list[Target] = []
    for spec in devices or []:
        if spec == "local":
            prof = local_profile(batch_size)
            out.append(Target(prof, "local", True, None))
            continue
        p = Path(spec)
        paths = sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        if p.is_dir() and not paths:
            raise FileNotFoundError(f"{spec}: folder has no *.yaml device profiles")
        for path in paths:
            if not path.exists():
                names = ", ".join(s.stem for s in shipped_profiles())
                if not any(s.stem == spec for s in shipped_profiles()):
                    raise FileNotFoundError(f"{spec}: no such device profile (shipped: {names or 'none'}; or 'local')")
            prof = DeviceProfile.load(path if path.exists() else spec)
            out.append(Target(prof, slug(prof.name), is_this_machine(prof), str(path)))
    keys = [t.key for t in out]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError(f"--device: two profiles share the name {sorted(dup)[0]!r}; rename one (field 'name')")
    if not out:
        raise ValueError("--device: expected at least one device profile (file, folder, shipped name or 'local')")
    return out
