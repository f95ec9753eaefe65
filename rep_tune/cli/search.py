"""`rep-tune search`: hardware-aware search for the best REP config under each device's budgets.

    rep-tune search --device profiles/jetson_orin.yaml
    rep-tune search --device local --latency-budget 0.5x --memory-budget 0.7x --n-trials 40
    rep-tune search --device profiles/ --space search_spaces/dualprompt.yaml
    rep-tune search --device jetson_orin --deploy-backbone vit_small_patch16_224
    rep-tune search --resume runs/search-jetson_orin-20260101-120000   (also: join a running search)
    rep-tune search --device jetson_orin --backend ray --address 10.0.0.1:6379 --n-workers 8 --gpus-per-trial 1

Defaults are ``SearchSettings``'s (rep_tune/search/run.py): only the flags given here override them.
"""
from __future__ import annotations

import argparse
import os
import sys


from rep_tune.cli.common import (add_threads_argument, int_range, non_negative_float, positive_float,
                                   positive_int, set_overrides, set_threads)
from rep_tune.figures import METRICS
from rep_tune.methods import method_names
from rep_tune.search import strategies
from rep_tune.search.backends import BACKENDS


def confirm_pair(text: str) -> tuple[int, ...]:
    """``--confirm K,S[,R]``: K candidates >= 1, S selection seeds >= 1, R report seeds (0: reuse the
    selection seeds, biased; else >= 2 fresh ones)."""
    from rep_tune.search.confirm import valid_report_seeds
    parts = text.split(",")
    try:
        vals = tuple(int(v) for v in parts)
    except ValueError:
        vals = ()
    if len(vals) not in (2, 3) or vals[0] < 1 or vals[1] < 1 or (len(vals) == 3 and not valid_report_seeds(vals[2])):
        raise argparse.ArgumentTypeError(f"expected K,S[,R] with K >= 1 candidates, S >= 1 selection seeds and R = 0 "
                                         f"(report on the selection seeds) or R >= 2 fresh report seeds (e.g. 3,2,4), "
                                         f"found {text!r}")
    return vals


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    """One ``--<metric>-budget`` option per registered metric (``rep_tune.figures.METRICS``); shared
    with ``benchmarks/bench_search.py`` so both take the same budgets."""
    for m in METRICS.values():
        p.add_argument(f"--{m.flag}-budget", dest=f"budget_{m.name}", metavar="BUDGET",
                       help=f"{m.label} in {m.unit} (units: {', '.join(m.scales)}), or relative to the baseline: 0.6x "
                            "(default: the profile's budget)")


