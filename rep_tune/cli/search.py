"""`rep-tune search`: hardware-aware search for the best REP config under each device's budgets.

    rep-tune search --device profiles/jetson_orin.yaml
    rep-tune search --device local --latency-budget 0.5x --memory-budget 0.7x --n-trials 40
    rep-tune search --device profiles/ --space search_spaces/dualprompt.yaml
    rep-tune search --resume runs/search-jetson_orin-20260101-120000
"""
from __future__ import annotations

import argparse

import yaml

from rep_tune.cli.common import add_threads_argument, set_threads
from rep_tune.data.scenario import Scenario
from rep_tune.search.optuna_backend import SAMPLERS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", action="append", default=[], metavar="PROFILE",
                   help="device profile file, folder of profiles, shipped name, or 'local' (repeatable)")
    p.add_argument("--space", help="search space YAML (default: search_spaces/<method>.yaml)")
    p.add_argument("--method", choices=("l2p", "dualprompt"), default="l2p", help="default space to use (default l2p)")
    p.add_argument("--scenario", help="scenario YAML (default: the embedded digits benchmark, 5 tasks)")
    p.add_argument("--latency-budget", help="ms per training iteration, or relative to the baseline: 0.6x")
    p.add_argument("--memory-budget", help="MB of peak training memory, or relative: 0.8x")
    p.add_argument("--energy-budget", help="J per training iteration, or relative: 0.7x")
    p.add_argument("--n-trials", type=int, help="trained trials (prescreened ones are free; default 16)")
    p.add_argument("--timeout", type=float, help="seconds (default 600; 0 = none); a training in flight then stops at "
                                                 "its next task boundary (recorded as pruned, stopped: search timeout)")
    p.add_argument("--n-workers", type=int, help="parallel workers in this process (default 1); other processes "
                                                   "may join with --resume RUN_DIR")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="tpe (constrained, default), gp, nsga2, random")
    p.add_argument("--pruner", choices=("percentile", "median", "wilcoxon", "none"), default="percentile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=0.1,
                   help="rule a candidate out before training when its predicted cost exceeds budget*(1+margin)")
    p.add_argument("--no-prescreen", action="store_true", help="train every candidate (constraints stay soft)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per task during the search (default 1)")
    p.add_argument("--iters-per-task", type=int, default=12,
                   help="iteration cap per task during the search (default 12: the default search fits 15 minutes "
                        "on 2 CPU cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted RepConfig override for every candidate, e.g. training.lr=0.05")
    p.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    p.add_argument("--run-dir", help="run folder (default runs/search-<device>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="resume (or join) the search in RUN_DIR")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true")


def settings_from_args(args: argparse.Namespace):
    from rep_tune.search.run import SearchSettings

    timeout = None if args.timeout == 0 else args.timeout
    if args.resume:
        return SearchSettings.resume(args.resume, n_trials=args.n_trials, timeout=timeout, n_workers=args.n_workers,
                                     progress=not args.no_progress)
    if not args.device:
        raise ValueError("--device: expected at least one device profile (e.g. profiles/jetson_orin.yaml), or --resume RUN_DIR")
    overrides = {"training.epochs": args.epochs, "training.iters_per_task": args.iters_per_task}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected KEY=VALUE, found {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    budgets = {m: v for m, v in (("latency_ms", args.latency_budget), ("peak_memory_mb", args.memory_budget),
                                 ("energy_j", args.energy_budget)) if v}
    return SearchSettings(
        devices=list(args.device), space=args.space, method=args.method,
        scenario=Scenario.load(args.scenario) if args.scenario else Scenario(),
        overrides=overrides, n_trials=16 if args.n_trials is None else args.n_trials,
        timeout=600.0 if args.timeout is None else timeout, n_workers=args.n_workers or 1,
        sampler=args.sampler, seed=args.seed, pruner=args.pruner, prescreen=not args.no_prescreen,
        margin=args.margin, budgets=budgets, backend=args.backend, run_dir=args.run_dir,
        progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:

    from rep_tune.search.budgets import parse_budget
    from rep_tune.search.run import search

    settings = settings_from_args(args)
    threads = set_threads(args.threads)
    print(f"torch threads: {threads}")
    for metric, text in settings.budgets.items():
        parse_budget(text, metric)          # bad budget text stops before any work
    outcome = search(settings)
    return 0 if all(outcome.bests.get(t.key) is not None for t in outcome.targets) else 1
