"""How stable is this machine between two `rep-tune profile` runs? (a benchmark, not a test)

The cost model's latency targets (issue 16: median <= 5 %) compare a prediction made from a
profile with a training run timed later. Within one profile, repeated probes must agree
(``rep-tune profile`` refuses a busy machine); this measures what that check cannot see: how far the
same ViT-block shapes move between whole profile runs minutes apart on an otherwise quiet machine
(CPU frequency, a shared host's neighbours). If the blocks themselves move by more than the target,
no cost model can meet the target on this machine, and the residual says so.

Runs ``profile_device`` ``--runs`` times, ``--gap-s`` seconds apart, at ``--threads``; prints, for each
later run, the per-shape time ratio against the first (median and 10th..90th percentile, forward and
forward + backward), each profile's predicted latency of the embedded paper preset, and the load
average. Writes ``benchmarks/results/profile_drift_<host>.txt`` (this output) beside nothing else.

Run: python benchmarks/bench_profile_drift.py [--runs 3] [--gap-s 60] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rep_tune.config import preset
from rep_tune.cost import predict
from rep_tune.profiler.device_profile import profile_device

RESULTS = Path(__file__).resolve().parent / "results"


def shape_times(prof) -> dict[tuple[int, int, int], tuple[float, float]]:
    return {(r.batch, r.tokens, r.embed_dim): (r.fwd_ms, r.fwd_bwd_ms) for r in prof.calibration.runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gap-s", type=float, default=60.0, help="idle seconds between profile runs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    cfg = preset("paper", "l2p", "vit_micro_patch2_28")
    profs, stamps = [], []
    t0 = time.perf_counter()
    for i in range(args.runs):
        if i:
            time.sleep(args.gap_s)
        torch.set_num_threads(args.threads)
        prof = profile_device(threads=args.threads, progress=False)
        profs.append(prof)
        stamps.append(time.perf_counter() - t0)
        lat = predict(cfg.replace(**{"training.precision": prof.dtype}), prof).latency_ms.value
        say(f"run {i}: t={stamps[-1]:.0f}s dtype {prof.dtype} noisy {prof.calibration.noisy} "
            f"predicted paper L2P (embedded, batch {cfg.training.batch_size}) {lat:.1f} ms/iteration; "
            f"load average {os.getloadavg()[0]:.2f}")
    first = shape_times(profs[0])
    say(f"\nper-shape time ratio against run 0 ({len(first)} ViT-block shapes; {args.threads} thread(s); "
        f"{args.gap_s:g} s idle between runs)")
    say("| run | fwd median | fwd p10..p90 | fwd+bwd median | fwd+bwd p10..p90 |")
    say("|---|---|---|---|---|")
    for i, prof in enumerate(profs[1:], 1):
        cur = shape_times(prof)
        keys = [k for k in first if k in cur]
        f = np.array([cur[k][0] / first[k][0] for k in keys])
        fb = np.array([cur[k][1] / first[k][1] for k in keys])
        say(f"| {i} | {np.median(f):.3f} | {np.percentile(f, 10):.3f}..{np.percentile(f, 90):.3f} | "
            f"{np.median(fb):.3f} | {np.percentile(fb, 10):.3f}..{np.percentile(fb, 90):.3f} |")
    cpu = profs[0].identity.get("cpu", platform.machine())
    say(f"host {platform.node()} ({cpu}), torch {torch.__version__}; total {time.perf_counter() - t0:.0f}s; "
        f"median of the within-profile probe spreads of run 0: "
        f"{statistics.median(profs[0].calibration.spreads.values()):.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile_drift_{platform.node()}.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