def budget_flags(args: argparse.Namespace) -> dict[str, str]:
    """The budgets given on the command line (``add_budget_flags``), metric -> text, as
    ``SearchSettings.budgets`` takes them."""
    return {m: getattr(args, f"budget_{m}") for m in METRICS if getattr(args, f"budget_{m}", None)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rep_tune.search.run import SEARCH_FIDELITY, SearchSettings

    d = SearchSettings()
    p.add_argument("--device", action="append", default=[], metavar="PROFILE",
                   help="device profile file, folder of profiles, shipped name, or 'local' (repeatable)")
    p.add_argument("--space", help="search space YAML (default: search_spaces/<method>.yaml)")
    p.add_argument("--method", choices=method_names(), help=f"default space to use (default {d.method})")
    p.add_argument("--backbone", metavar="NAME", help=f"proxy backbone trained for accuracy (default {d.backbone})")
    p.add_argument("--scenario", help="scenario YAML (default: the embedded benchmark)")
    add_budget_flags(p)
    p.add_argument("--deploy-backbone", metavar="NAME",
                   help="deployment backbone the costs are priced on (default: each profile's workload backbone)")
    p.add_argument("--deploy-epochs", type=positive_int, metavar="N", help="deployment epochs per task (default: the profile's workload)")
    p.add_argument("--deploy-iters-per-task", type=positive_int, metavar="N",
                   help="deployment iteration budget per task (default: the profile's workload)")
    p.add_argument("--n-trials", type=positive_int, help=f"trained trials (prescreened ones are free; default {d.n_trials})")
    p.add_argument("--timeout", type=non_negative_float, help=f"seconds (default {d.timeout:g}; 0 = none); a training in flight then "
                                                 "stops at its next task boundary (pruned, stopped: search timeout)")
    p.add_argument("--n-workers", type=positive_int, help=f"parallel trainings in this process (default {d.n_workers}), each on "
                                                   "an equal share of --threads; other processes may join with --resume RUN_DIR")
    p.add_argument("--sampler", choices=list(strategies.SAMPLERS), help=f"default {d.sampler}")
    p.add_argument("--pruner", choices=list(strategies.PRUNERS), help=f"default {d.pruner}")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--margin", type=non_negative_float,
                   help=f"rule a candidate out before training when its predicted cost exceeds budget*(1+margin) "
                        f"(default {d.margin})")
    p.add_argument("--no-prescreen", action="store_true", help="train every candidate (constraints stay soft)")
    from rep_tune.export import export_targets
    p.add_argument("--export-target", choices=export_targets(),
                   help="search only configs this export format expresses exactly (rep-tune export --format), so "
                        "the best exports with no --allow-approx; the deployment trains at a precision it runs")
    p.add_argument("--epochs", type=positive_int, help=f"epochs per task during the search (default {SEARCH_FIDELITY['training.epochs']})")
    p.add_argument("--iters-per-task", type=positive_int,
                   help=f"iteration cap per task during the search (default {SEARCH_FIDELITY['training.iters_per_task']})")
    p.add_argument("--confirm", type=confirm_pair, metavar="K,S[,R]",
                   help=f"after the search, retrain the top K feasible configs per device and the paper preset on S "
                        f"paired seeds and choose by validation accuracy; then retrain the choice and the paper preset "
                        f"on R fresh paired seeds and report their test accuracy with 95 %% intervals (R = 0: report "
                        f"on the S seeds, biased upwards) (default {d.confirm_top_k},{d.confirm_seeds},"
                        f"{d.confirm_report_seeds})")
    p.add_argument("--time-limit", type=non_negative_float, metavar="SECONDS",
                   help=f"wall time of the whole command (default {d.time_limit:g}; 0 = none): the report runs "
                        f"fresh seeds while the next ones can end within it, timed on the last ones (fewer than R "
                        f"when R would overrun it, never below 3; up to 2R when time is left); the search's "
                        f"trials stop at half of it, or --timeout if sooner (all of it with --no-confirm)")
    p.add_argument("--confirm-iters", type=positive_int, metavar="N",
                   help=f"iterations per task of the confirmation's retraining (default {d.confirm_iters_per_task})")
    p.add_argument("--confirm-workers", type=positive_int, metavar="N",
                   help="the confirmation's retrainings at once, each on an equal share of the torch threads "
                        "(default: one per torch CPU thread, at most 4; 1 on a GPU). They are independent: this "
                        "changes no choice, only how soon it comes and so how many report seeds fit the time limit")
    p.add_argument("--no-confirm", action="store_true", help="skip the confirmation (the answer is then unconfirmed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted RepConfig override for every candidate, e.g. training.lr=0.05")
    p.add_argument("--backend", choices=list(BACKENDS), help=f"default {d.backend}")
    ray = p.add_argument_group("Ray (--backend ray)")
    ray.add_argument("--address", metavar="HOST:PORT",
                     help="an existing Ray cluster's head (`ray start --head --port PORT`), or 'auto' (the cluster "
                          "started last on this machine), or 'local' (a new local Ray instance); default: RAY_ADDRESS, "
                          "else a new local instance. Implies --backend ray. A cluster that does not answer fails "
                          "within seconds")
    ray.add_argument("--cpus-per-trial", type=positive_float, metavar="N", help=f"CPUs per training (default {d.cpus_per_trial:g})")
    ray.add_argument("--gpus-per-trial", type=non_negative_float, metavar="N", help=f"GPUs per training (default {d.gpus_per_trial:g})")
    ray.add_argument("--proxy-port", type=int_range(1, 65535), metavar="PORT",
                     help="port on this machine serving the study to the workers over gRPC (default: a free one)")
    p.add_argument("--run-dir", help="run folder (default runs/search-<device>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="resume (or join) the search in RUN_DIR")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true")


