"""How often does a config collapse on some training seeds? Retrain chosen trials of a finished search
(and its paper preset) on many paired seeds at the confirmation's fidelity and scenario.

Why: the confirmation selects on 3 seeds. A config that is good on most seeds and collapses on a
few (``bench_search_eqlat_se_vm``: seed 1's winner, trial 9, 83-84 % validation on its 3 selection
seeds, then 72-74 % on 2 of its 4 report seeds) passes a 3-seed selection with probability
(1 - p)^3 when it collapses with probability p. This benchmark measures p per config, the accuracy
matrix of the collapsed runs (which task is lost) and the paired difference against the paper
preset over all seeds, so that the space or the selection rule can be changed on evidence.

    python benchmarks/bench_seed_stability.py --run benchmarks/results/bench_search_eqlat_se_vm/rep-tune-seed1 \
        --trials 9 4 24 --seeds 12 --out benchmarks/results/seed_stability_vm.jsonl

Each finished (trial, seed) run is one JSONL line, appended as it finishes: a killed benchmark
resumes where it stopped. ``--collect`` prints the table from the file alone.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rep_tune.search.confirm import CONFIRM_FIDELITY, confirmation_scenario, interval, paired  # noqa: E402

REPORT_SIZES = (4, 6)   # report seeds compared: the confirmation's old default and its default now
COLLAPSE_PT = 5.0     # a run this many points below its config's median validation accuracy "collapsed"


def _configs(run: Path, trials: list[int]) -> dict[int, dict]:
    """Trial number -> config dict, read from the run's Optuna study (SQLite, no pickles)."""
    import optuna
    from rep_tune.search.report import records, role_trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{run / 'study.db'}"
    names = optuna.get_all_study_names(storage)
    recs = records(optuna.load_study(study_name=names[0], storage=storage))
    by_number = {r.number: r for r in recs}
    paper = role_trial(recs, "paper")
    out = {}
    for n in ([paper.number] if paper is not None else []) + trials:
        rec = by_number.get(n)
        if rec is None or not rec.config:
            raise SystemExit(f"{run / 'study.db'}: trial {n}: expected a trained trial with a config, found none")
        out[n] = {"config": rec.config, "role": rec.role or ""}
    return out


def measure(args) -> None:
    import yaml

    from rep_tune.config import RepConfig
    from rep_tune.data.scenario import Scenario
    from rep_tune.runtime.learner import train

    run = Path(args.run)
    meta = yaml.safe_load((run / "run.yaml").read_text())
    scenario = confirmation_scenario(Scenario.from_dict(meta["scenario"], source=str(run / "run.yaml")))
    configs = _configs(run, args.trials)
    out = Path(args.out)
    done = {_key(r) for r in _rows(out)}
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    jobs = [(n, s) for s in range(args.seeds) for n in configs
            if _key({"run": str(run), "trial": n, "role": configs[n]["role"], "seed": s}) not in done]
    print(f"{len(jobs)} runs to go ({len(done)} in {out}); fidelity {CONFIRM_FIDELITY}, scenario {scenario.to_dict()}",
          flush=True)
    for i, (n, seed) in enumerate(jobs):
        cfg = RepConfig.from_dict(configs[n]["config"]).replace(**CONFIRM_FIDELITY, **{"training.seed": seed})
        t0 = time.perf_counter()
        res = train(cfg, scenario, progress=False, energy=False, eval_every_task=True, report_test=True)
        row = {"run": str(run), "trial": n, "role": configs[n]["role"], "seed": seed, "val_acc": res.final_acc,
               "test_acc": res.test_acc, "val_images": res.eval_size, "test_images": res.test_size,
               "forgetting": res.forgetting, "final_row": [round(float(v), 4) for v in res.acc_matrix[-1]],
               "diag": [round(float(res.acc_matrix[i, i]), 4) for i in range(len(res.acc_matrix))],
               "blocks_run": [round(r.blocks_run, 3) for r in res.per_task],
               "seconds": round(time.perf_counter() - t0, 2)}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i + 1}/{len(jobs)}] trial {n} seed {seed}: val {100 * row['val_acc']:.1f} test "
              f"{100 * row['test_acc']:.1f} final row {row['final_row']} ({row['seconds']:.0f} s)", flush=True)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _key(row: dict) -> tuple:
    """One run's identity in the JSONL: the paper preset is one config shared by every search of the same
    scenario (its trial 0), so its seeds are pooled; any other trial is named by its search run and number."""
    return ("paper", row["seed"]) if row["role"] == "paper" else (row["run"], row["trial"], row["seed"])


