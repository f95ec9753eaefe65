"""REP's parts side by side, in fp32 and bf16: time per training iteration, peak memory, energy,
achieved TFLOP/s, accuracy (a benchmark, not a test).

Rows: baseline L2P; swift selection only (surrogate + per-sample query cache); REP paper defaults;
AToM only; ALD only; ToMe-style merging (prompts may merge, atom.protect_prompts false) in place
of AToM. "AToM only" / "ALD only" / "ToMe" keep the surrogate and its cache (paper defaults minus
a part), so they decompose the full REP row. Each row runs at every ``--precisions`` entry
(``training.precision``: fp32, or autocast bf16/fp16 for the frozen backbone's compute).
Architectures: the embedded backbone (on Split Digits: accuracy from a short real run) and
ViT-Ti@224 by default (random weights: timing only, accuracy n/a); any timm ViT with --backbones.

ALD regime: the keep probability decays with the iteration t, so time is measured at t spread
evenly over the paper's per-task schedule, t in [0, 1563) (Split CIFAR-100: 5000 images per
task, batch 16, 5 epochs, t reset per task); the time figure is the mean over those iterations
(not the median: skipping blocks is the point). "blocks" is the mean number of blocks computed
in the timed iterations, next to its expectation under that schedule.
Query: the base method computes it every iteration (an extra backbone forward); REP rows read it
from the per-sample cache (what every epoch after the first does).
Memory: peak training memory, MiB (rep_tune.runtime.measure: CUDA allocator on a GPU, peak live
tensor bytes on the CPU). Energy: J per iteration from the profiler's windows (NVML, RAPL,
Jetson rails; else estimated, labelled), summed over a row's rounds. TFLOP/s: the cost model's
FLOPs of the row's config over the schedule (rep_tune.cost.predict extras) / measured time;
"% peak" against ``--profile``'s spec.peak_tflops at the row's precision.

Run: python benchmarks/bench_runtime.py [--threads 1] [--quick] [--acc-iters 30]
     python benchmarks/bench_runtime.py --device cuda --backbones vit_tiny_patch16_224,vit_base_patch16_224 \\
         --batches 16,32 --variants baseline,paper --precisions fp32,bf16 --skip-accuracy --profile gpu.yaml
Writes <out>/bench_runtime_<host>.csv (and .txt with the table).
"""
from __future__ import annotations

import argparse
import csv
import math
import socket
import sys
import time
from pathlib import Path

import torch
from rep_tune.progress import ProgressBar

from rep_tune.config import EMBEDDED_BACKBONE, EMBEDDED_SURROGATE, preset
from rep_tune.runtime.backbone import embedded_weights
from rep_tune.runtime.measure import measure_iterations
from rep_tune.runtime.model import RepModel
from rep_tune.schedule import mean_keep_probabilities

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_ITERS_PER_TASK = 1563      # ceil(5000 / 16) * 5
VARIANTS = {
    "baseline": ("baseline L2P", "baseline", {}),
    "swift": ("swift selection only", "paper", {"atom.enabled": False, "ald.enabled": False}),
    "paper": ("REP paper defaults", "paper", {}),
    "atom": ("AToM only", "paper", {"ald.enabled": False}),
    "ald": ("ALD only", "paper", {"atom.enabled": False}),
    "tome": ("ToMe instead of AToM", "paper", {"atom.protect_prompts": False}),
}


def configs(backbone: str, pretrained: bool, variants: list[str], precisions: list[str]) -> list[tuple[str, str, object]]:
    """(variant label, precision, RepConfig) for every requested variant and precision."""
    out = []
    for key in variants:
        label, name, over = VARIANTS[key]
        for prec in precisions:
            base = {"backbone.pretrained": pretrained, "selection.pretrained": pretrained, "training.precision": prec}
            out.append((label, prec, preset(name, "l2p", backbone, **base, **over)))
    return out


def expected_blocks(model: RepModel) -> float:
    c = model.config.ald
    if not c.enabled:
        return float(model.depth)
    p = mean_keep_probabilities(PAPER_ITERS_PER_TASK, model.config.merge_schedule, model.mergeable, c.theta_min,
                                c.gamma, c.tau, c.alpha, model.layout.prompt_blocks)
    return sum(p)


def flops_per_iter(cfg, batch: int) -> float:
    """FLOPs of one training iteration, expected over the paper's task schedule (the cost model's counts)."""
    from rep_tune.cost import predict
    from rep_tune.device import DeviceProfile, Spec
    dummy = DeviceProfile(name="counts", kind="cpu", spec=Spec(peak_tflops={"fp32": 1.0}, memory_bandwidth_gbs=1.0))
    x = predict(cfg, dummy, iters_per_task=PAPER_ITERS_PER_TASK, batch=batch, num_classes=100).extras
    return x["flops_fwd"] + x["flops_bwd"] + x.get("flops_match", 0.0)


