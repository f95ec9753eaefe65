"""The accuracy signal: how well rep-tune's accuracy resolves REP's knobs (a benchmark, not a test).

Part 1, variants, side by side at two fidelities (full, and the search's), 3 training seeds each
(``training.seed``; the class order and the eval subset stay fixed): baseline, the paper preset,
AToM only, ALD only, ToMe instead of AToM (prompts merge: ``atom.protect_prompts: false``, same
schedule), PLD instead of ALD (``ald.schedule: pld``, theta_min 0.5, gamma 0.001). Reported:
final average accuracy mean ± std and its 95 % t-interval over seeds, forgetting, ms/iteration
and peak memory (``TrainResult.cost``), mean blocks run per iteration (ALD/PLD), and the paper's
two orderings (REP vs ToMe-merging, ALD vs PLD) as per-seed paired differences with 95 % CIs.

Part 2, rank agreement: ``--configs`` configs drawn from the default search space
(``SearchSpace.load("l2p")``, optuna RandomSampler seeded ``--space-seed``), each trained once at
full fidelity and once at every ``--search-iters`` fidelity; the Spearman rank correlation
between each search fidelity's accuracy and full fidelity's (with a bootstrap 95 % CI over configs).

Eval subsets: every run's final evaluation covers ``--eval-big`` images per class of ``--split`` (validation by default, held out of the training pool; or test); the rows
before it (only used for forgetting) cover ``--eval-per-class``. Because the subsets are nested
(``rep_tune.data.tasks.eval_subset``: a smaller one is a prefix of the same seeded permutation),
the final accuracy on every smaller subset (``--subsets``) is read off the same predictions:
seed std and rank correlation per eval-subset size, without retraining. Forgetting is computed
on ``--eval-per-class`` throughout.

Runs are appended to benchmarks/results/bench_accuracy_<host>.jsonl as they finish and reused
on a rerun with the same settings (``--fresh`` retrains). Tables: ..._<host>.txt; rows: .csv.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_accuracy.py --threads 2
    PYTHONPATH=. .venv/bin/python benchmarks/bench_accuracy.py --quick     # plumbing check, minutes
"""
from __future__ import annotations

import argparse
import dataclasses
import csv
import hashlib
import json
import math
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rep_tune.config import preset
from rep_tune.data.scenario import Scenario
from rep_tune.data.tasks import _cap_per_class, eval_subset, load_raw, sampling_error, validation_subset
from rep_tune.runtime import learner
from rep_tune.runtime import metrics

RESULTS = Path(__file__).resolve().parent / "results"
OLD_SURROGATES = ("vit_pico_patch4_32.fmnist", "vit_pico_patch2_28.fmnist")

EQUAL_BLOCKS = "equal-blocks"     # marker: PLD's theta_min/gamma solved for the paper preset's blocks run
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("baseline", "baseline", {}),
    ("paper preset (REP)", "paper", {}),
    ("AToM only", "paper", {"ald.enabled": False}),
    ("ALD only", "paper", {"atom.enabled": False}),
    ("ToMe instead of AToM", "paper", {"atom.protect_prompts": False}),
    ("PLD instead of ALD", "paper", {"ald.schedule": "pld", "ald.theta_min": 0.5, "ald.gamma": 0.001}),
    ("PLD at ALD's blocks", "paper", {"ald.schedule": "pld", EQUAL_BLOCKS: True}),
]
ORDERINGS = [("REP (AToM) >= ToMe merging", "paper preset (REP)", "ToMe instead of AToM"),
             ("ALD >= PLD", "paper preset (REP)", "PLD instead of ALD"),
             ("ALD >= PLD at equal blocks run", "paper preset (REP)", "PLD at ALD's blocks")]


def expected_blocks(cfg) -> float:
    """Blocks run per training iteration in expectation over the run's task (the cost model's count)."""
    from rep_tune.cost import counts
    return float(sum(counts.keep_probs(cfg, iters=cfg.training.iters_per_task or counts.DEFAULT_ITERS_PER_TASK)))


