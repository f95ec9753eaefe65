"""Probes of one torch device: identity, matmul throughput, copy bandwidth, usable memory, the
training dtype, and the ViT-block calibration runs the cost model fits its efficiency factors on.

Synchronisation and peak memory come from ``rep_tune.runtime.measure`` (the one
timing-and-memory module); the probes time their repeats with ``repeat_ms`` (measure's
``IterationTimer`` loop, keeping every repeat) through a ``Repeats`` recorder, so the profile can
judge whether its repeated probes agree (``AGREEMENT``): a busy machine shows up as repeats
that differ, and its calibration is refused or marked noisy (``rep-tune profile --allow-noisy``).
"""
from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import time
from typing import Callable, Iterable

import torch

from rep_tune.device import CalibrationRun, IterationRun, MergeRun
from rep_tune.runtime.measure import PeakMemory, sync, time_ms
from rep_tune.runtime.step import DTYPES

__all__ = ["DTYPES", "identity", "supported_dtypes", "matmul_tflops", "copy_bandwidth_gbs",
           "memory_mb", "calibration_run", "calibration_grid", "run_grid", "pick_cpu_threads",
           "autocast_block_ms", "FAST_DTYPE_MATMUL", "FAST_DTYPE_BLOCK", "choose_dtype",
           "AGREEMENT", "MIN_REPEATS", "JUDGED_MIN_MS", "CALIBRATION_RUNS", "repeat_ms", "time_repeats",
           "spread", "Repeats", "MERGE_RUNS", "merge_run", "merge_grid", "merge_runs"]


# ---- repeated probes and their agreement -----------------------------------------------------------
AGREEMENT = 0.05       # repeats of one probe must agree within 5 %: spread(times) <= AGREEMENT
MIN_REPEATS = 3        # repeats of every judged probe (the median needs a majority to be trusted)
JUDGED_MIN_MS = 1.0    # probes whose repeats total less (median) are too short to judge: timer and
                       # kernel-launch jitter, not load, dominates them (recorded, not judged)
CALIBRATION_RUNS = "ViT-block runs"   # the grid's fwd / fwd+bwd repeats, judged as one time-weighted probe
MERGE_RUNS = "AToM merge runs"        # the merge grid's repeats, judged the same way


def spread(times: Iterable[float]) -> float:
    """How far the median repeat lies above the fastest one, relative to the median:
    ``(median - min) / median``; 0.0 for fewer than two repeats.

    Why this figure: timing noise on a shared machine is one-sided (another process can only add
    time), so the fastest repeat is the least disturbed. The profile reports medians; a median
    within ``AGREEMENT`` of the fastest repeat means at least half the repeats agree with it, so a
    lone disturbed repeat (a page fault, one scheduler tick) is tolerated, as the median tolerates
    it, while load that slowed most of them is caught.
    """
    xs = sorted(times)
    if len(xs) < 2:
        return 0.0
    med = statistics.median(xs)
    return (med - xs[0]) / med if med > 0 else 0.0


