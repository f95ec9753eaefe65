"""Timing and peak memory: the one place rep-tune measures them.

Used by the learner, ``measure_iterations`` (benchmarks, ``rep-tune verify``), the profiler's
probes (``rep-tune profile``) and the profiler's measurement windows. One synchronisation helper
(``sync``), one timer (``IterationTimer``, with ``time_ms`` for a repeated callable), one
definition of peak training memory (``PeakMemory``), unit MiB (2**20 bytes) everywhere.

Peak training memory is "peak live tensor bytes" on every device:

    resident  = bytes of the model's parameters and buffers (frozen backbone and surrogate
                included) + the optimiser's state tensors, counted once per storage
                (+ the input batch when a benchmark builds it before the window)
    transient = the highest number of bytes allocated by torch *during* the measured
                iterations and not yet freed at that moment: activations kept for backward,
                temporaries, gradients, the input batch, the query
    peak      = resident + transient

CUDA: transient = torch.cuda.max_memory_allocated() - memory_allocated() at window start
(after reset_peak_memory_stats). cuBLAS's workspaces are freed at the window's start
(``_release_cublas_workspaces``), so the first matmul in the window takes them again and they count
in the transient: peak = what ``torch.cuda.max_memory_allocated`` shows for a training iteration
of this model, cuBLAS included (65 MiB on an H200), which the cost model adds as its allocator
overhead (``rep_tune.cost.memory.ALLOCATOR_OVERHEAD_MB``). CPU: transient from torch.profiler memory events of the
calling thread (every alloc/free of torch's CPU allocator while profiling; cumulative sum,
maximum). Not counted anywhere: Python objects, allocator caching/fragmentation, library code
and its private scratch (oneDNN/BLAS workspaces), the dataset held in host RAM, tensors of
other models living in the same process. The cost model predicts this same quantity.

Concurrency: the torch profiler is one per process, so CPU memory windows of several threads
are serialised by a lock (each records its own thread's allocations only); the window is
never timed, so a worker waiting for it loses no accuracy. On CUDA the allocator peak is per
device: workers sharing a GPU see each other's live tensors in it. The profiler's own log
lines (kineto's ``profiler_start``/``profiler_stop``) are silenced through its log level
(``KINETO_LOG_LEVEL``, set here before the first profiler use unless the user set it), not by
redirecting stderr: measurement windows never touch file descriptors, so every thread's stderr
stays intact. The one exception is c10's once-per-process allocator note, spent once on a
throw-away window from the main thread while no worker runs (``_prime_cpu_profiler``). That
window also initialises kineto in the main thread: kineto registers its client in the thread
that loaded torch (the main one) and, when its first profiler session starts in another thread,
prints ``ERROR: External init callback must run in same thread as registerClient`` (a bare
fprintf, no log level silences it). So whoever starts worker threads that open CPU windows (the
search's ``loop.ThreadExecutor``) calls ``prepare_profiler()`` from the main thread first.

Timing: time.perf_counter around each iteration, with torch.cuda.synchronize at both ends on
CUDA; warm-up iterations are excluded; memory windows are not timed.

Process RSS (``RssPeak``) is a different quantity (whole process, allocator caches and
libraries included); only the profiler's generic measurement windows report it, labelled so.
"""
from __future__ import annotations

import os

# kineto reads its log level once, at the first profiler use in the process: 6 silences its
# start/stop lines (USDT) and its CPU-only "gpuGetDeviceCount failed" notes. Set before any
# profiler runs; a level the user set wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import contextlib  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Iterable, Iterator, Protocol  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from rep_tune.figures import Cost, Figure  # noqa: E402

MIB = 2 ** 20                     # the memory unit of every figure rep-tune reports ("MiB")

MEMORY_DETAIL = {
    "cpu": "peak live tensor bytes: params+buffers+optimizer state + peak in-window CPU allocator bytes (torch.profiler)",
    "cuda": "peak live tensor bytes: params+buffers+optimizer state + CUDA max_memory_allocated above window start",
}


def as_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a torch.device (None: the CPU)."""
    return torch.device(device) if device is not None else torch.device("cpu")


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued work on ``device`` (CUDA); no-op on the CPU.

    ``None``: the current CUDA device when CUDA is already initialised in this process.
    """
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return
    dev = as_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def to_mib(nbytes: float) -> float:
    return nbytes / MIB


