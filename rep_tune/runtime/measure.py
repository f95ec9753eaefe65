"""Time per training iteration and peak training memory: the one way the runtime measures them.

Peak memory is "peak live tensor bytes" on every device:

    resident  = bytes of the model's parameters and buffers (frozen backbone and surrogate
                included) + the optimiser's state tensors, counted once per storage
                (+ the input batch when a benchmark builds it before the window)
    transient = the highest number of bytes allocated by torch *during* the measured
                iterations and not yet freed at that moment: activations kept for backward,
                temporaries, gradients, the input batch, the query
    peak      = resident + transient

CUDA: transient = torch.cuda.max_memory_allocated() - memory_allocated() at window start
(after reset_peak_memory_stats). CPU: transient from torch.profiler memory events (every
alloc/free of torch's CPU allocator while profiling; cumulative sum, maximum). Not counted
anywhere: Python objects, allocator caching/fragmentation, library code and its private
scratch (oneDNN/BLAS workspaces), the dataset held in host RAM, tensors of other models living
in the same process. The cost model predicts this
same quantity. Timing: time.perf_counter around each iteration, with torch.cuda.synchronize at
both ends on CUDA; warm-up iterations are excluded; memory windows are not timed.
"""
from __future__ import annotations

import contextlib
import os
import socket
import statistics
import sys
import time
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from rep_tune.figures import Cost, Figure

MEMORY_DETAIL = {
    "cpu": "peak live tensor bytes: params+buffers+optimizer state + peak in-window CPU allocator bytes (torch.profiler)",
    "cuda": "peak live tensor bytes: params+buffers+optimizer state + CUDA max_memory_allocated above window start",
}


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared tensors count once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None or not isinstance(t, Tensor):
            continue
        s = t.untyped_storage()
        if s.nbytes() == 0:
            continue
        seen[(str(t.device), s.data_ptr())] = s.nbytes()
    return sum(seen.values())


