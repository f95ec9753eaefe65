"""Shared fixtures; hardware-marked tests skip where the hardware is absent."""
from __future__ import annotations

import os

import pytest
import torch

# Ray on loopback only: every node, GCS, object store and driver of a test binds to 127.0.0.1, never
# to the machine's network address. Ray reads this switch once, at import (ray_constants.ENABLE_RAY_CLUSTER):
# off, ``ray.init(address="127.0.0.1:PORT")`` keeps the loopback address instead of rewriting it to the
# machine's, which a cluster started on loopback does not listen on.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

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


# the suite runs on pytest-xdist workers (`make test`: -n auto --maxprocesses 4 --dist loadgroup); each test file is one
# group, so a module's fixtures (a Ray cluster, a built wheel) are built once, on one worker; the files
# that start Ray share a group, so two Ray instances never start on this machine at once
RAY_FILES = {"test_ray_cluster.py", "test_ray_tune.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("ray" if name in RAY_FILES else name))
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