# ---- timing -------------------------------------------------------------------------------------
class IterationTimer:
    """Wall time of each iteration (perf_counter; CUDA synchronised at both ends)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = as_device(device)
        self.times: list[float] = []
        self._t0 = 0.0

    def start(self) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        sync(self.device)
        dt = time.perf_counter() - self._t0
        self.times.append(dt)
        return dt

    def summary_ms(self, skip: int = 0, statistic: str = "median") -> float | None:
        """Median (or mean) over the recorded iterations after the first ``skip``."""
        xs = self.times[skip:] or self.times
        if not xs:
            return None
        return 1000.0 * (statistics.median(xs) if statistic == "median" else statistics.fmean(xs))


def time_ms(fn: Callable[[], object], device: torch.device | str | None, *, warmup: int = 1, reps: int = 3,
            min_s: float = 0.0, max_s: float = 2.0) -> float:
    """Median wall time of ``fn`` in ms (synchronised): ``reps`` runs (more until ``min_s`` seconds,
    fewer, at least one, once ``max_s`` seconds have passed)."""
    for _ in range(warmup):
        fn()
    timer = IterationTimer(device)
    start = time.perf_counter()
    while len(timer.times) < reps or (time.perf_counter() - start < min_s and len(timer.times) < 100):
        if timer.times and time.perf_counter() - start > max_s:
            break
        timer.start()
        fn()
        timer.stop()
    return timer.summary_ms()


# ---- peak training memory -----------------------------------------------------------------------
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


_CPU_PROFILER = threading.Lock()      # one torch.profiler session at a time in this process
_in_window = threading.local()
_primed = False


def _alone_in_main_thread() -> bool:
    """True in the main thread while no other non-daemon thread (a worker) is alive."""
    main = threading.main_thread()
    return threading.current_thread() is main and not any(
        t is not main and t.is_alive() and not t.daemon for t in threading.enumerate())


def _prime_cpu_profiler() -> None:
    """Spend c10's once-per-process allocator note ("Memory block of unknown size was allocated
    before the profiling started"), a C++ log line no runtime switch silences, on a throw-away
    window whose fd 2 points at /dev/null; the same window initialises kineto in this (the main)
    thread (see the module docstring). Done once, and only from the main thread while no worker
    thread runs (no other thread can be writing to stderr then); until then skipped (a window
    opened by a worker may print the note and kineto's thread line once). Caller holds
    ``_CPU_PROFILER``.

    The window is the autograd profiler's (``torch.autograd.profiler.profile``, kineto underneath,
    a millisecond): ``torch.profiler.profile`` would first import torch._inductor (seconds),
    which a process that never measures memory does not need."""
    global _primed
    if _primed or not _alone_in_main_thread():
        return
    _primed = True
    from torch.autograd.profiler import profile
    block = torch.empty(16)
    try:
        import sys
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with profile(use_cpu=True, profile_memory=True, use_kineto=True):
            del block                              # freeing a pre-window block emits the note
    except Exception:                              # a torch without kineto: the windows say so themselves
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def prepare_profiler() -> bool:
    """Initialise torch's profiler from the main thread before worker threads open CPU memory
    windows (``_prime_cpu_profiler``; about a millisecond, once per process). Call it from the main
    thread while no worker runs; elsewhere it does nothing. True once primed (here or before)."""
    if _primed or getattr(_in_window, "open", False):
        return _primed
    with _CPU_PROFILER:
        _prime_cpu_profiler()
    return _primed


def _release_cublas_workspaces() -> None:
    """Free cuBLAS's cached workspaces, so the next matmul allocates (and a window counts) them.

    Private torch API (``torch._C._cuda_clearCublasWorkspaces``, there since torch 1.13): torch has
    no public way to size or free them. Absent in a future torch: the windows then miss them (and
    the cost model's CUDA overhead over-predicts by that much), nothing breaks.
    """
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


class PeakMemory:
    """Context manager: transient peak of live tensor bytes allocated inside the window.

    ``transient_bytes`` after exit (``start_bytes``: CUDA bytes allocated at the window's start);
    add the resident bytes for the full figure (see the module doc). Thread-safe: CPU windows
    of different threads run one after the other; stderr is never redirected.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = as_device(device)
        self.transient_bytes = 0
        self.start_bytes = 0
        self._prof = None
        self._locked = False

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            _release_cublas_workspaces()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            return self
        if getattr(_in_window, "open", False):
            raise RuntimeError("PeakMemory: CPU memory windows cannot nest (one torch.profiler per process)")
        from torch.profiler import ProfilerActivity, profile
        _CPU_PROFILER.acquire()
        self._locked = True
        _in_window.open = True
        try:
            _prime_cpu_profiler()
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        except BaseException:
            self._release()
            raise
        return self

    def _release(self) -> None:
        _in_window.open = False
        if self._locked:
            self._locked = False
            _CPU_PROFILER.release()

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.transient_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self.start_bytes)
            return
        try:
            self._prof.__exit__(*exc)
        finally:
            self._release()
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

    @property
    def peak_mib(self) -> float:
        """CUDA: allocator peak of the window (start + transient) in MiB; CPU: transient in MiB."""
        return to_mib(self.start_bytes + self.transient_bytes)


def _rss_bytes() -> int:
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:                        # psutil is optional (absent on some GPU images)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Peak resident set size of this process over a window, sampled every ``interval_s`` in a thread.

    Not peak training memory (see the module doc): a whole-process figure for the profiler's
    generic windows. ``ru_maxrss`` sharpens it: when the process's lifetime peak rose during the
    window, that exact peak happened inside it. ``stop()`` returns a Figure in MiB.
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._peak = _rss_bytes()
        self._ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._thread = threading.Thread(target=self._loop, name="rep-tune-rss", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, _rss_bytes())

    def stop(self) -> Figure:
        self._stop.set()
        self._thread.join(timeout=1.0)
        peak = max(self._peak, _rss_bytes())
        ru1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if ru1 > self._ru0:                       # Linux: KiB
            return Figure(to_mib(max(peak, ru1 * 1024)), "MiB", "measured", "process RSS peak (ru_maxrss)")
        return Figure(to_mib(peak), "MiB", "measured", f"process RSS peak, sampled every {self.interval_s * 1000:g} ms")


class CudaWindowPeak:
    """CUDA allocator peak over a generic window: bytes allocated at its start + transient peak (MiB)."""

    def __init__(self, device: torch.device | str | None = None, reset: bool = True):
        self.device = as_device(device if device is not None else "cuda")
        self.reset = reset
        self._pm = PeakMemory(self.device)
        if reset:
            self._pm.__enter__()

    def stop(self) -> Figure:
        detail = "CUDA allocator peak (max_memory_allocated)"
        if not self.reset:
            sync(self.device)
            detail += ", not reset: overlapping window, peak since the outer window began"
            return Figure(to_mib(torch.cuda.max_memory_allocated(self.device)), "MiB", "measured", detail)
        self._pm.__exit__(None, None, None)
        return Figure(self._pm.peak_mib, "MiB", "measured", detail)


# ---- figures ------------------------------------------------------------------------------------
def machine_name() -> str:
    return socket.gethostname()


def device_label(device: torch.device | str | None) -> str:
    dev = as_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def make_cost(latency_ms: float | None, peak_bytes: int | None, device: torch.device | str | None,
              detail: str = "", extras: dict[str, float] | None = None, energy_j: Figure | None = None) -> Cost:
    """A measured Cost with the device and what was counted in each figure's detail."""
    dev = as_device(device)
    where = device_label(dev)
    host = machine_name()
    lat = None if latency_ms is None else Figure(latency_ms, "ms", "measured",
                                                 f"per training iteration on {where}{', ' + detail if detail else ''}", host)
    mem = None if peak_bytes is None else Figure(to_mib(peak_bytes), "MiB", "measured",
                                                 f"{MEMORY_DETAIL['cuda' if dev.type == 'cuda' else 'cpu']} on {where}", host)
    return Cost(latency_ms=lat, peak_memory_mb=mem, energy_j=energy_j, scope="iteration", extras=dict(extras or {}))


class EnergyWindows(Protocol):
    """What ``measure_step`` needs from an energy meter (``rep_tune.profiler.energy.RunEnergy`` is one):
    windows around the timed iterations and the energy per iteration over them."""

    def begin(self) -> None: ...

    def end(self, iterations: int) -> None: ...

    def per_iteration(self) -> Figure | None: ...


class IterationPhases:
    """The phases of measured training iterations, one definition for ``measure_step`` (the
    profiler's probes, ``rep-tune cost`` calibration) and the learner (a real run):

    - ``warmup``: run, not counted;
    - ``timed``: inside the ``IterationTimer`` and inside the energy window (opened by the first
      timed iteration, closed by ``end_window`` or by a memory-probed iteration);
    - ``memory``: peak memory = ``resident()`` just before + the transient peak of the iteration
      (``PeakMemory``); outside the timer and the energy window (the CPU probe is slow).

    ``timer.times`` and ``peak_bytes`` carry the figures (a resumed run restores them).
    """

    def __init__(self, device: torch.device | str | None = None, energy: EnergyWindows | None = None) -> None:
        self.device = as_device(device)
        self.timer = IterationTimer(self.device)
        self.energy = energy
        self.peak_bytes = 0
        self._in_window: int | None = None         # timed iterations of the open energy window

    @contextlib.contextmanager
    def iteration(self, phase: str, resident: Callable[[], int] = lambda: 0) -> Iterator[None]:
        """Wrap one iteration's work in ``phase`` (warmup | timed | memory)."""
        if phase == "timed":
            if self.energy is not None and self._in_window is None:
                self.energy.begin()
                self._in_window = 0
            self.timer.start()
            yield
            self.timer.stop()
            if self._in_window is not None:
                self._in_window += 1
        elif phase == "memory":
            self.end_window()
            base = resident()
            with PeakMemory(self.device) as pm:
                yield
            self.peak_bytes = max(self.peak_bytes, base + pm.transient_bytes)
        elif phase == "warmup":
            yield
        else:
            raise ValueError(f"iteration phase: expected warmup, timed or memory, found {phase!r}")

    def end_window(self) -> None:
        """Close the open energy window (before evaluation, a memory probe, or the end)."""
        if self.energy is not None and self._in_window is not None:
            self.energy.end(self._in_window)
        self._in_window = None


def measure_step(step: Callable[[int], Any], *, n: int = 5, warmup: int = 2, memory_iters: int = 2,
                 device: torch.device | str | None = None, resident: Callable[[], int] = lambda: 0,
                 statistic: str = "median", detail: str = "", energy: EnergyWindows | None = None,
                 progress: Callable[[], None] | None = None) -> Cost:
    """Run ``step(i)`` for warm-up, ``n`` timed and ``memory_iters`` memory-probed iterations
    (``IterationPhases``).

    ``i`` runs 0, 1, ... over all calls. ``resident()`` is read just before each memory-probed one.
    ``progress()`` is called after every iteration (outside the timed span; microseconds).
    ``energy``: when given, one energy window spans the ``n`` timed iterations (the timer's
    synchronisations included), and the cost carries ``energy_j`` per iteration with its source.
    """
    phases = IterationPhases(device, energy if n > 0 else None)
    tick = progress or (lambda: None)
    plan = ["warmup"] * warmup + ["timed"] * n + ["memory"] * memory_iters
    for i, phase in enumerate(plan):
        if phase == "memory":
            phases.end_window()
        with phases.iteration(phase, resident):
            step(i)
        tick()
    phases.end_window()
    lat = phases.timer.summary_ms(0, statistic)
    extras = {"timed_iterations": n, "warmup_iterations": warmup}
    if phases.timer.times:
        extras.update(min_ms=1000 * min(phases.timer.times), max_ms=1000 * max(phases.timer.times))
    return make_cost(lat, phases.peak_bytes if memory_iters > 0 else None, device,
                     f"{statistic} of {n}" + (f", {detail}" if detail else ""), extras,
                     energy.per_iteration() if energy is not None and n > 0 else None)


def measure_iterations(model_or_config, *, batch_size: int | None = None, n: int = 5, warmup: int = 2,
                       memory_iters: int = 2, iteration: int = 0, iteration_stride: int = 1,
                       device: torch.device | str | None = None, num_classes: int = 10, classes_per_task: int | None = None,
                       cached_query: bool | None = None, statistic: str = "median", seed: int = 0,
                       energy: EnergyWindows | None = None, progress: Callable[[], None] | None = None) -> Cost:
    """Time and memory (and energy, given ``energy``) of REP training iterations on random inputs.

    ``model_or_config``: a RepModel or a RepConfig (a RepModel is built, its frozen backbone
    shared per process). Iteration k (timed or not) runs ALD at t = iteration + k * stride.
    ``cached_query``: True = the selection query comes from the per-sample cache (a hit: computed
    once before timing, as in every epoch after the first); False = computed in every iteration
    (the base method, or the first epoch of a cached surrogate). Default: ``selection.cache``.
    Runs at the config's ``training.precision`` (autocast, see ``rep_tune.runtime.step``).
    ``extras`` report the mean number of blocks run over the timed iterations.
    """
    from rep_tune.config import RepConfig
    from rep_tune.runtime.model import RepModel
    from rep_tune.runtime.step import class_mask, make_optimizer, make_precision, train_step

    dev = as_device(device)
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
    opt = make_optimizer(cfg, model.param_groups())
    precision = make_precision(cfg, dev)
    use_cache = cfg.selection.cache if cached_query is None else cached_query
    with precision.autocast():
        q_cached = model.query(x) if use_cache else None
    blocks: list[int] = []

    def step(i: int) -> None:
        if use_cache:
            q = q_cached
        else:
            with precision.autocast():
                q = model.query(x)
        _, out = train_step(model, opt, x, y, query=q, iteration=iteration + i * iteration_stride, task_id=0,
                            mask=mask, clip_grad=cfg.training.clip_grad, precision=precision)
        blocks.append(sum(out.ran))

    cost = measure_step(step, n=n, warmup=warmup, memory_iters=memory_iters, device=dev,
                        resident=lambda: resident_bytes([model], [opt]) + storage_bytes([x, y, q_cached]), statistic=statistic,
                        detail=f"batch {bs}, {precision.name}, t = {iteration}+{iteration_stride}k, "
                               f"query {'cached' if use_cache else 'computed'}", energy=energy, progress=progress)
    timed = blocks[warmup:warmup + n]
    cost.extras.update(blocks_run=sum(timed) / max(1, len(timed)), batch_size=bs)
    return cost