def pld_at_equal_blocks(reference) -> dict[str, Any]:
    """PLD's (theta_min, gamma) whose expected blocks run equal ``reference``'s (ALD).

    DeepSpeed's theta_min 0.5 cannot drop as much as REP's ALD at gamma 0.001 (PLD keeps every
    block with probability >= theta(t), ALD's deep blocks drop to 0.9 theta(t)), so gamma is solved
    (bisection, log scale) at theta_min 0.5, else at 0.25, else at 0.
    """
    target = expected_blocks(reference)
    for theta_min in (0.5, 0.25, 0.0):
        def blocks(g: float) -> float:
            return expected_blocks(reference.replace(**{"ald.schedule": "pld", "ald.theta_min": theta_min,
                                                        "ald.gamma": g}))
        lo, hi = 1e-6, 10.0
        if blocks(hi) > target:            # even the fastest decay keeps more blocks: lower theta_min
            continue
        for _ in range(80):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if blocks(mid) > target else (lo, mid)
        return {"ald.schedule": "pld", "ald.theta_min": theta_min, "ald.gamma": round(hi, 8)}
    raise ValueError(f"PLD cannot run as few blocks as {target:.2f}")


# ---- statistics ---------------------------------------------------------------------------------
def mean_std_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std, and the half-width of the 95 % t-interval of the mean (``search.confirm.interval``)."""
    from rep_tune.search.confirm import interval
    iv = interval(values)
    s = statistics.stdev(values) if len(values) > 1 else float("nan")
    return iv.mean, s, iv.half


def spearman(a: list[float], b: list[float], boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho of paired values and a bootstrap (over pairs) 95 % interval."""
    from scipy.stats import spearmanr
    rho = float(spearmanr(a, b).statistic)
    rng = np.random.RandomState(seed)
    a_, b_ = np.asarray(a), np.asarray(b)
    draws = []
    for _ in range(boot):
        i = rng.randint(0, len(a_), len(a_))
        if len(set(a_[i])) > 1 and len(set(b_[i])) > 1:
            draws.append(float(spearmanr(a_[i], b_[i]).statistic))
    lo, hi = (np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan")))
    return rho, float(lo), float(hi)


# ---- per-sample predictions of the final evaluation ------------------------------------------------
@dataclass
class EvalPlan:
    """Which test images each evaluation call covers: the final row all of them, earlier rows fewer."""

    n_tasks: int
    early_ids: set[int]                # ids of the --eval-per-class subset
    calls: int = 0
    final: list[tuple[np.ndarray, np.ndarray]] | None = None   # (ids, correct) per task, final row


PLAN: EvalPlan | None = None


@torch.no_grad()
def recording_evaluate(model, split, ts, batch_size, device, cache) -> float:
    """``rep_tune.runtime.learner._evaluate`` (same forward, same query path), keeping which samples it got right.

    Rows before the last evaluate only the ``early_ids`` part of the split (forgetting needs no
    more); the last row evaluates the whole split and stores (ids, correct) for the subset analysis.
    """
    plan = PLAN
    row_is_final = plan.calls >= plan.n_tasks * (plan.n_tasks - 1) // 2
    plan.calls += 1
    pos = torch.arange(len(split))
    if not row_is_final:
        keep = torch.tensor([int(i) in plan.early_ids for i in split.ids.tolist()], dtype=torch.bool)
        pos = pos[keep]
    model.eval()
    ids_all, ok_all = [], []
    for start in range(0, len(pos), batch_size):
        x, y, ids = split.batch(pos[start:start + batch_size])
        x, y = x.to(device, non_blocking=True), y.to(device)
        q = model.query(x, ids=ids, dataset_key=ts.key, cache=cache) if cache is not None else model.query(x)
        ok = (model(x, q).logits.argmax(-1) == y).cpu()
        ids_all.append(ids.cpu().numpy())
        ok_all.append(ok.numpy())
    ids_np = np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64)
    ok_np = np.concatenate(ok_all) if ok_all else np.zeros(0, bool)
    if row_is_final:
        plan.final = (plan.final or []) + [(ids_np, ok_np)]
    return float(ok_np.mean()) if len(ok_np) else 0.0


