"""Peak memory of a measurement window: CUDA allocator peak, or sampled process RSS on CPU."""
from __future__ import annotations

import resource
import sys
import threading

import psutil

from rep_tune.figures import Figure


def cuda_in_use() -> bool:
    """True when torch is already imported and CUDA is available (never imports torch itself)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def cuda_sync() -> None:
    if cuda_in_use():
        sys.modules["torch"].cuda.synchronize()


class RssPeak:
    """Samples this process's RSS every ``interval_s`` in a thread; ``peak_mb()`` is the max seen.

    ``ru_maxrss`` sharpens it: when the process's lifetime peak rose during the window, that
    exact peak happened inside the window.
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._peak = self._proc.memory_info().rss
        self._ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._thread = threading.Thread(target=self._loop, name="rep-tune-rss", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def stop(self) -> Figure:
        self._stop.set()
        self._thread.join(timeout=1.0)
        peak = max(self._peak, self._proc.memory_info().rss)
        ru1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if ru1 > self._ru0:                       # Linux: KiB
            return Figure(max(peak, ru1 * 1024) / 2 ** 20, "MB", "measured", "process RSS peak (ru_maxrss)")
        return Figure(peak / 2 ** 20, "MB", "measured",
                      f"process RSS peak, sampled every {self.interval_s * 1000:g} ms")


class CudaPeak:
    """CUDA allocator peak over a window (``max_memory_allocated`` after a reset at its start)."""

    def __init__(self, reset: bool = True):
        self.torch = sys.modules["torch"]
        if reset:
            self.torch.cuda.reset_peak_memory_stats()
        self.reset = reset

    def stop(self) -> Figure:
        peak = self.torch.cuda.max_memory_allocated() / 2 ** 20
        detail = "CUDA allocator peak (max_memory_allocated)"
        if not self.reset:
            detail += ", not reset: overlapping window, peak since the outer window began"
        return Figure(peak, "MB", "measured", detail)
