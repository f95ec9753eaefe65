"""Cost model against measurement on this machine (a benchmark, not a test).

1. Profile this CPU: time frozen timm Blocks (forward, forward+backward to the input) at several
   token counts, batch sizes and widths, record peak memory, fit the efficiency factors
   (rep_tune.cost.calibrate.fit).
2. Draw >= 30 REP configs from the search space (prompt lengths, merge schedules incl. ramps and
   random per-layer lists, ALD at a fixed t, L2P/DualPrompt, vit_micro_patch4_32 and
   vit_tiny_patch16 at 96/128 px), measure time per training iteration and peak memory with the
   runtime (rep_tune.runtime.model.RepModel), and compare with rep_tune.cost.predict.
3. Print the table, median / p90 relative errors, Spearman rank correlation, the time of 10,000
   predictions; write benchmarks/results/cost_model_<host>.csv.

Run: .venv/bin/python benchmarks/bench_cost_model.py [--configs 32] [--threads 2] [--quick]
"""
from __future__ import annotations

import argparse
import csv
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rep_tune.config import preset
from rep_tune.cost import predict
from rep_tune.cost.calibrate import fit
from rep_tune.device import Calibration, CalibrationRun, DeviceProfile, Spec
from rep_tune.schedule import ramp

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024.0 * 1024.0


def cpu_ms(fn, reps: int) -> float:
    """Minimum process CPU time of ``fn`` in ms (robust to other processes on a shared host)."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        ts.append((time.process_time() - t0) * 1e3)
    return min(ts)


# ---- 1. calibration runs: frozen timm blocks -----------------------------------------------------
def time_blocks(batch: int, tokens: int, dim: int, heads: int, blocks: int, reps: int = 3) -> CalibrationRun:
    """Time ``blocks`` frozen timm Blocks: forward (no grad) and forward+backward to the input.

    Same runs as rep_tune.profiler.probe.calibration_run, timed in process CPU time (one
    intra-op thread), with the runtime's CPU peak-memory window (rep_tune.runtime.measure).
    """
    from timm.models.vision_transformer import Block

    from rep_tune.runtime.measure import PeakMemory
    torch.manual_seed(0)
    stack = torch.nn.Sequential(*[Block(dim, heads, qkv_bias=True) for _ in range(blocks)]).eval()
    stack.requires_grad_(False)
    x = torch.randn(batch, tokens, dim)

    def fwd():
        with torch.no_grad():
            stack(x)

    def fwd_bwd():
        xi = x.detach().requires_grad_(True)
        stack(xi).sum().backward()

    f_ms, fb_ms = cpu_ms(fwd, reps), cpu_ms(fwd_bwd, reps)
    with PeakMemory("cpu") as pm:
        fwd_bwd()
    return CalibrationRun(batch=batch, tokens=tokens, embed_dim=dim, num_heads=heads, blocks=blocks,
                          fwd_ms=f_ms, fwd_bwd_ms=fb_ms, peak_mb=pm.transient_bytes / MB)


def cpu_peak_tflops(threads: int) -> float:
    """Spec-style FP32 peak: cores x clock x 32 FLOP/cycle (2 AVX2 FMA pipes x 8 lanes x 2)."""
    ghz = 2.45
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    ghz = float(line.split(":")[1]) / 1e3
                    break
    except OSError:
        pass
    return threads * ghz * 32 / 1e3


def profile_this_machine(threads: int, quick: bool) -> DeviceProfile:
    shapes = [(64, 2), (96, 3), (192, 3)]
    tokens = [20, 60, 110] if not quick else [20, 110]
    runs = []
    for dim, heads in shapes:
        for n in tokens:
            for b in (8, 16):
                for blocks in (1, 3):
                    runs.append(time_blocks(b, n, dim, heads, blocks))
    prof = DeviceProfile(name=f"{platform.node()}-cpu{threads}", kind="cpu", description="benchmark host",
                         dtype="fp32",
                         spec=Spec(peak_tflops={"fp32": cpu_peak_tflops(threads)}, memory_bandwidth_gbs=20.0,
                                   cpu=platform.processor() or platform.machine()),
                         calibration=Calibration(measured_on=f"{platform.node()} {time.strftime('%Y-%m-%d')}",
                                                 runs=runs))
    return fit(prof)


# ---- 2. configs ------------------------------------------------------------------------------------
def draw_configs(n: int, seed: int = 0) -> list[tuple[object, int]]:
    """(config, t) pairs spread over the search space."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tiny = i % 3 == 2
        bb = "vit_tiny_patch16_224" if tiny else "vit_micro_patch4_32"
        method = "dualprompt" if i % 4 == 1 else "l2p"
        cfg = preset("paper", method, bb)
        ch: dict = {"backbone.pretrained": False, "selection.pretrained": False,
                    "training.batch_size": rng.choice([8, 16])}
        if tiny:
            ch["backbone.img_size"] = rng.choice([96, 128])
        depth = 12
        if method == "l2p":
            ch["prompt.length"] = rng.choice([2, 5, 8])
            ch["prompt.top_k"] = rng.choice([1, 3, 5])
        else:
            ch["prompt.length"] = rng.choice([5, 10, 20])
            ch["prompt.g_length"] = rng.choice([3, 5])
        kind = rng.choice(["none", "ramp", "ramp", "uniform", "random"])
        if kind == "none":
            ch["atom.enabled"], ch["atom.merge"] = False, []
        elif kind == "ramp":
            ch["atom.merge"] = ramp(rng.choice([2, 4, 6, 8]), depth, rng.choice([1.0, 0.5]))
        elif kind == "uniform":
            ch["atom.merge"] = [rng.choice([2, 4, 6])] * depth
        else:
            ch["atom.merge"] = [rng.randint(0, 8) for _ in range(depth)]
        if rng.random() < 0.2 and method == "l2p":
            ch["atom.protect_prompts"] = False
        if rng.random() < 0.3:
            ch["ald.enabled"] = False
        else:
            ch.update({"ald.theta_min": rng.choice([0.3, 0.5, 0.75]), "ald.tau": rng.choice([4, 8, 16]),
                       "ald.alpha": rng.choice([0.8, 0.9, 1.0])})
        sel = rng.choice(["cached", "cached", "uncached", "baseline"])
        if sel == "baseline":
            ch["selection.surrogate"], ch["selection.cache"] = None, False
        else:
            ch["selection.surrogate"] = "vit_pico_patch4_32"
            ch["selection.cache"] = sel == "cached"
        t = rng.choice([0, 300, 1000, 3000])
        cfg = cfg.replace(**ch).validate()
        cfg.name = f"c{i:02d}"
        out.append((cfg, t))
    return out


