"""Throughput of the confirmation's retrainings: one run at a time on every core, or several at once.

Why: the confirmation retrains configs one after another with torch's intra-op threads on every
core (2 here). Its runs are small (a 196-token ViT, batch 16): intra-op parallelism over 2 cores
may leave much of the second core idle, and two runs side by side at 1 thread each may finish
the same work sooner. The report seed-by-seed rule turns every second saved into report seeds,
and report seeds are what resolves a gain (``rep_tune.search.confirm``).

Arms, each training the same ``--runs`` (config, seed) pairs at the confirmation's fidelity and
scenario, in the order sequential, threads, processes, repeated ``--rounds`` times interleaved
(the host's speed drifts within minutes, so the arms alternate rather than run in blocks):

    sequential   one run at a time, torch threads = --cores
    threads      --cores Python threads in this process, 1 torch thread each (``confirm.retrain``'s
                 ``workers``)
    processes    --cores spawned processes, 1 torch thread each

Per arm: wall seconds for all runs, runs per minute, its speed-up over sequential in the same
round, and whether each run's accuracy equals the sequential arm's (threads change the order of
floating-point reductions, so equal is not expected; the table says how far apart).

    python benchmarks/bench_parallel_runs.py --run benchmarks/results/bench_search_eqlat_amd_vm/rep-tune-seed0 \\
        --trials 18 --runs 4 --rounds 2 | tee benchmarks/results/parallel_runs_vm.txt
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _setup(run: str, trials: list[int]):
    import yaml

    from rep_tune.data.scenario import Scenario
    from rep_tune.search.confirm import confirmation_scenario
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_seed_stability import _configs
    meta = yaml.safe_load((Path(run) / "run.yaml").read_text())
    scenario = confirmation_scenario(Scenario.from_dict(meta["scenario"], source=str(Path(run) / "run.yaml")))
    return scenario, _configs(Path(run), trials)


def _train(run: str, trials: list[int], trial: int, seed: int, threads: int | None) -> tuple[float, float, float]:
    """One confirmation run: (validation accuracy, test accuracy, wall seconds)."""
    import torch

    from rep_tune.config import RepConfig
    from rep_tune.runtime.learner import train
    from rep_tune.search.confirm import CONFIRM_FIDELITY
    if threads is not None:
        torch.set_num_threads(threads)
    scenario, configs = _CACHE.get(run) or _CACHE.setdefault(run, _setup(run, trials))
    cfg = RepConfig.from_dict(configs[trial]["config"]).replace(**CONFIRM_FIDELITY, **{"training.seed": seed})
    t0 = time.perf_counter()
    res = train(cfg, scenario, progress=False, energy=False, eval_every_task=False, report_test=True)
    return float(res.final_acc), float(res.test_acc), time.perf_counter() - t0


_CACHE: dict = {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished search's run folder (run.yaml, study.db)")
    ap.add_argument("--trials", type=int, nargs="*", default=[], help="trials besides the paper preset")
    ap.add_argument("--runs", type=int, default=4, help="runs per arm (config, seed pairs)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args(argv)
    import torch
    scenario, configs = _setup(args.run, args.trials)
    _CACHE[args.run] = (scenario, configs)
    numbers = list(configs)
    jobs = [(numbers[i % len(numbers)], i // len(numbers)) for i in range(args.runs)]
    print(f"# {args.runs} runs per arm (trial, seed): {jobs}; {args.cores} cores; torch {torch.__version__}", flush=True)
    results: dict[str, list] = {}
    walls: dict[str, list[float]] = {"sequential": [], "threads": [], "processes": []}
    _train(args.run, args.trials, jobs[0][0], 99, args.cores)          # warm-up: data, weights, kernels
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(args.cores, mp_context=ctx) as procs:
        list(procs.map(_train, *zip(*[(args.run, args.trials, jobs[0][0], 99, 1)] * args.cores)))   # warm-up
        for rnd in range(args.rounds):
            t0 = time.perf_counter()
            results["sequential"] = [_train(args.run, args.trials, n, s, args.cores) for n, s in jobs]
            walls["sequential"].append(time.perf_counter() - t0)
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(args.cores) as pool:
                results["threads"] = list(pool.map(lambda j: _train(args.run, args.trials, j[0], j[1], None), jobs))
            walls["threads"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            results["processes"] = list(procs.map(_train, *zip(*[(args.run, args.trials, n, s, 1) for n, s in jobs])))
            walls["processes"].append(time.perf_counter() - t0)
            print(f"round {rnd}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in walls.items()), flush=True)
    print(f"\n{'arm':<11} {'wall s (per round)':>24} {'runs/min':>9} {'speed-up vs sequential':>23} "
          f"{'max |val - sequential| pt':>26} {'max |test - sequential| pt':>27}")
    seq = results["sequential"]
    for arm, w in walls.items():
        ups = [a / b for a, b in zip(walls["sequential"], w)]
        dv = max(abs(a[0] - b[0]) for a, b in zip(results[arm], seq)) * 100
        dt = max(abs(a[1] - b[1]) for a, b in zip(results[arm], seq)) * 100
        print(f"{arm:<11} {' '.join(f'{x:.1f}' for x in w):>24} {60 * args.runs / statistics.fmean(w):>9.2f} "
              f"{' '.join(f'{u:.2f}x' for u in ups):>23} {dv:>26.2f} {dt:>27.2f}")
    print("\nper run (trial, seed): val %, test %, run wall s")
    for arm in walls:
        print(f"{arm:<11} " + "; ".join(f"{n}/{s}: {100 * v:.1f} {100 * t:.1f} {x:.0f}s"
                                         for (n, s), (v, t, x) in zip(jobs, results[arm])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
