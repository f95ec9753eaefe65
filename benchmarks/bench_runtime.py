"""REP's parts side by side: time per training iteration, peak memory, accuracy (a benchmark, not a test).

Rows: baseline L2P; swift selection only (surrogate + per-sample query cache); REP paper defaults;
AToM only; ALD only; ToMe-style merging (prompts may merge, atom.protect_prompts false) in place
of AToM. "AToM only" / "ALD only" / "ToMe" keep the surrogate and its cache (paper defaults minus
a part), so they decompose the full REP row.
Architectures: the embedded backbone (vit_micro_patch4_32 on Split Digits: accuracy from a short
real run) and ViT-Ti@224 (vit_tiny_patch16_224, random weights: timing only, accuracy n/a).

ALD regime: the keep probability decays with the iteration t, so time is measured at t spread
evenly over the paper's per-task schedule, t in [0, 1563) (Split CIFAR-100: 5000 images per
task, batch 16, 5 epochs, t reset per task); the time figure is the mean over those iterations
(not the median: skipping blocks is the point). "blocks" is the mean number of blocks computed
in the timed iterations, next to its expectation under that schedule.
Query: the base method computes it every iteration (an extra backbone forward); REP rows read it
from the per-sample cache (what every epoch after the first does).
Memory: peak live tensor bytes (rep_tune.runtime.measure), over the probed iterations.

Run: .venv/bin/python benchmarks/bench_runtime.py [--threads 1] [--quick] [--acc-iters 30]
Writes benchmarks/results/bench_runtime_<host>.csv (and .txt with the table).
"""
from __future__ import annotations

import argparse
import csv
import socket
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rep_tune.config import EMBEDDED_BACKBONE, preset
from rep_tune.data.scenario import Scenario
from rep_tune.runtime.backbone import embedded_weights
from rep_tune.runtime.learner import train
from rep_tune.runtime.measure import measure_iterations
from rep_tune.runtime.model import RepModel
from rep_tune.schedule import mean_keep_probabilities

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_ITERS_PER_TASK = 1563      # ceil(5000 / 16) * 5
VARIANTS = [
    ("baseline L2P", "baseline", {}),
    ("swift selection only", "paper", {"atom.enabled": False, "ald.enabled": False}),
    ("REP paper defaults", "paper", {}),
    ("AToM only", "paper", {"ald.enabled": False}),
    ("ALD only", "paper", {"atom.enabled": False}),
    ("ToMe instead of AToM", "paper", {"atom.protect_prompts": False}),
]


def configs(backbone: str, pretrained: bool) -> list[tuple[str, object]]:
    out = []
    for label, name, over in VARIANTS:
        base = {"backbone.pretrained": pretrained, "selection.pretrained": pretrained}
        out.append((label, preset(name, "l2p", backbone, **base, **over)))
    return out


def expected_blocks(model: RepModel) -> float:
    c = model.config.ald
    if not c.enabled:
        return float(model.depth)
    p = mean_keep_probabilities(PAPER_ITERS_PER_TASK, model.config.merge_schedule, model.mergeable, c.theta_min,
                                c.gamma, c.tau, c.alpha, model.layout.prompt_blocks)
    return sum(p)


def time_rows(backbone: str, pretrained: bool, batch: int, n: int, rounds: int, bar) -> dict[str, dict]:
    """Interleaved rounds (every config once per round) so background load hits all rows alike."""
    models = {label: RepModel(cfg, 100) for label, cfg in configs(backbone, pretrained)}
    per_round = n + 2                                    # warm-up + timed + memory probe
    stride = PAPER_ITERS_PER_TASK // (per_round * rounds)
    acc: dict[str, dict] = {k: {"ms": [], "mem": 0.0, "blocks": []} for k in models}
    for r in range(rounds):
        for label, model in models.items():
            c = measure_iterations(model, batch_size=batch, n=n, warmup=1, memory_iters=1,
                                   iteration=r * per_round * stride, iteration_stride=stride,
                                   num_classes=100, classes_per_task=10, statistic="mean")
            acc[label]["ms"].append(c.latency_ms.value)
            acc[label]["mem"] = max(acc[label]["mem"], c.peak_memory_mb.value)
            acc[label]["blocks"].append(c.extras["blocks_run"])
            acc[label]["tokens_last"] = model.planned_tokens[-1]
            acc[label]["expected_blocks"] = expected_blocks(model)
            acc[label]["cached"] = model.config.selection.cache and model.config.selection.surrogate is not None
            bar.update(1)
    return acc