# ---- 3. measuring the runtime ---------------------------------------------------------------------
def stratified(probs: list[float], k: int, seed: int = 0) -> list[list[bool]]:
    """k drop patterns in which block l runs in exactly round(k * probs[l]) iterations."""
    rng = random.Random(seed)
    pats = [[True] * len(probs) for _ in range(k)]
    for l, p in enumerate(probs):
        off = rng.sample(range(k), k - round(k * p))
        for i in off:
            pats[i][l] = False
    return pats


def measure(cfg, t: int, iters: int, mem_iters: int, reps: int = 2, num_classes: int = 100) -> dict:
    """Time per training iteration (runtime's train_step; median CPU and wall ms) and peak memory
    (rep_tune.runtime.measure.measure_iterations: at t, and with every block running)."""
    from rep_tune.runtime.measure import measure_iterations
    from rep_tune.runtime.model import RepModel
    from rep_tune.runtime.step import make_optimizer, train_step
    torch.manual_seed(0)
    model = RepModel(cfg, num_classes).train()
    arch = cfg.backbone.arch
    B = cfg.training.batch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, arch.img_size, arch.img_size, generator=g)
    y = torch.randint(0, num_classes, (B,), generator=g)
    opt = make_optimizer(cfg, model.trainable_parameters())
    q_cached = model.query(x) if cfg.selection.cache else None      # steady state: cache hit

    def step():
        q = q_cached if q_cached is not None else model.query(x)
        train_step(model, opt, x, y, query=q, iteration=t, task_id=0, clip_grad=cfg.training.clip_grad)

    for _ in range(2):
        step()
    # ALD at t with stratified drops: block l runs in round(k * keep_l) of the k timed iterations
    # (the runtime's own skipping; only the draws are stratified, to remove sampling noise).
    patterns = stratified(model.dropper.probabilities(t) if cfg.ald.enabled else [1.0] * model.depth, iters)
    real_sample = model.dropper.sample
    cpu = [[] for _ in patterns]
    wall = [[] for _ in patterns]
    for _ in range(reps):
        for i, pat in enumerate(patterns):
            model.dropper.sample = lambda _t, pat=pat: list(pat)
            t0, w0 = time.process_time(), time.perf_counter()
            step()
            cpu[i].append((time.process_time() - t0) * 1e3)
            wall[i].append((time.perf_counter() - w0) * 1e3)
    model.dropper.sample = real_sample
    mem_t = measure_iterations(model, n=0, warmup=0, memory_iters=mem_iters, iteration=t, iteration_stride=0,
                               num_classes=num_classes).peak_memory_mb.value
    mem_all = mem_t
    if cfg.ald.enabled:   # peak over a task: every block running (ALD off = the same model, all blocks)
        twin = RepModel(cfg.replace(**{"ald.enabled": False}), num_classes)
        mem_all = measure_iterations(twin, n=0, warmup=1, memory_iters=1, num_classes=num_classes).peak_memory_mb.value
    # per drop pattern the fastest of ``reps`` repetitions (other processes only ever add time)
    return {"cpu_ms": statistics.fmean(min(c) for c in cpu), "wall_ms": statistics.fmean(min(w) for w in wall),
            "peak_mb": mem_all,
            "peak_t_mb": mem_t}