def settings_from_args(args: argparse.Namespace):
    from rep_tune.data.scenario import Scenario
    from rep_tune.search.run import SEARCH_FIDELITY, SearchSettings

    timeout = args.timeout
    if timeout is not None and timeout == 0:
        timeout = None
    backend = args.backend
    if backend is None and args.address is not None:
        backend = "ray"
    common = {"n_trials": args.n_trials, "n_workers": args.n_workers, "backend": backend, "address": args.address,
              "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
              "proxy_port": args.proxy_port}
    if args.timeout is not None:
        common["timeout"] = timeout
    if args.confirm is not None:
        common["confirm_top_k"], common["confirm_seeds"] = args.confirm[:2]
        if len(args.confirm) == 3:
            common["confirm_report_seeds"] = args.confirm[2]
    if args.time_limit is not None:
        common["time_limit"] = args.time_limit or None
    if args.confirm_iters is not None:
        common["confirm_iters_per_task"] = args.confirm_iters
    if args.confirm_workers is not None:
        common["confirm_workers"] = args.confirm_workers
    if args.no_confirm:
        common["confirm_seeds"] = 0
    if args.no_progress:
        common["progress"] = False
    if args.resume:
        s = SearchSettings.resume(args.resume, **{k: v for k, v in common.items() if k not in ("timeout", "time_limit")})
        for key in ("timeout", "time_limit"):            # 0 on the command line: None, which replace() would skip
            if key in common:
                setattr(s, key, common[key])
        return s
    if not args.device:
        raise ValueError("--device: expected at least one device profile (e.g. profiles/jetson_orin.yaml), or --resume RUN_DIR")
    overrides = dict(SEARCH_FIDELITY)
    if args.epochs is not None:
        overrides["training.epochs"] = args.epochs
    if args.iters_per_task is not None:
        overrides["training.iters_per_task"] = args.iters_per_task
    overrides.update(set_overrides(args.set))
    given = {
        "devices": list(args.device), "space": args.space, "method": args.method, "backbone": args.backbone,
        "scenario": Scenario.load(args.scenario) if args.scenario else None, "overrides": overrides,
        "deploy_backbone": args.deploy_backbone, "deploy_epochs": args.deploy_epochs,
        "deploy_iters_per_task": args.deploy_iters_per_task, "sampler": args.sampler, "seed": args.seed,
        "pruner": args.pruner, "margin": args.margin, "run_dir": args.run_dir, "export_target": args.export_target,
        "budgets": budget_flags(args),
        **common,
    }
    if args.no_prescreen:
        given["prescreen"] = False
    return SearchSettings(**{k: v for k, v in given.items() if v is not None or k in ("timeout", "time_limit")})


def run(args: argparse.Namespace) -> int:
    """Exit 130 on Ctrl-C, 143 on SIGTERM (both resumable), 75 on a full disk (free space, then --resume)."""
    from rep_tune.search.run import DiskFull, search

    err = os.dup(2)          # the terminal's stderr, whatever a library does to fd 2 meanwhile
    try:
        settings = settings_from_args(args)     # bad budget text stops search() before any work
        threads = set_threads(args.threads)
        print(f"torch threads: {threads}")
        outcome = search(settings)
    except (KeyboardInterrupt, DiskFull) as e:  # one line, no traceback
        from rep_tune.search.loop import trainings_alive

        message = getattr(e, "message", "interrupted before the search started; nothing to resume")
        code = getattr(e, "exit_code", 130)     # SIGTERM: 143; a full disk: 75
        sys.stdout.flush()
        os.write(err, ((f"rep-tune search: {message}" if isinstance(e, DiskFull) else message) + "\n").encode())
        if trainings_alive():
            # trainings in flight are already failed in the study (a resume trains them again); their
            # threads would only stop at their next task boundary, and torch aborts when the
            # interpreter finalises under a running thread: leave now
            os._exit(code)
        return code
    finally:
        os.close(err)
    return 0 if all(outcome.bests.get(t.key) is not None for t in outcome.targets) else 1