def accuracy_rows(pretrained: bool, acc_iters: int, bar) -> dict[str, float]:
    out = {}
    scenario = Scenario(dataset="digits", n_tasks=5)
    for label, cfg in configs(EMBEDDED_BACKBONE, pretrained):
        cfg = cfg.replace(**{"training.iters_per_task": acc_iters})
        out[label] = train(cfg, scenario, progress=False).final_acc
        bar.update(1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    p.add_argument("--acc-iters", type=int, default=30, help="iterations per task of the accuracy runs")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    have_weights = all(embedded_weights(n) is not None and embedded_weights(n).is_file()
                       for n in (EMBEDDED_BACKBONE, "vit_pico_patch4_32.fmnist"))
    arches = [("embedded (digits)", EMBEDDED_BACKBONE, have_weights, 16, 3 if a.quick else 8, 2),
              ("ViT-Ti@224", "vit_tiny_patch16_224", False, 16, 2 if a.quick else 4, 1 if a.quick else 2)]
    todo = sum(len(VARIANTS) * r for *_, r in arches) + (0 if a.skip_accuracy else len(VARIANTS))
    bar = tqdm(total=todo, desc="bench", unit="run")
    table = []
    t0 = time.time()
    for arch_label, name, pretrained, batch, n, rounds in arches:
        bar.set_description(f"time {arch_label}")
        rows = time_rows(name, pretrained, batch, n, rounds, bar)
        accs: dict[str, float] = {}
        if name == EMBEDDED_BACKBONE and not a.skip_accuracy:
            bar.set_description("accuracy digits")
            accs = accuracy_rows(pretrained, a.acc_iters if not a.quick else 10, bar)
        base_ms = sum(rows["baseline L2P"]["ms"]) / len(rows["baseline L2P"]["ms"])
        base_mem = rows["baseline L2P"]["mem"]
        for label, _, _ in VARIANTS:
            r = rows[label]
            ms = sum(r["ms"]) / len(r["ms"])
            acc = accs.get(label)
            table.append({
                "arch": arch_label, "backbone": name, "variant": label,
                "ms_per_iter": round(ms, 2), "speedup": round(base_ms / ms, 3),
                "peak_mb": round(r["mem"], 2), "memory_ratio": round(base_mem / r["mem"], 3),
                "blocks_run": round(sum(r["blocks"]) / len(r["blocks"]), 2),
                "blocks_expected": round(r["expected_blocks"], 2), "tokens_last_block": r["tokens_last"],
                "query": "cached" if r["cached"] else "computed",
                "accuracy": "n/a" if acc is None else round(acc, 4),
                "weights": "embedded" if pretrained else "random",
                "batch": batch, "timed_iters": n * rounds, "threads": a.threads,
                "machine": socket.gethostname(), "source": "measured",
            })
    bar.close()
    text = render(table) + f"\n\n({time.time() - t0:.0f} s; {a.threads} thread(s); time = mean over t spread "\
                           f"over [0, {PAPER_ITERS_PER_TASK}); memory = peak live tensor bytes; machine {socket.gethostname()})"
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
    head = f"{'arch':<18} {'variant':<22} {'ms/iter':>8} {'speed-up':>8} {'peak MiB':>9} {'mem x':>6} " \
           f"{'blocks':>11} {'query':>8} {'accuracy':>8}"
    lines = [head, "-" * len(head)]
    for r in table:
        acc = r["accuracy"] if isinstance(r["accuracy"], str) else f"{100 * r['accuracy']:.1f}%"
        lines.append(f"{r['arch']:<18} {r['variant']:<22} {r['ms_per_iter']:>8.1f} {r['speedup']:>7.2f}x "
                     f"{r['peak_mb']:>9.1f} {r['memory_ratio']:>5.2f}x {r['blocks_run']:>5.1f}/{r['blocks_expected']:<5.1f} "
                     f"{r['query']:>8} {acc:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