def repeat_ms(fn: Callable[[], object], device: torch.device | str | None, *, warmup: int = 1, reps: int = 3,
              min_s: float = 0.0, max_s: float = 2.0, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Wall time (ms) of every timed repeat of ``fn``, synchronised at both ends as
    ``measure.IterationTimer`` does; the loop of ``measure.time_ms`` (its median is this list's):
    ``reps`` repeats, more until ``min_s`` seconds (at most 100), fewer once ``max_s`` seconds have
    passed, but never fewer than ``min(reps, MIN_REPEATS)`` (so every probe can be judged)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = clock()
    while len(times) < reps or (clock() - start < min_s and len(times) < 100):
        if len(times) >= min(reps, MIN_REPEATS) and clock() - start > max_s:
            break
        sync(device)
        t0 = clock()
        fn()
        sync(device)
        times.append(1000.0 * (clock() - t0))
    return times


def time_repeats(probe: str, fn: Callable[[], object], device: torch.device | str | None, **kw) -> list[float]:
    """The probes' timer: ``repeat_ms`` (``probe`` names what is timed). ``Repeats`` looks this
    function up at each call, so a test can replace it (a fake timer) for a whole profile."""
    return repeat_ms(fn, device, **kw)


class Repeats:
    """The repeat times (ms) of each probe of one profiling pass, and how well they agree.

    ``timer(probe, fn, device, warmup=, reps=, min_s=, max_s=) -> list of ms`` (default
    ``time_repeats``). Probes timed with a ``group`` (the calibration grid's runs, under
    ``CALIBRATION_RUNS``) are judged together, time-weighted: sum of (median - fastest) over sum
    of medians, so a tiny run's jitter counts for its share of the time only.
    """

    def __init__(self, timer: Callable[..., list[float]] | None = None) -> None:
        self.timer = timer
        self.times: dict[str, list[float]] = {}
        self.groups: dict[str, str] = {}

    def median_ms(self, probe: str, fn: Callable[[], object], device: torch.device | str | None, *,
                  group: str | None = None, **kw) -> float:
        """Time ``fn``'s repeats, record them under ``probe`` (in ``group``), return their median."""
        times = list((self.timer or time_repeats)(probe, fn, device, **kw))
        if not times:
            raise RuntimeError(f"probe {probe}: the timer returned no repeat")
        self.times[probe] = times
        self.groups[probe] = group or probe
        return statistics.median(times)

    def spreads(self) -> dict[str, tuple[float, float, int]]:
        """{group: (spread, total median ms, fewest repeats)}, in the order the probes ran."""
        acc: dict[str, list[float]] = {}
        for probe, times in self.times.items():
            med = statistics.median(times)
            a = acc.setdefault(self.groups[probe], [0.0, 0.0, float("inf")])
            a[0] += spread(times) * med
            a[1] += med
            a[2] = min(a[2], len(times))
        return {g: (excess / total if total > 0 else 0.0, total, int(n)) for g, (excess, total, n) in acc.items()}

    def judged(self) -> dict[str, float]:
        """{group: spread} of the groups long and repeated enough to judge (see ``JUDGED_MIN_MS``)."""
        return {g: s for g, (s, total, n) in self.spreads().items() if n >= MIN_REPEATS and total >= JUDGED_MIN_MS}

    def worst(self) -> tuple[str, float] | None:
        """(group, spread) of the judged group whose repeats agree least; None when nothing is judged."""
        judged = self.judged()
        return max(judged.items(), key=lambda kv: kv[1]) if judged else None


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") or line.startswith("Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def identity(device: torch.device) -> dict:
    """Host, CPU, and (on CUDA) GPU name, capability and driver."""
    ident = {"host": socket.gethostname(), "os": platform.platform(), "cpu": cpu_model(),
             "cpu_cores": os.cpu_count(), "torch": str(torch.__version__), "torch_threads": torch.get_num_threads(),
             "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        ident.update(gpu=p.name, compute_capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
                     cuda=str(torch.version.cuda))
    return ident


def supported_dtypes(device: torch.device) -> list[str]:
    """Dtypes a matmul runs in on this device (fp32 always; bf16/fp16 when the device accepts them)."""
    out = ["fp32"]
    if device.type == "cuda":
        major = torch.cuda.get_device_capability(device)[0]
        out += ["fp16"] + (["bf16"] if major >= 8 else [])
        return out
    for name in ("bf16", "fp16"):
        try:
            a = torch.ones(8, 8, dtype=DTYPES[name])
            (a @ a).sum().item()
            out.append(name)
        except RuntimeError:
            pass
    return out


def matmul_tflops(device: torch.device, dtype: str, n: int, reps: int = 3, min_s: float = 0.2, *,
                  repeats: Repeats | None = None) -> float:
    """Achieved TFLOP/s of an n x n x n matmul (2 n^3 FLOPs); repeats recorded as ``matmul <dtype>``."""
    a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    ms = (repeats or Repeats()).median_ms(f"matmul {dtype}", lambda: a @ b, device, warmup=1, reps=reps, min_s=min_s)
    return 2 * n ** 3 / (ms / 1000) / 1e12


def copy_bandwidth_gbs(device: torch.device, mb: int, reps: int = 3, *, repeats: Repeats | None = None) -> float:
    """Achieved GB/s of a large tensor copy (read + write = 2 x bytes); repeats recorded as ``copy``."""
    n = mb * 2 ** 20 // 4
    src = torch.empty(n, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    ms = (repeats or Repeats()).median_ms("copy", lambda: dst.copy_(src), device, warmup=1, reps=reps)
    return 2 * n * 4 / (ms / 1000) / 1e9


def memory_mb(device: torch.device) -> tuple[float, float]:
    """(total, usable now) in MiB: CUDA mem_get_info, or system RAM and its available part
    (psutil, else /proc/meminfo's MemTotal and MemAvailable)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total / 2 ** 20, free / 2 ** 20
    try:
        import psutil
        vm = psutil.virtual_memory()
        return vm.total / 2 ** 20, vm.available / 2 ** 20
    except ImportError:                   # psutil is optional (absent on some GPU images)
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        return info["MemTotal"] / 2 ** 20, info.get("MemAvailable", info["MemTotal"]) / 2 ** 20


def calibration_run(device: torch.device, batch: int, tokens: int, dim: int, heads: int, *,
                    blocks: int = 1, dtype: str = "fp32", reps: int = 3,
                    repeats: Repeats | None = None) -> CalibrationRun:
    """Time ``blocks`` frozen timm ViT blocks: forward (no grad) and forward + backward to the input.

    Block parameters have requires_grad False; the input requires grad, as in prompt training
    where only prompts/keys/head learn. At bf16/fp16 the fp32 blocks run under autocast, exactly
    as ``training.precision`` runs them (``CalibrationRun.autocast``), so the fit describes the
    training path. Peak memory (MiB) above the pre-run allocation on CUDA only
    (``measure.PeakMemory``'s transient bytes). Repeats recorded in ``repeats`` under the group
    ``CALIBRATION_RUNS``.
    """
    from timm.models.vision_transformer import Block
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(blocks)])
    model = model.to(device=device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, tokens, dim, device=device)
    autocast = dtype != "fp32"

    def ctx():
        return torch.autocast(device.type, dtype=DTYPES[dtype]) if autocast else contextlib.nullcontext()

    def fwd() -> None:
        with torch.no_grad(), ctx():
            model(x)

    def fwd_bwd() -> None:
        xi = x.detach().requires_grad_(True)
        with ctx():
            out = model(xi)
        out.float().sum().backward()

    rec = repeats or Repeats()
    name = f"block d={dim} N={tokens} B={batch}" + (f" x{blocks}" if blocks != 1 else "")
    fwd_ms = rec.median_ms(f"{name} fwd", fwd, device, group=CALIBRATION_RUNS, warmup=1, reps=reps)
    peak = None
    if device.type == "cuda":
        with PeakMemory(device) as pm:
            fwd_bwd()
        peak = pm.transient_bytes / 2 ** 20
    fwd_bwd_ms = rec.median_ms(f"{name} fwd+bwd", fwd_bwd, device, group=CALIBRATION_RUNS, warmup=1, reps=reps)
    return CalibrationRun(batch=batch, tokens=tokens, embed_dim=dim, num_heads=heads, blocks=blocks,
                          mlp_ratio=4.0, fwd_ms=round(fwd_ms, 4), fwd_bwd_ms=round(fwd_bwd_ms, 4),
                          peak_mb=None if peak is None else round(peak, 3), dtype=dtype, autocast=autocast)


def calibration_grid(kind: str, quick: bool) -> list[tuple[int, int, int, int]]:
    """(batch, tokens, width, heads) of the calibration runs for a device kind.

    Widths follow the backbones that run there: embedded micro/pico (96/64), ViT-Ti (192),
    ViT-S (384), ViT-B (768). Tokens 17/65 = the embedded ViTs at 32 px (+CLS, with merging),
    90 and 197 = ViT/16 at 224 px with heavy merging and without.
    """
    if kind == "cpu":
        widths = [(96, 3), (192, 3)] if quick else [(64, 2), (96, 3), (192, 3), (384, 6)]
    else:
        widths = [(192, 3), (768, 12)] if quick else [(96, 3), (192, 3), (384, 6), (768, 12)]
    tokens = [17, 65, 197] if quick else [17, 65, 90, 197]
    batches = [1, 16] if quick else [1, 8, 16, 32]        # the search's batch sizes 8-32 on the grid, not beyond it
    return [(b, t, d, h) for d, h in widths for t in tokens for b in batches]


def run_grid(device: torch.device, grid: Iterable[tuple[int, int, int, int]], dtype: str, *,
             reps: int, progress: Callable[[str], None] | None = None,
             repeats: Repeats | None = None) -> list[CalibrationRun]:
    runs = []
    for b, t, d, h in grid:
        if progress:
            progress(f"block d={d} N={t} B={b}")
        runs.append(calibration_run(device, b, t, d, h, dtype=dtype, reps=reps, repeats=repeats))
    return runs


def merge_run(device: torch.device, batch: int, tokens: int, dim: int, merges: int, *, dtype: str = "fp32",
              reps: int = 3, repeats: Repeats | None = None) -> MergeRun:
    """Time the runtime's AToM merge (``rep_tune.runtime.atom.merge_tokens``, no protected token) of
    ``merges`` pairs among ``batch`` x ``tokens`` tokens of width ``dim``: forward (no grad) and forward
    + backward to the input. The tokens are the fp32 residual stream and the matching metric (the
    keys averaged over heads) is in the compute dtype, as a block under ``training.precision`` has
    them. Repeats recorded under ``MERGE_RUNS``."""
    from rep_tune.runtime.atom import TokenState, merge_tokens
    torch.manual_seed(0)
    x = torch.randn(batch, tokens, dim, device=device)
    metric = torch.randn(batch, tokens, dim, device=device).to(DTYPES[dtype])

    def fwd() -> None:
        with torch.no_grad():
            merge_tokens(x, metric, merges, 0, TokenState())

    def fwd_bwd() -> None:
        xi = x.detach().requires_grad_(True)
        out, _ = merge_tokens(xi, metric, merges, 0, TokenState())
        out.sum().backward()

    rec = repeats or Repeats()
    name = f"merge d={dim} N={tokens} B={batch} r={merges}"
    fwd_ms = rec.median_ms(f"{name} fwd", fwd, device, group=MERGE_RUNS, warmup=1, reps=reps)
    fwd_bwd_ms = rec.median_ms(f"{name} fwd+bwd", fwd_bwd, device, group=MERGE_RUNS, warmup=1, reps=reps)
    return MergeRun(batch=batch, tokens=tokens, embed_dim=dim, merges=merges, fwd_ms=round(fwd_ms, 4),
                    fwd_bwd_ms=round(fwd_bwd_ms, 4), dtype=dtype)


def merge_grid(kind: str, quick: bool) -> list[tuple[int, int, int, int]]:
    """(batch, tokens, width, merges) of the merge runs: the block grid's widths and token counts
    (``calibration_grid``) at training batch sizes, merging an eighth of the tokens (a merge's cost
    is set by the tokens it matches, hardly by how many pairs it merges)."""
    blocks = calibration_grid(kind, quick)
    widths = sorted({d for _, _, d, _ in blocks})
    tokens = sorted({t for _, t, _, _ in blocks})
    batches = [16] if quick else [8, 16, 32]
    return [(b, t, d, max(1, t // 8)) for d in widths for t in tokens for b in batches]


def merge_runs(device: torch.device, dtype: str, *, quick: bool = False, reps: int = 3,
               repeats: Repeats | None = None) -> list[MergeRun]:
    """The merge grid (``merge_grid``) timed on ``device`` at ``dtype``."""
    kind = "cpu" if torch.device(device).type == "cpu" else "gpu"
    return [merge_run(device, b, t, d, r, dtype=dtype, reps=reps, repeats=repeats)
            for b, t, d, r in merge_grid(kind, quick)]


FIXED_COST_BATCHES = (8, 16, 32)


def iteration_runs(device: torch.device, dtype: str, *, backbone: str | None = None, method: str = "l2p",
                   batches: Iterable[int] = FIXED_COST_BATCHES, reps: int = 5) -> list[IterationRun]:
    """Time REP training iterations with every block dropped (``LayerDropper.fix``: none run), the
    selection query cached: the per-iteration fixed cost the cost model's ``overhead_ms`` prices
    (``rep_tune.cost.calibrate.fixed_cost``). The paper preset of ``method`` on ``backbone``
    (default: the embedded backbone), random weights, at each batch size; median of ``reps``."""
    from rep_tune.config import EMBEDDED_BACKBONE
    from rep_tune.cost.calibrate import iteration_config
    from rep_tune.runtime.measure import measure_iterations
    from rep_tune.runtime.model import RepModel
    out = []
    for b in batches:
        it = IterationRun(method=method, backbone=backbone or EMBEDDED_BACKBONE, batch=int(b), ms=1.0, dtype=dtype)
        model = RepModel(iteration_config(it), 10)
        model.dropper.fix([False] * model.depth)
        cost = measure_iterations(model, n=reps, warmup=2, memory_iters=0, device=device, cached_query=True)
        it.ms = round(float(cost.latency_ms.value), 4)
        out.append(it)
    return out


def pick_cpu_threads(requested: int | None = None) -> tuple[int, str]:
    """Threads to profile the CPU with, and why.

    On a busy machine (other processes on the cores) OpenMP barriers make several threads far
    slower than one; the profile would then describe the contention, not the CPU. When
    ``requested`` is None, a small block is timed with torch's thread count and with one thread,
    and the faster wins.
    """
    current = torch.get_num_threads()
    if requested is not None:
        return requested, "requested"
    if current == 1:
        return 1, "torch default"
    from timm.models.vision_transformer import Block
    block = Block(96, 3, qkv_bias=True).eval()
    x = torch.randn(4, 17, 96)

    def med(threads: int) -> float:
        torch.set_num_threads(threads)
        with torch.no_grad():
            return time_ms(lambda: block(x), torch.device("cpu"), warmup=1, reps=3, max_s=0.5)
    single, multi = med(1), med(current)
    torch.set_num_threads(current)
    if single < multi:
        return 1, (f"{current} threads slower than 1 ({multi:.2f} vs {single:.2f} ms on a small block): "
                   "cores busy with other work, profiled with 1 thread")
    return current, f"torch default ({multi:.2f} ms vs {single:.2f} ms with 1 thread)"


# ---- the training dtype ---------------------------------------------------------------------------
FAST_DTYPE_MATMUL = 1.5    # a half dtype must reach >= 1.5x fp32's matmul TFLOP/s ...
FAST_DTYPE_BLOCK = 1.2     # ... and run a ViT block's forward+backward >= 1.2x faster under autocast


def autocast_block_ms(device: torch.device, dtype: str, *, batch: int, tokens: int, dim: int, heads: int,
                      reps: int = 3, repeats: Repeats | None = None) -> float:
    """Forward + backward (to the input) of one frozen fp32 timm Block under autocast at ``dtype``
    (plain fp32 for "fp32"): how REP training runs at ``training.precision``. Repeats recorded as
    ``autocast block <dtype>``."""
    import contextlib

    from timm.models.vision_transformer import Block
    torch.manual_seed(0)
    block = Block(dim, heads, mlp_ratio=4.0, qkv_bias=True).to(device).eval().requires_grad_(False)
    x = torch.randn(batch, tokens, dim, device=device)
    ctx = contextlib.nullcontext if dtype == "fp32" else (lambda: torch.autocast(device.type, dtype=DTYPES[dtype]))

    def fwd_bwd() -> None:
        xi = x.detach().requires_grad_(True)
        with ctx():
            out = block(xi)
        out.float().sum().backward()
    return (repeats or Repeats()).median_ms(f"autocast block {dtype}", fwd_bwd, device, warmup=1, reps=reps)


def choose_dtype(achieved_tflops: dict[str, float], block_ms: dict[str, float]) -> tuple[str, str]:
    """(dtype, why): the dtype REP training should run in on this device.

    Rule: a half dtype (bf16, then fp16) is chosen when its matmul rate is at least
    ``FAST_DTYPE_MATMUL`` x fp32's and a ViT block's forward+backward under autocast at it is at
    least ``FAST_DTYPE_BLOCK`` x faster than in fp32; bf16 is preferred over fp16 (fp32's exponent
    range, no loss scaling) unless fp16 is faster by the same block margin. Otherwise fp32.
    """
    f32, b32 = achieved_tflops.get("fp32"), block_ms.get("fp32")
    fast = {}
    for name in ("bf16", "fp16"):
        mm, blk = achieved_tflops.get(name), block_ms.get(name)
        if f32 and b32 and mm and blk and mm >= FAST_DTYPE_MATMUL * f32 and b32 / blk >= FAST_DTYPE_BLOCK:
            fast[name] = b32 / blk
    summary = ", ".join(f"{k}: matmul {achieved_tflops[k] / f32:.2f}x, block {b32 / block_ms[k]:.2f}x"
                        for k in ("bf16", "fp16") if k in achieved_tflops and k in block_ms and f32 and b32)
    rule = (f"half dtype needs >= {FAST_DTYPE_MATMUL:g}x fp32 matmul and >= {FAST_DTYPE_BLOCK:g}x "
            f"faster autocast block; bf16 preferred")
    if not fast:
        return "fp32", f"fp32 ({summary or 'no half dtype measured'}; {rule})"
    choice = "bf16" if "bf16" in fast else "fp16"
    if "fp16" in fast and "bf16" in fast and fast["fp16"] >= FAST_DTYPE_BLOCK * fast["bf16"]:
        choice = "fp16"
    return choice, f"{choice} ({summary}; {rule})"
