"""Probes of one torch device: identity, matmul throughput, copy bandwidth, usable memory, and the
ViT-block calibration runs the cost model fits its efficiency factors on."""
from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from typing import Callable, Iterable

import psutil
import torch

from rep_tune.device import CalibrationRun

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, reps: int = 3,
            min_s: float = 0.0, max_s: float = 2.0) -> float:
    """Median wall time of ``fn`` in ms (synchronized): ``reps`` runs (more until ``min_s`` seconds,
    fewer, at least one, once ``max_s`` seconds have passed)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_s and len(times) < 100):
        if times and time.perf_counter() - start > max_s:
            break
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


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


def matmul_tflops(device: torch.device, dtype: str, n: int, reps: int = 3, min_s: float = 0.2) -> float:
    """Achieved TFLOP/s of an n x n x n matmul (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    ms = time_ms(lambda: a @ b, device, warmup=1, reps=reps, min_s=min_s)
    return 2 * n ** 3 / (ms / 1000) / 1e12


def copy_bandwidth_gbs(device: torch.device, mb: int, reps: int = 3) -> float:
    """Achieved GB/s of a large tensor copy (read + write = 2 x bytes)."""
    n = mb * 2 ** 20 // 4
    src = torch.empty(n, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=1, reps=reps)
    return 2 * n * 4 / (ms / 1000) / 1e9


def memory_mb(device: torch.device) -> tuple[float, float]:
    """(total, usable now) in MB: CUDA mem_get_info, or system RAM and psutil's available."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total / 2 ** 20, free / 2 ** 20
    vm = psutil.virtual_memory()
    return vm.total / 2 ** 20, vm.available / 2 ** 20


def calibration_run(device: torch.device, batch: int, tokens: int, dim: int, heads: int, *,
                    blocks: int = 1, dtype: str = "fp32", reps: int = 3) -> CalibrationRun:
    """Time ``blocks`` frozen timm ViT blocks: forward (no grad) and forward + backward to the input.

    Block parameters have requires_grad False; the input requires grad, as in prompt training
    where only prompts/keys/head learn. Peak memory above the pre-run allocation on CUDA only
    (CPU allocator reuse makes an RSS delta meaningless at this scale).
    """
    from timm.models.vision_transformer import Block
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(blocks)])
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, tokens, dim, device=device, dtype=DTYPES[dtype])

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    def fwd_bwd() -> None:
        xi = x.detach().requires_grad_(True)
        model(xi).float().sum().backward()

    fwd_ms = time_ms(fwd, device, warmup=1, reps=reps)
    peak = None
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fwd_bwd()
        sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    fwd_bwd_ms = time_ms(fwd_bwd, device, warmup=1, reps=reps)
    return CalibrationRun(batch=batch, tokens=tokens, embed_dim=dim, num_heads=heads, blocks=blocks,
                          mlp_ratio=4.0, fwd_ms=round(fwd_ms, 4), fwd_bwd_ms=round(fwd_bwd_ms, 4),
                          peak_mb=None if peak is None else round(peak, 3), dtype=dtype)


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
    batches = [1, 16] if quick else [1, 8, 16]
    return [(b, t, d, h) for d, h in widths for t in tokens for b in batches]


def run_grid(device: torch.device, grid: Iterable[tuple[int, int, int, int]], dtype: str, *,
             reps: int, progress: Callable[[str], None] | None = None) -> list[CalibrationRun]:
    runs = []
    for b, t, d, h in grid:
        if progress:
            progress(f"block d={d} N={t} B={b}")
        runs.append(calibration_run(device, b, t, d, h, dtype=dtype, reps=reps))
    return runs


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