# ---- one training run ---------------------------------------------------------------------------
@dataclass
class Setup:
    backbone: str
    surrogate: str
    scenario: Scenario                  # eval_per_class = eval_big
    eval_per_class: int
    subsets: list[int]
    subset_ids: dict[int, set[int]]     # per-class size -> test ids of that subset
    class_order: str = "fixed"          # fixed: every run on scenario.class_order_seed; per-seed: seed s -> order s

    def scenario_for(self, seed: int) -> Scenario:
        """The scenario a run of training seed ``seed`` trains on (its class order, see --class-order)."""
        if self.class_order == "per-seed":
            return dataclasses.replace(self.scenario, class_order_seed=seed)
        return self.scenario


def make_setup(args) -> Setup:
    """The scenario and its nested eval subsets, on ``args.split``: the validation split held out of
    the training pool (what the search selects on; default) or the official test set."""
    val = args.split == "val"
    sc = Scenario(dataset=args.dataset, n_tasks=args.tasks, eval_per_class=args.eval_big,
                  max_per_class=args.max_per_class, val_per_class=args.eval_big if val else None,
                  eval_split=args.split)
    raw = load_raw(sc)
    sizes = sorted(set(args.subsets) | {args.eval_per_class, args.eval_big})
    # nested: the subset of n per class is a prefix of the same seeded per-class permutations
    if val:
        pool = raw.train.take(_cap_per_class(raw.train.labels, sc.max_per_class))
        subset_ids = {n: {int(pool.ids[p]) for p in validation_subset(pool.labels, n, sc.seed)} for n in sizes}
    else:
        subset_ids = {n: {int(raw.test.ids[p]) for p in eval_subset(raw.test.labels, n, sc.seed)} for n in sizes}
    return Setup(args.backbone, args.surrogate, sc, args.eval_per_class, sizes, subset_ids, args.class_order)


def fidelity_overrides(epochs: int, iters: int | None) -> dict[str, Any]:
    return {"training.epochs": epochs, "training.iters_per_task": iters}