def time_rows(backbone: str, pretrained: bool, batch: int, n: int, rounds: int, variants: list[str],
              precisions: list[str], device: torch.device, energy: bool, min_window_s: float, bar) -> dict:
    """Interleaved rounds (every config once per round) so background load hits all rows alike."""
    from rep_tune.profiler.energy import RunEnergy

    rows = {}
    for label, prec, cfg in configs(backbone, pretrained, variants, precisions):
        model = RepModel(cfg, 100)
        rows[(label, prec)] = {"model": model, "ms": [], "mem": 0.0, "blocks": [], "n": n,
                               "energy": RunEnergy.for_this_machine(str(device), label="bench") if energy else None,
                               "flops": flops_per_iter(cfg, batch)}
    if min_window_s > 0:      # enough iterations per window for the energy counter's update period
        for r in rows.values():
            c = measure_iterations(r["model"], batch_size=batch, n=2, warmup=1, memory_iters=0, device=device,
                                   num_classes=100, classes_per_task=10, statistic="mean")
            r["n"] = min(200, max(n, math.ceil(1000 * min_window_s / c.latency_ms.value)))
    for rnd in range(rounds):
        for (label, prec), r in rows.items():
            per_round = r["n"] + 2                                    # warm-up + timed + memory probe
            stride = max(1, PAPER_ITERS_PER_TASK // (per_round * rounds))
            c = measure_iterations(r["model"], batch_size=batch, n=r["n"], warmup=1, memory_iters=1,
                                   iteration=rnd * per_round * stride, iteration_stride=stride, device=device,
                                   num_classes=100, classes_per_task=10, statistic="mean", energy=r["energy"])
            r["ms"].append(c.latency_ms.value)
            r["mem"] = max(r["mem"], c.peak_memory_mb.value)
            r["blocks"].append(c.extras["blocks_run"])
            r["tokens_last"] = r["model"].planned_tokens[-1]
            r["expected_blocks"] = expected_blocks(r["model"])
            r["cached"] = cfg_cached(r["model"].config)
            bar.update(1)
    for r in rows.values():
        e = r["energy"].per_iteration() if r["energy"] is not None else None
        r["energy_j"], r["energy_source"] = (None, None) if e is None else (e.value, e.source)
        if r["energy"] is not None:
            r["energy"].close()
        del r["model"]
    return rows


def cfg_cached(cfg) -> bool:
    return bool(cfg.selection.cache and cfg.selection.surrogate is not None)


def accuracy_rows(pretrained: bool, acc_iters: int, variants: list[str], precisions: list[str], bar) -> dict:
    from rep_tune.data.scenario import Scenario
    from rep_tune.runtime.learner import train
    out = {}
    scenario = Scenario(dataset="digits", n_tasks=5)
    for label, prec, cfg in configs(EMBEDDED_BACKBONE, pretrained, variants, precisions):
        cfg = cfg.replace(**{"training.iters_per_task": acc_iters})
        out[(label, prec)] = train(cfg, scenario, progress=False, energy=False).final_acc
        bar.update(1)
    return out


def peak_tflops(profile, precision: str) -> float | None:
    return None if profile is None else profile.spec.peak_tflops.get(precision)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    p.add_argument("--backbones", default=f"{EMBEDDED_BACKBONE},vit_tiny_patch16_224",
                   help="comma-separated timm ViT names (the embedded one runs with its weights and accuracy)")
    p.add_argument("--batches", default="16", help="comma-separated batch sizes")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated training.precision values")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--n", type=int, default=None, help="timed iterations per round (default 8 embedded / 4 others)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2)")
    p.add_argument("--min-window-s", type=float, default=None,
                   help="grow n so each energy window lasts this long (default 1.0 on CUDA, 0 on the CPU)")
    p.add_argument("--no-energy", action="store_true", help="no energy windows")
    p.add_argument("--profile", help="device profile whose spec.peak_tflops gives the '%% peak' column")
    p.add_argument("--acc-iters", type=int, default=30, help="iterations per task of the accuracy runs")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    profile = None
    if a.profile:
        from rep_tune.device import DeviceProfile
        profile = DeviceProfile.load(a.profile)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; expected names from {', '.join(VARIANTS)}")
    precisions = [x.strip() for x in a.precisions.split(",") if x.strip()]
    backbones = [b.strip() for b in a.backbones.split(",") if b.strip()]
    batches = [int(b) for b in a.batches.split(",")]
    min_window = a.min_window_s if a.min_window_s is not None else (1.0 if dev.type == "cuda" else 0.0)
    have_weights = all(embedded_weights(n) is not None and embedded_weights(n).is_file()
                       for n in (EMBEDDED_BACKBONE, EMBEDDED_SURROGATE))
    runs = []
    for name in backbones:
        embedded = name == EMBEDDED_BACKBONE
        n = a.n or ((3 if a.quick else 8) if embedded else (2 if a.quick else 4))
        rounds = a.rounds or (2 if embedded or not a.quick else 1)
        for batch in batches:
            runs.append((name, embedded and have_weights, batch, n, rounds))
    n_cfg = len(variants) * len(precisions)
    todo = sum(n_cfg * r for *_, r in runs) + (0 if a.skip_accuracy or EMBEDDED_BACKBONE not in backbones else n_cfg)
    bar = ProgressBar(todo, "bench", unit="runs")
    table = []
    t0 = time.time()
    accs: dict = {}
    if not a.skip_accuracy and EMBEDDED_BACKBONE in backbones:
        bar.set_description("accuracy digits")
        accs = accuracy_rows(have_weights, a.acc_iters if not a.quick else 10, variants, precisions, bar)
    for name, pretrained, batch, n, rounds in runs:
        bar.set_description(f"time {name} b{batch}")
        rows = time_rows(name, pretrained, batch, n, rounds, variants, precisions, dev, not a.no_energy, min_window, bar)
        for (label, prec), r in rows.items():
            ms = sum(r["ms"]) / len(r["ms"])
            base = rows.get((VARIANTS["baseline"][0], prec)) or rows[next(iter(rows))]
            fp32 = rows.get((label, "fp32"))
            base_ms = sum(base["ms"]) / len(base["ms"])
            tflops = r["flops"] / (ms / 1000) / 1e12
            peak = peak_tflops(profile, prec)
            acc = accs.get((label, prec)) if name == EMBEDDED_BACKBONE else None
            table.append({
                "backbone": name, "variant": label, "precision": prec, "batch": batch,
                "ms_per_iter": round(ms, 3), "speedup": round(base_ms / ms, 3),
                "vs_fp32": None if fp32 is None else round(sum(fp32["ms"]) / len(fp32["ms"]) / ms, 3),
                "peak_mib": round(r["mem"], 2), "memory_ratio": round(base["mem"] / r["mem"], 3),
                "energy_j": None if r["energy_j"] is None else round(r["energy_j"], 5),
                "energy_source": r["energy_source"],
                "gflop_per_iter": round(r["flops"] / 1e9, 3), "tflops": round(tflops, 4),
                "peak_fraction": None if not peak else round(tflops / peak, 4),
                "blocks_run": round(sum(r["blocks"]) / len(r["blocks"]), 2),
                "blocks_expected": round(r["expected_blocks"], 2), "tokens_last_block": r["tokens_last"],
                "query": "cached" if r["cached"] else "computed",
                "accuracy": "n/a" if acc is None else round(acc, 4),
                "weights": "embedded" if pretrained else "random",
                "timed_iters": r["n"] * rounds, "threads": a.threads,
                "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                "machine": socket.gethostname(), "source": "measured",
            })
    bar.close()
    text = render(table) + (f"\n\n({time.time() - t0:.0f} s; {a.threads} thread(s); device {table[0]['device']}; "
                            f"time = mean over t spread over [0, {PAPER_ITERS_PER_TASK}); memory = peak training memory "
                            f"(MiB); energy per iteration with its source; vs fp32 = fp32 time / this time; "
                            f"% peak against {a.profile or 'no profile'}; machine {socket.gethostname()})")
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_runtime_{socket.gethostname()}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    stem.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwrote {stem.with_suffix('.csv')} and {stem.with_suffix('.txt')}")
    return 0