def resident_bytes(modules: Iterable[nn.Module] = (), optimizers: Iterable[torch.optim.Optimizer] = ()) -> int:
    """Parameters and buffers of ``modules`` plus optimiser state tensors, each storage once."""
    tensors: list[Tensor] = []
    for m in modules:
        tensors += list(m.parameters()) + [b for b in m.buffers() if b is not None]
    for opt in optimizers:
        for state in opt.state.values():
            tensors += [v for v in state.values() if isinstance(v, Tensor)]
    return storage_bytes(tensors)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop lines (written straight to fd 2)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class PeakMemory:
    """Context manager: transient peak of live tensor bytes allocated inside the window.

    ``transient_bytes`` after exit; add the resident bytes for the full figure (see module doc).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = _device(device)
        self.transient_bytes = 0
        self._prof = None
        self._start = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._quiet = _quiet_stderr()   # profiler start/stop lines and allocator notes
            self._quiet.__enter__()
            self._prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            self.transient_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._start)
            return
        try:
            self._prof.__exit__(*exc)
        finally:
            self._quiet.__exit__(None, None, None)
        if exc[0] is not None:
            return
        events = [e for e in self._prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
        self.transient_bytes = peak


class IterationTimer:
    """Wall time of each iteration (perf_counter; CUDA synchronised at both ends)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = _device(device)
        self.times: list[float] = []
        self._t0 = 0.0

    def start(self) -> None:
        _sync(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        _sync(self.device)
        dt = time.perf_counter() - self._t0
        self.times.append(dt)
        return dt

    def summary_ms(self, skip: int = 0, statistic: str = "median") -> float | None:
        """Median (or mean) over the recorded iterations after the first ``skip``."""
        xs = self.times[skip:] or self.times
        if not xs:
            return None
        return 1000.0 * (statistics.median(xs) if statistic == "median" else statistics.fmean(xs))


def machine_name() -> str:
    return socket.gethostname()


def make_cost(latency_ms: float | None, peak_bytes: int | None, device: torch.device | str | None,
              detail: str = "", extras: dict[str, float] | None = None) -> Cost:
    """A measured Cost with the device and what was counted in each figure's detail."""
    dev = _device(device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    host = machine_name()
    lat = None if latency_ms is None else Figure(latency_ms, "ms", "measured",
                                                 f"per training iteration on {where}{', ' + detail if detail else ''}", host)
    mem = None if peak_bytes is None else Figure(peak_bytes / 2 ** 20, "MiB", "measured",
                                                 f"{MEMORY_DETAIL['cuda' if dev.type == 'cuda' else 'cpu']} on {where}", host)
    return Cost(latency_ms=lat, peak_memory_mb=mem, scope="iteration", extras=dict(extras or {}))


def measure_step(step: Callable[[int], Any], *, n: int = 5, warmup: int = 2, memory_iters: int = 2,
                 device: torch.device | str | None = None, resident: Callable[[], int] = lambda: 0,
                 statistic: str = "median", detail: str = "") -> Cost:
    """Run ``step(i)`` for warm-up, ``n`` timed and ``memory_iters`` memory-probed iterations.

    ``i`` runs 0, 1, ... over all calls. ``resident()`` is read just before the memory window.
    """
    timer = IterationTimer(device)
    i = 0
    for _ in range(warmup):
        step(i)
        i += 1
    for _ in range(n):
        timer.start()
        step(i)
        timer.stop()
        i += 1
    peak = None
    if memory_iters > 0:
        base = resident()
        transient = 0
        for _ in range(memory_iters):
            with PeakMemory(device) as pm:
                step(i)
            i += 1
            transient = max(transient, pm.transient_bytes)
        peak = base + transient
    lat = timer.summary_ms(0, statistic)
    extras = {"timed_iterations": n, "warmup_iterations": warmup}
    if timer.times:
        extras.update(min_ms=1000 * min(timer.times), max_ms=1000 * max(timer.times))
    return make_cost(lat, peak, device, f"{statistic} of {n}" + (f", {detail}" if detail else ""), extras)


def measure_iterations(model_or_config, *, batch_size: int | None = None, n: int = 5, warmup: int = 2,
                       memory_iters: int = 2, iteration: int = 0, iteration_stride: int = 1,
                       device: torch.device | str | None = None, num_classes: int = 10, classes_per_task: int | None = None,
                       cached_query: bool | None = None, statistic: str = "median", seed: int = 0) -> Cost:
    """Time and memory of REP training iterations on random inputs (no dataset needed).

    ``model_or_config``: a RepModel or a RepConfig (a RepModel is built, its frozen backbone
    shared per process). Iteration k (timed or not) runs ALD at t = iteration + k * stride.
    ``cached_query``: True = the selection query comes from the per-sample cache (a hit: computed
    once before timing, as in every epoch after the first); False = computed in every iteration
    (the base method, or an uncached surrogate). Default: the config's ``selection.cache``.
    ``extras`` report the mean number of blocks run and tokens per block over the timed iterations.
    """
    from rep_tune.config import RepConfig
    from rep_tune.runtime.model import RepModel
    from rep_tune.runtime.step import class_mask, make_optimizer, train_step

    dev = _device(device)
    model = RepModel(model_or_config, num_classes) if isinstance(model_or_config, RepConfig) else model_or_config
    cfg: RepConfig = model.config
    model.to(dev).train()
    bs = batch_size or cfg.training.batch_size
    size = cfg.backbone.img_size or cfg.backbone.arch.img_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bs, 3, size, size, generator=g).to(dev)
    k = classes_per_task or num_classes
    y = torch.randint(0, k, (bs,), generator=g).to(dev)
    mask = class_mask(num_classes, range(k), dev) if cfg.training.train_mask else None
    opt = make_optimizer(cfg, model.trainable_parameters())
    use_cache = cfg.selection.cache if cached_query is None else cached_query
    q_cached = model.query(x) if use_cache else None
    blocks: list[int] = []

    def step(i: int) -> None:
        q = q_cached if use_cache else model.query(x)
        _, out = train_step(model, opt, x, y, query=q, iteration=iteration + i * iteration_stride, task_id=0,
                            mask=mask, clip_grad=cfg.training.clip_grad)
        blocks.append(sum(out.ran))

    cost = measure_step(step, n=n, warmup=warmup, memory_iters=memory_iters, device=dev,
                        resident=lambda: resident_bytes([model], [opt]) + storage_bytes([x, y, q_cached]), statistic=statistic,
                        detail=f"batch {bs}, t = {iteration}+{iteration_stride}k, query {'cached' if use_cache else 'computed'}")
    timed = blocks[warmup:warmup + n]
    cost.extras.update(blocks_run=sum(timed) / max(1, len(timed)), batch_size=bs)
    return cost