def distinct_configs(n: int, seed: int = 1) -> list:
    """n configs differing in merge lists, ALD, prompts and batch (cheap copies, not timed)."""
    import dataclasses

    from rep_tune.config import AldConfig, AtomConfig
    rng = random.Random(seed)
    bases = [preset("paper", m, b) for m in ("l2p", "dualprompt") for b in ("vit_micro_patch4_32", "vit_tiny_patch16_224")]
    out = []
    for _ in range(n):
        c = rng.choice(bases)
        out.append(dataclasses.replace(
            c, atom=AtomConfig(merge=[rng.randint(0, 12) for _ in range(12)]),
            ald=AldConfig(theta_min=rng.choice([0.3, 0.5, 0.75]), tau=rng.randint(0, 30), alpha=rng.choice([0.8, 0.9])),
            prompt=dataclasses.replace(c.prompt, length=rng.randint(1, 20)),
            training=dataclasses.replace(c.training, batch_size=rng.choice([8, 16, 32]))))
    return out


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def describe(cfg) -> str:
    a = cfg.atom
    m = "-" if not a.enabled or not a.merge else ("ramp" if a.merge == sorted(a.merge) else "list") + f"{sum(a.merge)}"
    ald = "-" if not cfg.ald.enabled else f"{cfg.ald.theta_min}/{cfg.ald.tau}/{cfg.ald.alpha}"
    sel = "base" if not cfg.selection.surrogate else ("cache" if cfg.selection.cache else "sur")
    p = cfg.prompt
    pr = f"L2P{p.top_k}x{p.length}" if p.method == "l2p" else f"DP{p.g_length}/{p.length}"
    bb = cfg.backbone.arch
    return f"{bb.name.split('_')[1]}{bb.img_size} B{cfg.training.batch_size} {pr} m={m} ald={ald} {sel}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=8, help="drop patterns timed per config")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each pattern (fastest kept)")
    ap.add_argument("--mem-iters", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer calibration shapes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    print(f"== profiling this machine ({args.threads} threads) ...", flush=True)
    prof = profile_this_machine(args.threads, args.quick)
    cal = prof.calibration
    print(f"   {len(cal.runs)} block runs; efficiency {({k: round(v, 4) for k, v in cal.efficiency.items()})}, "
          f"overhead {cal.overhead_ms:.3f} ms, memory overhead {cal.memory_overhead_mb:.2f} MB; "
          f"fit error {({k: round(v, 3) for k, v in cal.fit_error.items()})}  [{time.perf_counter() - t_start:.0f}s]",
          flush=True)

    rows = []
    for cfg, t in draw_configs(args.configs):
        c = predict(cfg, prof, t=t)
        m = measure(cfg, t, args.iters, args.mem_iters, args.reps)
        row = {"name": cfg.name, "config": describe(cfg), "t": t,
               "pred_ms": c.latency_ms.value, "meas_ms": m["cpu_ms"], "wall_ms": m["wall_ms"],
               "pred_mb": c.peak_memory_mb.value, "meas_mb": m["peak_mb"],
               "pred_t_mb": c.extras["peak_memory_mb_expected"], "meas_t_mb": m["peak_t_mb"],
               "tokens0": c.extras["tokens_first"], "blocks_expected": round(c.extras["blocks_expected"], 2)}
        row["lat_err"] = (row["pred_ms"] - row["meas_ms"]) / row["meas_ms"]
        row["mem_err"] = (row["pred_mb"] - row["meas_mb"]) / row["meas_mb"]
        rows.append(row)
        print(f"{row['name']} {row['config']:<56} t={t:<5} {row['pred_ms']:8.1f} {row['meas_ms']:8.1f} "
              f"({row['wall_ms']:7.1f}) ms {100 * row['lat_err']:+6.1f}%   {row['pred_mb']:6.1f} {row['meas_mb']:6.1f} MB "
              f"{100 * row['mem_err']:+6.1f}%", flush=True)

    lat = np.abs([r["lat_err"] for r in rows])
    mem = np.abs([r["mem_err"] for r in rows])
    mem_t = np.abs([(r["pred_t_mb"] - r["meas_t_mb"]) / r["meas_t_mb"] for r in rows])
    rho = spearman([r["pred_ms"] for r in rows], [r["meas_ms"] for r in rows])
    rho_wall = spearman([r["pred_ms"] for r in rows], [r["wall_ms"] for r in rows])
    many = distinct_configs(10_000)
    t0 = time.perf_counter()
    for cfg in many:
        predict(cfg, prof)
    per = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10_000):
        predict(many[0], prof)
    same = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10_000):
        sum(range(100))
    ref = time.perf_counter() - t0
    print(f"\nlatency = process CPU time per iteration: mean over {args.iters} stratified ALD drop patterns, fastest of {args.reps} runs each; wall time in ( )\n"
          f"configs: {len(rows)}   host: {platform.node()} ({platform.processor() or platform.machine()}), "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"latency   |rel err| median {100 * np.median(lat):.1f}%  p90 {100 * np.percentile(lat, 90):.1f}%  "
          f"(targets 10% / 20%)")
    print(f"memory    |rel err| median {100 * np.median(mem):.1f}%  p90 {100 * np.percentile(mem, 90):.1f}%  "
          f"(peak over a task = every block running; target median 10%)")
    print(f"memory at t (keep-weighted prediction vs max of {args.mem_iters} iterations at t): median "
          f"{100 * np.median(mem_t):.1f}%  p90 {100 * np.percentile(mem_t, 90):.1f}%")
    print(f"Spearman(predicted, measured latency) = {rho:.3f} (CPU time), {rho_wall:.3f} (wall time)")
    print(f"10,000 predictions of distinct configs: {per:.3f} s ({1e2 * per:.1f} us each); of one config "
          f"(schedule memo hit): {same:.3f} s; host speed reference: sum(range(100)) {1e2 * ref:.2f} us")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"cost_model_{platform.node() or 'host'}.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    prof.save(RESULTS / f"profile_{platform.node() or 'host'}.yaml")
    print(f"table: {path}   total {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