def key_of(cfg_dict: dict, setup: Setup, scenario: Scenario) -> str:
    blob = json.dumps({"config": cfg_dict, "scenario": scenario.to_dict(), "early": setup.eval_per_class},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_one(cfg, setup: Setup, scenario: Scenario) -> dict[str, Any]:
    """Train ``cfg``; accuracy on every eval subset, forgetting on the --eval-per-class one, cost."""
    global PLAN
    PLAN = EvalPlan(setup.scenario.n_tasks, setup.subset_ids[setup.eval_per_class])
    t0 = time.perf_counter()
    res = learner.train(cfg, scenario, progress=False, evaluate=recording_evaluate)
    wall = time.perf_counter() - t0
    final = PLAN.final
    acc_at, n_eval = {}, {}
    for n, ids in setup.subset_ids.items():
        masks = [np.fromiter((int(i) in ids for i in tid), bool, len(tid)) for tid, _ in final]
        acc_at[n] = float(np.mean([ok[m].mean() if m.any() else np.nan for (_, ok), m in zip(final, masks)]))
        n_eval[n] = int(sum(m.sum() for m in masks))
    matrix = res.acc_matrix.copy()          # final row on the --eval-per-class subset, like the rows before it
    ids = setup.subset_ids[setup.eval_per_class]
    matrix[-1] = [ok[np.fromiter((int(i) in ids for i in tid), bool, len(tid))].mean() for tid, ok in final]
    c = res.cost
    return {
        "final_acc": res.final_acc,                                 # on the whole --eval-big subset
        "acc_at": {str(n): acc_at[n] for n in setup.subsets},
        "eval_n": {str(n): n_eval[n] for n in setup.subsets},
        "forgetting": metrics.forgetting(matrix),
        "avg_incremental_acc": metrics.average_incremental_accuracy(matrix),
        "ms_per_iter": c.latency_ms.value if c.latency_ms else float("nan"),
        "peak_mib": c.peak_memory_mb.value if c.peak_memory_mb else float("nan"),
        "blocks_run": float(c.extras.get("blocks_run", float("nan"))),
        "iterations": res.iterations,
        "seconds": wall,
        "train_seconds": sum(r.train_seconds for r in res.per_task),
        "eval_seconds": sum(r.eval_seconds for r in res.per_task),
    }


class Store:
    """Finished runs, appended as JSON lines; a rerun with the same key reuses them."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists() and not fresh:
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row
        elif fresh and path.exists():
            path.unlink()

    def get_or_run(self, key: str, meta: dict, cfg, setup: Setup, bar) -> dict:
        scenario = setup.scenario_for(meta["seed"])
        if key in self.rows:
            bar.update(1)
            return self.rows[key]
        bar.set_description(f"{meta['part']} {meta['label'][:24]} {meta['fidelity']} seed {meta['seed']}")
        row = {"key": key, **meta, "class_order_seed": scenario.class_order_seed, **run_one(cfg, setup, scenario)}
        self.rows[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        bar.update(1)
        bar.write(f"  {meta['part']:8s} {meta['label']:24s} {meta['fidelity']:>10s} seed {meta['seed']}: "
                  f"acc {100 * row['final_acc']:.2f} %  forgetting {100 * row['forgetting']:.2f}  "
                  f"{row['ms_per_iter']:.0f} ms/it  {row['seconds']:.0f} s")
        return row


# ---- configs --------------------------------------------------------------------------------------
def variant_config(name: str, over: dict, setup: Setup, fid: dict, seed: int, horizon: int | None = None):
    """The variant's config; ``horizon`` lays ALD/PLD's keep schedule over the deployment's task length."""
    base = {"training.seed": seed, **fid}
    if name != "baseline":
        base["selection.surrogate"] = setup.surrogate
    if horizon:
        base["ald.horizon"] = horizon
    cfg = preset(name, "l2p", setup.backbone, **base)
    if over.get(EQUAL_BLOCKS):
        over = {**{k: v for k, v in over.items() if k != EQUAL_BLOCKS}, **pld_at_equal_blocks(cfg)}
    return cfg.replace(**over) if over else cfg


def deployment_horizon(device: str | None, backbone: str) -> int | None:
    """Iterations per task of ``device``'s deployment (``search.targets.ald_horizon``); None for none."""
    if not device:
        return None
    from rep_tune.search.targets import ald_horizon, load_targets
    return ald_horizon(load_targets([device]), preset("paper", "l2p", backbone))


def space_configs(setup: Setup, n: int, seed: int) -> list[tuple[str, Any, dict]]:
    """``n`` configs of the default L2P space, drawn with optuna's seeded RandomSampler.

    The space's embedded surrogate choice stands for the surrogate of this benchmark's backbone.
    """
    import optuna
    from rep_tune.search.space import SearchSpace
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.load("l2p")
    if "selection.surrogate" in space.params:
        p = space.params["selection.surrogate"]
        p.choices = [setup.surrogate if c in OLD_SURROGATES else c for c in p.choices]
    base = space.base_config(setup.backbone, **{"selection.surrogate": setup.surrogate})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for i in range(n):
        trial = study.ask()
        cfg = space.sample(trial, base)
        study.tell(trial, 0.0)
        out.append((f"space#{i:02d}", cfg, dict(trial.params)))
    return out


# ---- reporting -------------------------------------------------------------------------------------
def fmt_pm(vals: list[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s, ci = mean_std_ci([scale * v for v in vals])
    return f"{m:.{digits}f} ± {s:.{digits}f} [±{ci:.{digits}f}]"


def variant_table(rows: list[dict], fidelities: list[str], setup: Setup, out: list[str]) -> None:
    for fid in fidelities:
        sel = [r for r in rows if r["part"] == "variant" and r["fidelity"] == fid]
        if not sel:
            continue
        n_eval = sel[0]["eval_n"][str(max(setup.subsets))]
        mean_acc = statistics.fmean(r["final_acc"] for r in sel)
        out.append(f"\n### variants at fidelity {fid} ({sel[0]['fidelity_desc']}), seeds "
                   f"{sorted({r['seed'] for r in sel})}")
        out.append(f"final accuracy on {n_eval:,} {setup.scenario.eval_split} images (sampling error ±"
                   f"{100 * sampling_error(mean_acc, n_eval):.2f} points at {100 * mean_acc:.1f} %); "
                   f"mean ± std [95 % CI half-width] over seeds")
        out.append("| variant | final acc % | forgetting (pts) | ms/iter | peak MiB | blocks run | train s | eval s |")
        out.append("|---|---|---|---|---|---|---|---|")
        for label, _, _ in VARIANTS:
            rs = [r for r in sel if r["label"] == label]
            if not rs:
                continue
            out.append(f"| {label} | {fmt_pm([r['final_acc'] for r in rs])} | {fmt_pm([r['forgetting'] for r in rs])} "
                       f"| {statistics.fmean(r['ms_per_iter'] for r in rs):.0f} | "
                       f"{statistics.fmean(r['peak_mib'] for r in rs):.1f} | "
                       f"{statistics.fmean(r['blocks_run'] for r in rs):.2f} | "
                       f"{statistics.fmean(r['train_seconds'] for r in rs):.0f} | "
                       f"{statistics.fmean(r['eval_seconds'] for r in rs):.0f} |")
        out.append("seed std of the final accuracy by eval-subset size (points; pooled over variants = "
                   "sqrt(mean of per-variant variances)):")
        line = []
        for n in setup.subsets:
            var = [statistics.variance([100 * r["acc_at"][str(n)] for r in sel if r["label"] == label])
                   for label, _, _ in VARIANTS if sum(r["label"] == label for r in sel) > 1]
            if var:
                line.append(f"{n}/class ({sel[0]['eval_n'][str(n)]:,} images): {math.sqrt(statistics.fmean(var)):.2f}")
        out.append("  " + "; ".join(line))
        for title, a, b in ORDERINGS:
            ra = {r["seed"]: r for r in sel if r["label"] == a}
            rb = {r["seed"]: r for r in sel if r["label"] == b}
            seeds = sorted(set(ra) & set(rb))
            if not seeds:
                continue
            d = [100 * (ra[s]["final_acc"] - rb[s]["final_acc"]) for s in seeds]
            m, s, ci = mean_std_ci(d)
            ms = statistics.fmean(ra[s]["ms_per_iter"] for s in seeds) / statistics.fmean(rb[s]["ms_per_iter"] for s in seeds)
            blocks = (statistics.fmean(ra[s]["blocks_run"] for s in seeds), statistics.fmean(rb[s]["blocks_run"] for s in seeds))
            verdict = ("holds (CI above 0)" if m - ci > 0 else "reversed (CI below 0)" if m + ci < 0
                       else "not resolved (CI spans 0)")
            out.append(f"ordering {title}: {a} - {b} = {m:+.2f} points, 95 % CI [{m - ci:+.2f}, {m + ci:+.2f}] "
                       f"(paired over {len(seeds)} seeds) -> {verdict}; time ratio {ms:.2f}x, blocks run "
                       f"{blocks[0]:.2f} vs {blocks[1]:.2f}")


def rank_table(rows: list[dict], search_fids: list[str], setup: Setup, out: list[str]) -> dict:
    full = {r["label"]: r for r in rows if r["part"] == "rank" and r["fidelity"] == "full"}
    summary = {}
    if len(full) < 3:
        return summary
    out.append(f"\n### rank agreement over {len(full)} configs of the default space (Spearman rho, bootstrap 95 % CI)")
    big = str(max(setup.subsets))
    out.append(f"truth: full fidelity on {full[next(iter(full))]['eval_n'][big]:,} {setup.scenario.eval_split} images; columns: the "
               f"search fidelity's accuracy on an eval subset of that size")
    out.append("| search fidelity | " + " | ".join(f"{n}/class" for n in setup.subsets) + " | train s/config |")
    out.append("|---|" + "---|" * len(setup.subsets) + "---|")
    for fid in search_fids:
        srch = {r["label"]: r for r in rows if r["part"] == "rank" and r["fidelity"] == fid}
        labels = sorted(set(full) & set(srch))
        if len(labels) < 3:
            continue
        cells = []
        for n in setup.subsets:
            rho, lo, hi = spearman([srch[k]["acc_at"][str(n)] for k in labels], [full[k]["acc_at"][big] for k in labels])
            summary[(fid, n)] = rho
            cells.append(f"{rho:.2f} [{lo:.2f}, {hi:.2f}]")
        secs = statistics.fmean(srch[k]["seconds"] for k in labels)
        out.append(f"| {fid} ({srch[labels[0]]['fidelity_desc']}) | " + " | ".join(cells) + f" | {secs:.0f} |")
    rho_ff, lo, hi = (float("nan"),) * 3
    if len(setup.subsets) > 1:
        small = str(setup.eval_per_class)
        labels = sorted(full)
        rho_ff, lo, hi = spearman([full[k]["acc_at"][small] for k in labels], [full[k]["acc_at"][big] for k in labels])
        out.append(f"(full fidelity on {setup.eval_per_class}/class vs on {big}/class: rho {rho_ff:.2f} [{lo:.2f}, {hi:.2f}]: "
                   f"the eval subset's own share of the disagreement)")
    out.append("configs (full-fidelity accuracy on the big subset, % ; search-fidelity accuracies):")
    for k in sorted(full, key=lambda k: -full[k]["final_acc"]):
        s = "; ".join(f"{fid} {100 * r['final_acc']:.1f}" for fid in search_fids
                      for r in rows if r["part"] == "rank" and r["fidelity"] == fid and r["label"] == k)
        out.append(f"  {k}: full {100 * full[k]['final_acc']:.1f} ({full[k]['ms_per_iter']:.0f} ms/it); {s}; "
                   f"{full[k]['params']}")
    return summary


def write_csv(rows: list[dict], path: Path, subsets: list[int]) -> None:
    cols = ["part", "label", "fidelity", "fidelity_desc", "seed", "final_acc", "forgetting", "avg_incremental_acc",
            "ms_per_iter", "peak_mib", "blocks_run", "iterations", "seconds", "train_seconds", "eval_seconds"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"acc_{n}pc" for n in subsets] + [f"eval_n_{n}pc" for n in subsets] + ["params"])
        for r in rows:
            w.writerow([r.get(c) for c in cols] + [r["acc_at"].get(str(n)) for n in subsets]
                       + [r["eval_n"].get(str(n)) for n in subsets] + [json.dumps(r.get("params", {}))])


# ---- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from rep_tune.progress import ProgressBar
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_micro_patch2_28.fmnist")
    p.add_argument("--surrogate", default="vit_pico_patch2_28.fmnist")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--max-per-class", type=int, default=None, help="cap training images per class")
    p.add_argument("--full-epochs", type=int, default=1)
    p.add_argument("--full-iters", type=int, default=64, help="iterations per task at full fidelity (0 = no cap)")
    p.add_argument("--search-iters", type=int, nargs="+", default=[12, 24],
                   help="iterations per task of the search fidelities compared (1 epoch cap)")
    p.add_argument("--variant-search-iters", type=int, default=None,
                   help="the search fidelity part 1 runs at (default: the first --search-iters; 0 = full fidelity only)")
    p.add_argument("--eval-per-class", type=int, default=200, help="test images per class of the rows before the last")
    p.add_argument("--eval-big", type=int, default=500, help="test images per class of the final evaluation")
    p.add_argument("--subsets", type=int, nargs="+", default=[50, 100, 200, 500],
                   help="per-class eval-subset sizes the final accuracy is also read on")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", default=None,
                   help="labels of the variants to run (default: all); e.g. 'paper preset (REP)'")
    p.add_argument("--deploy-device", default="jetson_orin",
                   help="ALD/PLD keep schedules are laid over this profile's deployed task length (ald.horizon), "
                        "as the search trains its proxy; 'none' = the run's own length")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="what runs are scored on: 'val' (held out of the training pool, per class, seeded: what "
                        "the search selects on; default) or 'test' (the official test set)")
    p.add_argument("--configs", type=int, default=12, help="configs of the default space for the rank correlation")
    p.add_argument("--space-seed", type=int, default=0)
    p.add_argument("--parts", nargs="+", default=["variants", "rank"], choices=["variants", "rank"])
    p.add_argument("--class-order", choices=("fixed", "per-seed"), default="fixed",
                   help="fixed: every run on class order seed 0 (the seeds vary init, batch order and drop "
                        "draws); per-seed: training seed s also draws class order s")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default=socket.gethostname(), help="results file suffix (default: the host name)")
    p.add_argument("--fresh", action="store_true", help="retrain runs already in the results file")
    p.add_argument("--quick", action="store_true",
                   help="plumbing check: 2 tasks, 8 images per class, 2 seeds, 3 configs, tiny fidelities")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.max_per_class, args.seeds, args.configs = 2, 8, args.seeds[:2], 3
        args.full_iters, args.search_iters, args.eval_per_class, args.eval_big = 4, [2], 5, 10
        args.subsets = [5, 10]
        args.tag += "_quick"
    args.subsets = sorted(set(args.subsets) | {args.eval_per_class, args.eval_big})
    args.subsets = [n for n in args.subsets if n <= args.eval_big]
    torch.set_num_threads(args.threads)
    setup = make_setup(args)
    full_iters = args.full_iters or None
    fids = {"full": (fidelity_overrides(args.full_epochs, full_iters),
                     f"{args.full_epochs} epoch(s), {full_iters or 'all'} it/task")}
    for it in args.search_iters:
        fids[f"search{it}"] = (fidelity_overrides(1, it), f"1 epoch, {it} it/task")
    vfid = None if args.variant_search_iters == 0 else f"search{args.variant_search_iters or args.search_iters[0]}"
    if vfid is not None and vfid not in fids:
        fids[vfid] = (fidelity_overrides(1, args.variant_search_iters), f"1 epoch, {args.variant_search_iters} it/task")

    horizon = deployment_horizon(None if args.deploy_device == "none" else args.deploy_device, args.backbone)
    variants = [v for v in VARIANTS if args.variants is None or v[0] in args.variants]
    jobs = []     # (meta, cfg)
    if "variants" in args.parts:
        for fid in ("full", vfid) if vfid else ("full",):
            for seed in args.seeds:
                for label, name, over in variants:
                    cfg = variant_config(name, over, setup, fids[fid][0], seed, horizon)
                    jobs.append(({"part": "variant", "label": label, "fidelity": fid, "fidelity_desc": fids[fid][1],
                                  "seed": seed}, cfg))
    if "rank" in args.parts:
        for label, cfg, params in space_configs(setup, args.configs, args.space_seed):
            for fid in ["full"] + [f"search{it}" for it in args.search_iters]:
                c = cfg.replace(**fids[fid][0])
                jobs.append(({"part": "rank", "label": label, "fidelity": fid, "fidelity_desc": fids[fid][1],
                              "seed": c.training.seed, "params": params}, c))
    stem = RESULTS / f"bench_accuracy_{args.tag}"
    store = Store(stem.with_suffix(".jsonl"), args.fresh)
    t0 = time.time()
    rows = []
    with ProgressBar(len(jobs), "runs", unit="runs") as bar:
        for meta, cfg in jobs:
            rows.append(store.get_or_run(key_of(cfg.to_dict(), setup, setup.scenario_for(meta["seed"])), meta, cfg,
                                         setup, bar))
    out = [f"# bench_accuracy ({args.tag}): backbone {args.backbone}, surrogate {args.surrogate}, "
           f"{args.dataset} in {args.tasks} tasks (class order "
           + (f"seed {setup.scenario.class_order_seed}" if args.class_order == "fixed" else "seed = training seed")
           + "), "
           f"{torch.get_num_threads()} torch thread(s); {len(jobs)} runs, {time.time() - t0:.0f} s this invocation"]
    out.append(f"fidelities: " + "; ".join(f"{k} = {v[1]}" for k, v in fids.items()))
    out.append(f"ALD/PLD keep schedule: " + (f"laid over {horizon} iterations per task (ald.horizon: the "
               f"{args.deploy_device} deployment's task length, as the search trains its proxy)" if horizon
               else "over the run's own iterations"))
    for label, _, over in variants:
        cfg = next((c for m, c in jobs if m["label"] == label), None)
        if over.get(EQUAL_BLOCKS) and cfg is not None:
            out.append(f"{label}: theta_min {cfg.ald.theta_min}, gamma {cfg.ald.gamma:.6g} (solved for the paper "
                       f"preset's expected blocks run, {expected_blocks(cfg):.2f})")
    out.append(f"eval split: {args.split} ({'held out of the training pool, seeded per class' if args.split == 'val' else 'the official test set'})")
    out.append(f"eval: final row on {args.eval_big}/class, earlier rows (forgetting) on {args.eval_per_class}/class; "
               f"accuracy also read on nested subsets {args.subsets} per class")
    variant_table(rows, ["full", vfid] if vfid else ["full"], setup, out)
    rank_table(rows, [f"search{it}" for it in args.search_iters], setup, out)
    text = "\n".join(out)
    print(text)
    stem.with_suffix(".txt").write_text(text + "\n")
    write_csv(rows, stem.with_suffix(".csv"), args.subsets)
    print(f"\nwrote {stem.with_suffix('.txt')}, .csv, .jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