def _label(row: dict) -> str:
    """The config's name in the tables: its run folder's parent and name (``bench_search_`` dropped) and
    trial number; the parent tells apart searches of the same seed in different benchmark runs."""
    if row["role"] == "paper":
        return "paper preset"
    run = Path(row["run"])
    return f"{run.parent.name.removeprefix('bench_search_')}/{run.name} trial {row['trial']}"


def collapsed(runs: dict[int, dict]) -> list[int]:
    """Seeds whose validation accuracy is more than ``COLLAPSE_PT`` points below the median of ``runs`` (seed -> row)."""
    med = statistics.median(r["val_acc"] for r in runs.values())
    return [s for s in sorted(runs) if 100 * (med - runs[s]["val_acc"]) > COLLAPSE_PT]


def _resolved_share(diffs: dict[int, float], r: int) -> str:
    """Share of the ``r``-seed subsets of ``diffs`` (seed -> paired test gain) whose 95 % t-interval
    lies above 0: the chance that a report on ``r`` fresh seeds, drawn from these, resolves the gain."""
    subsets = list(itertools.combinations(sorted(diffs), r))
    if not subsets:
        return "-"
    hits = sum(interval([diffs[s] for s in sub]).low > 0 for sub in subsets)
    return f"{hits / len(subsets):.2f} ({hits}/{len(subsets)})"


def collect(path: Path) -> None:
    rows = _rows(path)
    by: dict[str, dict[int, dict]] = {}
    for r in rows:
        by.setdefault(_label(r), {}).setdefault(r["seed"], r)
    paper = "paper preset" if "paper preset" in by else None
    runs = sorted({r["run"] for r in rows})
    print(f"seed stability at the confirmation fidelity {CONFIRM_FIDELITY}; source {', '.join(runs) or '-'}; "
          f"collapse = validation more than {COLLAPSE_PT:g} points below the config's median over its seeds")
    print("| config | seeds | val % mean [95 % CI] | val % min..max | collapsed | test % mean [95 % CI] "
          "| test vs paper, paired [95 % CI] | P(no collapse in 3 seeds) |")
    print("|---|---|---|---|---|---|---|---|")
    for label in sorted(by, key=lambda k: (k != paper, k)):
        d = by[label]
        val = [d[s]["val_acc"] for s in sorted(d)]
        bad = collapsed(d)
        p = len(bad) / len(val)
        vs = "-"
        if paper is not None and label != paper:
            v = paired({s: d[s]["test_acc"] for s in d}, {s: r["test_acc"] for s, r in by[paper].items()})
            vs = v.text(sign=True) + (" resolved" if v.resolved else " not resolved")
        ti = interval([d[s]["test_acc"] for s in sorted(d)])
        print(f"| {label} | {len(val)} | {interval(val).text()} | {100 * min(val):.1f}..{100 * max(val):.1f} | "
              f"{len(bad)} {bad} | {ti.text()} | {vs} | {(1 - p) ** 3:.2f} |")
    if paper is not None:
        print("how often a report on R fresh seeds would resolve the config's gain over the paper preset: the share "
              "of the R-seed subsets of its paired seeds whose paired test interval lies above 0 (the subsets "
              "overlap, so this is a resampling estimate from these seeds, not independent trials)")
        print("| config | paired seeds | " + " | ".join(f"R = {r}" for r in REPORT_SIZES) + " |")
        print("|---|---|" + "---|" * len(REPORT_SIZES))
        for label in sorted(k for k in by if k != paper):
            diffs = {s: by[label][s]["test_acc"] - by[paper][s]["test_acc"] for s in by[label] if s in by[paper]}
            print(f"| {label} | {len(diffs)} | " + " | ".join(_resolved_share(diffs, r) for r in REPORT_SIZES) + " |")
    for label in sorted(by):
        d = by[label]
        for s in collapsed(d):
            print(f"  collapsed: {label} seed {s}: val {100 * d[s]['val_acc']:.1f}, accuracy per task after the "
                  f"last {d[s]['final_row']}, just after learning each {d[s]['diag']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a finished search's run folder (study.db, run.yaml)")
    ap.add_argument("--trials", type=int, nargs="*", default=[], help="trial numbers besides the paper preset")
    ap.add_argument("--seeds", type=int, default=12, help="training seeds 0..N-1 per config (paired)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/seed_stability_vm.jsonl")
    ap.add_argument("--collect", action="store_true", help="print the table from --out only")
    args = ap.parse_args(argv)
    if not args.collect:
        if not args.run:
            ap.error("--run is required unless --collect")
        measure(args)
    collect(Path(args.out))


if __name__ == "__main__":
    main()
