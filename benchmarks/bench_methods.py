"""A method's settings, old against new, at full fidelity with paired seeds (a benchmark, not a test).

Issue 18 changes two methods' settings: DualPrompt's learning rate (REP's 0.005 against the 0.03
the embedded schedule used) and CODA-Prompt's training scheme (components, keys and attention
vectors initialised orthogonal to the earlier tasks' by Gram-Schmidt when a task begins, frozen
components kept out of the optimizer, evaluation over the classes seen so far). This benchmark
trains one *arm* (a method, a label, ``--set`` overrides) over seeds and appends each run to
``benchmarks/results/bench_methods_<tag>.jsonl``; ``--compare A B`` prints the two arms side by
side with the per-seed paired difference and its 95 % t-interval.

Seed s sets both ``training.seed`` (init, batch order, drop draws) and the scenario's
``class_order_seed`` (which classes form which task), so the seeds also vary the class order.
Fidelity: the paper preset on the embedded backbone, 1 epoch of 64 iterations per task (the
accuracy benchmark's full fidelity), accuracy on the validation split held out of the training
pool (``--val-per-class`` images per class), never the test set.

A code change (CODA-Prompt's) is compared by running the same arm from two checkouts: the
previous commit with ``PYTHONPATH=<old clone>`` and this one; each row records the git commit of
the ``rep_tune`` it imported.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_methods.py --method dualprompt --label "dualprompt lr 0.005" --set training.lr=0.005
    PYTHONPATH=. .venv/bin/python benchmarks/bench_methods.py --compare "dualprompt lr 0.03" "dualprompt lr 0.005"
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def code_revision() -> str:
    """The git commit of the imported ``rep_tune`` package (the checkout PYTHONPATH points at)."""
    import rep_tune
    root = Path(rep_tune.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "rep_tune"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_arm(args) -> None:
    import torch

    from rep_tune.cli.common import set_overrides
    from rep_tune.config import preset
    from rep_tune.data.scenario import Scenario
    from rep_tune.runtime import learner
    torch.set_num_threads(args.threads)
    over = set_overrides(args.set)
    path = RESULTS / f"bench_methods_{args.tag}.jsonl"
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["label"], r["seed"]))
    rev = code_revision()
    for seed in args.seeds:
        if (args.label, seed) in done:
            print(f"{args.label} seed {seed}: already in {path.name}")
            continue
        cfg = preset("paper", args.method, args.backbone,
                     **{"training.seed": seed, "training.epochs": 1, "training.iters_per_task": args.iters, **over})
        sc = Scenario(dataset="fashion-mnist", n_tasks=args.tasks, class_order_seed=seed,
                      val_per_class=args.val_per_class, eval_per_class=args.val_per_class, eval_split="val")
        t0 = time.perf_counter()
        res = learner.train(cfg, sc, progress=False)
        row = {"label": args.label, "method": args.method, "seed": seed, "overrides": over, "code": rev,
               "lr": cfg.training.lr, "iters_per_task": args.iters, "final_acc": res.final_acc,
               "forgetting": res.forgetting, "eval_size": res.eval_size, "seconds": time.perf_counter() - t0}
        RESULTS.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{args.label} seed {seed}: val acc {100 * res.final_acc:.2f} % on {res.eval_size} images, "
              f"forgetting {100 * res.forgetting:.2f}, {row['seconds']:.0f} s (code {rev})", flush=True)


def compare(args) -> None:
    from rep_tune.search.confirm import interval, paired
    path = RESULTS / f"bench_methods_{args.tag}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    a_label, b_label = args.compare
    by = {lab: {r["seed"]: r for r in rows if r["label"] == lab} for lab in (a_label, b_label)}
    for lab, got in by.items():
        if not got:
            sys.exit(f"--compare: no runs labelled {lab!r} in {path}")
    out = [f"# bench_methods ({args.tag}): paper preset, embedded backbone, Split Fashion-MNIST "
           f"(seed s = training seed and class-order seed), accuracy on the validation split",
           "| arm | code | lr | seeds | final val acc % [95 % CI] | forgetting pts [95 % CI] | eval images | s/run |",
           "|---|---|---|---|---|---|---|---|"]
    for lab, got in by.items():
        rs = [got[s] for s in sorted(got)]
        out.append(f"| {lab} | {', '.join(sorted({r['code'] for r in rs}))} | {rs[0]['lr']} | "
                   f"{sorted(got)} | {interval([r['final_acc'] for r in rs]).text()} | "
                   f"{interval([r['forgetting'] for r in rs]).text()} | {rs[0]['eval_size']} | "
                   f"{sum(r['seconds'] for r in rs) / len(rs):.0f} |")
    for metric in ("final_acc", "forgetting"):
        d = paired({s: r[metric] for s, r in by[b_label].items()}, {s: r[metric] for s, r in by[a_label].items()})
        out.append(f"paired {metric}: {b_label} - {a_label} = {d.text(sign=True)} points over {d.n} seeds -> "
                   f"{'resolved' if d.resolved else 'not resolved (the interval spans 0)'}")
    text = "\n".join(out)
    print(text)
    if args.write:
        (RESULTS / args.write).write_text(text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="dualprompt")
    p.add_argument("--label", help="the arm's name in the results file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backbone", default="vit_micro_patch2_28.fmnist")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--iters", type=int, default=64, help="iterations per task (1 epoch capped here)")
    p.add_argument("--val-per-class", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default=socket.gethostname())
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print arm B against arm A (paired by seed)")
    p.add_argument("--write", help="with --compare: also write the table to benchmarks/results/<WRITE>")
    args = p.parse_args()
    if args.compare:
        compare(args)
    elif not args.label:
        p.error("--label is required to run an arm")
    else:
        run_arm(args)


if __name__ == "__main__":
    main()