def render(table: list[dict]) -> str:
    head = (f"{'backbone':<26} {'variant':<22} {'prec':>4} {'batch':>5} {'ms/iter':>9} {'speed-up':>8} {'vs fp32':>7} "
            f"{'peak MiB':>9} {'J/iter':>14} {'TFLOP/s':>8} {'% peak':>6} {'blocks':>11} {'query':>8} {'accuracy':>8}")
    lines = [head, "-" * len(head)]
    for r in table:
        acc = r["accuracy"] if isinstance(r["accuracy"], str) else f"{100 * r['accuracy']:.1f}%"
        energy = "-" if r["energy_j"] is None else f"{r['energy_j']:.4g} {r['energy_source'][:4]}"
        frac = "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}"
        vs = "-" if r["vs_fp32"] is None else f"{r['vs_fp32']:.2f}x"
        lines.append(f"{r['backbone']:<26} {r['variant']:<22} {r['precision']:>4} {r['batch']:>5} {r['ms_per_iter']:>9.2f} "
                     f"{r['speedup']:>7.2f}x {vs:>7} {r['peak_mib']:>9.1f} {energy:>14} {r['tflops']:>8.3f} {frac:>6} "
                     f"{r['blocks_run']:>5.1f}/{r['blocks_expected']:<5.1f} {r['query']:>8} {acc:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
