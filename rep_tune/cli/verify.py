"""`rep-tune verify`: run a deployable config's training iterations here and check them against the
search's expected figures and the target's budgets.

    rep-tune verify --config runs/search-local-.../best_local.yaml
    rep-tune verify --config best_jetson_orin.yaml --device profiles/my_orin.yaml --iters 20

Exit status: 0 every budget holds, 3 a budget is violated (or could not be measured), 2 bad input.
Writes verify.yaml next to the config (or --out).
"""
from __future__ import annotations

import argparse

from rep_tune.cli.common import add_threads_argument, int_range, path_arg, set_threads, torch_device
from rep_tune.config import MAX_BATCH


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=path_arg, required=True, metavar="best_<device>.yaml", help="deployable RepConfig (a search's best_*.yaml)")
    p.add_argument("--device", type=path_arg, default=None, metavar="local|PROFILE",
                   help="'local' (default): check the config's target budgets and expected figures; PROFILE: check that "
                        "profile's budgets, and its cost-model prediction when it is not the config's target")
    p.add_argument("--iters", type=int_range(1, 10 ** 6), default=10,
                   help="timed iterations per schedule part (default 10)")
    p.add_argument("--batch", type=int_range(1, MAX_BATCH), default=None,
                   help="batch size (default: the target budgets' batch size)")
    p.add_argument("--run-on", type=torch_device, default=None, metavar="DEVICE",
                   help="torch device: cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--out", type=path_arg, default=None, help="report file (default: verify.yaml next to the config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(p)


def run(args: argparse.Namespace) -> int:
    from rep_tune.verify import load_plan, run_plan, write_report

    plan = load_plan(args.config, device=args.device, iters=args.iters, batch_size=args.batch)
    set_threads(args.threads)
    report = run_plan(plan, device=args.run_on, progress=not args.no_progress)
    print(report.render())
    path = write_report(report, args.out)
    print(f"report: {path}")
    return report.exit_code
