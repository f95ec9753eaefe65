"""Shared fixtures; hardware-marked tests skip where the hardware is absent."""
from __future__ import annotations

import os

import pytest
import torch

# one thread: on a shared 2-core machine two threads spin-wait and run many times slower
torch.set_num_threads(1)


def _has_nvml_gpu() -> bool:
    try:
        import pynvml
        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return n > 0
    except Exception:
        return False


def _is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release") or os.path.isdir("/usr/lib/aarch64-linux-gnu/tegra")


def _has_rapl() -> bool:
    import glob
    return any(os.access(p, os.R_OK) for p in glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj"))


def pytest_collection_modifyitems(config, items):
    checks = {"gpu": (_has_nvml_gpu, "no NVIDIA GPU/NVML here"),
              "jetson": (_is_jetson, "not a Jetson"),
              "rapl": (_has_rapl, "no readable RAPL counters here")}
    cache: dict[str, bool] = {}
    for item in items:
        for mark, (probe, why) in checks.items():
            if mark in item.keywords:
                if mark not in cache:
                    cache[mark] = probe()
                if not cache[mark]:
                    item.add_marker(pytest.mark.skip(reason=why))
