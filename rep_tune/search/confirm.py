"""Confirmation: retrain the search's top candidates and the paper preset with paired seeds, in two stages.

The best of N noisy trials overstates its accuracy (winner's curse: about sigma times the expected
maximum of N standard normals), and the search scores at a reduced fidelity. Retraining the top
candidates on a few seeds and reporting the winner's accuracy *on those same seeds* still carries
the curse: a training seed's luck moves validation and test accuracy together, so the candidate
that wins on validation is, on average, one whose seeds were lucky on test too (measured on a fake
trainer in ``tests/test_confirm.py``). So the stage selects and reports on disjoint seeds:

1. candidates = per device, the ``top_k`` feasible trained configs by validation accuracy (the
   search's score), plus the paper preset (the reference every answer is compared with);
2. **select**: each is retrained on the selection seeds 0..S-1 at the confirmation fidelity
   (``CONFIRM_FIDELITY``), paired (seed s gives every config the same batch order and prompt
   initialisation draw), and scored on the validation split only; per device, the confirmed best
   is the feasible candidate with the highest ``selection_score``: its paired validation gain over
   the paper preset minus one standard error of that gain (the preset scores 0). A candidate that
   swings across seeds pays for its spread, and the preset stands unless a candidate beats it by
   more than its own seed noise: the highest *mean* chose configs (``prompt.top_k: 1``) whose
   report seeds then swung by 3-4 points (``benchmarks/results/bench_search_eqlat_vm.txt``);
3. **report**: each device's best and the paper preset are retrained on R fresh seeds S..S+R-1,
   paired, and scored on the test subset: the best's test accuracy with a 95 % t-interval over
   those seeds, and its paired per-seed difference against the paper preset with a 95 %
   t-interval, "resolved" when that interval excludes 0. The selection's luck does not reach
   these seeds, so the reported figures are unbiased for the chosen config.

With a time limit (``rep-tune search --time-limit``, default 20 minutes for the whole command), the
report runs seed by seed while the next seed can end before the limit (``another_report_seed``,
``ReportTimer``): fewer than R seeds when R would overrun it (never below ``MIN_REPORT_SEEDS``), up
to ``REPORT_GROWTH`` x R when time is left, for a narrower paired interval. The rule reads the clock
(run times), never a report result; ``report_seeds_planned`` in ``best_<device>.yaml`` says what it did.
The selection is bounded too (``SelectionTimer``): a selection seed past ``MIN_SELECTION_SEEDS`` starts
only while its runs and the report's floor can still end before the limit, so a slow host gives up a
selection seed before it overruns the limit (``selection_seeds_planned`` says so).

Both stages run their retrainings side by side (``workers``, ``search.parallel``: 2 on 2 cores at 1
torch thread each, by default); the timed report then goes in rounds of ``seeds_per_round`` seeds
(one, for the choice and the paper preset on 2 workers), each planned on the last round's wall time.

``report_seeds=0`` reuses the selection seeds for the report (one stage; cheaper, biased upwards,
and said so wherever it is printed or written). The test set is touched only to report; it never
chooses. Intervals are over training seeds on fixed images: the test subset's own sampling error
(binomial) is stated beside them. Pure arithmetic (``interval``, ``paired``) is separate from the
trainings so that it can be tested on a fake trainer with known noise.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.schema import atomic_write_text
from rep_tune.search.space import config_hash

# retraining fidelity: 1 epoch of at most 32 iterations per task (the search scores at 12; the
# embedded preset's own schedule is 64): the default search, confirmation included, fits 20 minutes
# on 2 CPU cores (README, benchmarks/results)
CONFIRM_FIDELITY = {"training.epochs": 1, "training.iters_per_task": 32}
CONFIRM_TEST_PER_CLASS = 100      # test images per class the confirmed answer is reported on
# top K candidates per device besides the paper preset; S selection seeds each (3: a standard error
# from 2 seeds is itself a coin toss); R fresh report seeds for each winner and the paper preset.
# (2 + 1) x 3 + 2 x 6 = 21 runs by default. Why 2 and 6, not 3 and 4: the report's paired interval
# is what turns a real gain into "resolved", and it was too wide at 4 seeds. Seed 0's pick of
# bench_search_eqlat_se_vm gains +2.64 [+1.10, +4.17] over 8 paired seeds (resolved; per-seed sd of
# the gain 1.8 points) but read +2.50 [-0.01, +5.01] on its 4 report seeds: the t-interval's half
# width is 2.9 points at 4 seeds, 1.9 at 6. The third candidate by search score never won the
# selection in those 3 searches (its mean validation gain over the preset: -4.6, -13.3 and -0.1
# points, against +2.1, +3.5 and +2.5 for the choice), so its 3 runs buy 2 of the 4 extra report runs
# (benchmarks/results/seed_stability_vm.txt, bench_search_eqlat_se_vm/*/confirm.csv)
DEFAULT_TOP_K, DEFAULT_SEEDS, DEFAULT_REPORT_SEEDS = 2, 3, 6
# the time limit (``another_report_seed``): the report never runs on fewer seeds than this (a t-interval
# on 2 seeds has a quantile of 12.7), and on at most this many times R when time is left. Before each
# seed it plans REPORT_SLACK times the last report seed's wall time (before the first: the reported
# configs' selection runs plus their test evaluation, ``first_round``), and keeps REPORT_RESERVE_S for
# the files written after it.
# Seed by seed, not a count fixed up front: this host's speed drifts 1.2-1.46x within minutes, and a
# count fixed from the selection's run times overran 20 minutes by 254 s when the report's runs took
# 1.4x their selection runs (benchmarks/results/search_default_tl_vm.txt). Why grow: a gain of 1.2
# points at a per-seed sd of 1.7 needs about 11 paired seeds to resolve (seed_stability_vm.txt)
MIN_REPORT_SEEDS, REPORT_GROWTH, REPORT_SLACK, REPORT_RESERVE_S = 3, 2, 1.05, 15.0
# the time limit (``SelectionTimer``): the selection always runs this many seeds (a standard error needs 2);
# a later selection seed starts only while its runs and then the report's floor can end before the limit
MIN_SELECTION_SEEDS = 2
# the choice maximises the paired validation gain over the paper preset minus this many standard errors
SELECT_SE = 1.0
# a report seed on which the choice's test accuracy falls this many points below the paper preset's is
# flagged: the prompt.top_k 1 pick of bench_search_eqlat_se_vm lost one early task on 2 of 8 seeds
# (-5 to -7 points), which a mean and its interval alone do not show (benchmarks/results/seed_stability_vm.txt)
LOSS_FLAG_PT = 5.0
SELECTION_RULE = (f"highest paired validation gain over the paper preset minus {SELECT_SE:g} standard error "
                  f"(the preset scores 0 and wins ties)")


# ---- arithmetic ---------------------------------------------------------------------------------
def t_quantile(n: int) -> float:
    """Two-sided 95 % Student t quantile for the mean of n samples (n - 1 degrees of freedom)."""
    if n < 2:
        return float("nan")
    from scipy.stats import t
    return float(t.ppf(0.975, n - 1))


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and the 95 % t-interval of that mean (NaN half-width for n < 2)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (a difference that is a result, not seed noise)."""
        return self.n >= 2 and not math.isnan(self.half) and (self.low > 0 or self.high < 0)

    def to_dict(self, scale: float = 1.0) -> dict[str, Any]:
        r = lambda v: None if math.isnan(v) else round(v * scale, 6)   # noqa: E731
        return {"mean": r(self.mean), "ci95": [r(self.low), r(self.high)], "n": self.n}

    def text(self, scale: float = 100.0, sign: bool = False) -> str:
        f = "+.2f" if sign else ".2f"
        if self.n < 2 or math.isnan(self.half):
            return f"{self.mean * scale:{f}} (1 seed, no interval)"
        return f"{self.mean * scale:{f}} [{self.low * scale:{f}}, {self.high * scale:{f}}]"


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95 % t-interval of ``values`` (independent draws, e.g. one per training seed)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0)
    m = statistics.fmean(vals)
    half = t_quantile(n) * statistics.stdev(vals) / math.sqrt(n) if n > 1 else float("nan")
    return Interval(m, half, n)


def paired(a: dict[int, float], b: dict[int, float]) -> Interval:
    """Interval of the per-seed differences a[s] - b[s] over the seeds both have (paired design)."""
    seeds = sorted(set(a) & set(b))
    return interval([a[s] - b[s] for s in seeds])


def seeds_below(per_seed: dict[int, float], points: float = 0.0) -> list[int]:
    """Seeds whose paired difference (fraction) is more than ``points`` points below 0 (``LOSS_FLAG_PT``:
    the flagged ones)."""
    return [s for s, d in sorted(per_seed.items()) if 100 * d < -points]


# ---- runs -----------------------------------------------------------------------------------------
def _on(scores: dict[int, float], seeds: Iterable[int] | None) -> dict[int, float]:
    """``scores`` restricted to ``seeds`` (None: every seed), in seed order."""
    keep = None if seeds is None else set(seeds)
    return {s: v for s, v in sorted(scores.items()) if keep is None or s in keep}


def valid_report_seeds(n: int) -> bool:
    """0 (report on the selection seeds) or at least 2 fresh seeds (one seed has no interval)."""
    return n == 0 or n >= 2


def another_report_seed(done: int, requested: int, seconds_per_seed: float, seconds_left: float | None,
                        growth: int = REPORT_GROWTH) -> bool:
    """Whether the report starts one more fresh seed, having run ``done``: ``requested`` exactly
    without a time limit (``seconds_left`` None); with one, always up to ``min(requested,
    MIN_REPORT_SEEDS)`` (the floor: the limit may then be overrun, and is said to be), never past
    ``growth * requested``, and in between while a seed (``seconds_per_seed``: every reported config
    once) still ends before the limit. The rule reads the clock only, never a report result."""
    if seconds_left is None or not requested:
        return done < requested
    if done < min(requested, MIN_REPORT_SEEDS):
        return True
    return done < growth * requested and seconds_per_seed <= seconds_left


@dataclass
class Candidate:
    """One config retrained: where it came from and its per-seed scores (fractions)."""

    label: str                         # "trial 7" | "paper preset"
    trial: int | None
    config: RepConfig
    search_acc: float | None           # the search's validation accuracy (reduced fidelity)
    hash: str = ""                     # the study's config_hash of ``config``
    role: str | None = None            # paper | None
    val: dict[int, float] = field(default_factory=dict)
    test: dict[int, float] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    wall: dict[int, float] = field(default_factory=dict)     # wall seconds of each run, evaluation included
    evals: dict[int, float] = field(default_factory=dict)    # seconds of each run's final validation pass
    errors: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hash = self.hash or config_hash(self.config)

    def val_interval(self, seeds: Iterable[int] | None = None) -> Interval:
        """Validation accuracy over ``seeds`` (default: every seed it ran)."""
        return interval(list(_on(self.val, seeds).values()))

    def test_interval(self, seeds: Iterable[int] | None = None) -> Interval:
        """Test accuracy over ``seeds`` (default: every seed it was reported on)."""
        return interval(list(_on(self.test, seeds).values()))

    def test_on(self, seeds: Iterable[int] | None) -> dict[int, float]:
        """Per-seed test accuracy over ``seeds`` (None: every seed it was reported on)."""
        return _on(self.test, seeds)


@dataclass
class DeviceAnswer:
    """The confirmed answer for one device: the best feasible candidate and its gain over the paper preset."""

    key: str
    best: Candidate | None
    feasible: list[str]                # labels of the confirmed candidates that fit this device
    vs_paper: Interval | None          # test accuracy, best - paper preset, paired over the report seeds
    feasible_hashes: set[str] = field(default_factory=set)   # config hashes of the candidates that fit
    selection_seeds: list[int] | None = None   # None: every seed a candidate ran
    report_seeds: list[int] | None = None
    paper: Candidate | None = None             # the paper preset the gain is paired against

    def per_seed_vs_paper(self) -> dict[int, float]:
        """The choice's test accuracy less the paper preset's, per report seed both have (fraction)."""
        if self.best is None or self.paper is None or self.best is self.paper:
            return {}
        mine, ref = self.best.test_on(self.report_seeds), self.paper.test_on(self.report_seeds)
        return {s: mine[s] - ref[s] for s in sorted(set(mine) & set(ref))}

    def summary(self) -> dict[str, Any]:
        """What best_<device>.yaml's ``expected.confirmed`` holds."""
        if self.best is None:
            return {}
        b = self.best
        sel = sorted(b.val) if self.selection_seeds is None else list(self.selection_seeds)
        rep = sorted(b.test) if self.report_seeds is None else list(self.report_seeds)
        out = {"candidate": b.label, "trial": b.trial, "config_hash": b.hash, "chosen_by": SELECTION_RULE,
               "val_acc": {**b.val_interval(sel).to_dict(), "seeds": sel},
               "test_acc": b.test_interval(rep).to_dict(),
               "seeds": sorted(b.test_on(rep)),
               "report_on_fresh_seeds": not set(rep) & set(sel)}
        if self.vs_paper is not None:
            out["vs_paper_preset"] = {**self.vs_paper.to_dict(), "unit": "fraction (test accuracy, paired over seeds)",
                                      "resolved": self.vs_paper.resolved}
            per = self.per_seed_vs_paper()
            out["vs_paper_preset"].update(per_seed={int(k): round(v, 6) for k, v in per.items()},
                                          seeds_below_paper=seeds_below(per),
                                          seeds_far_below_paper=seeds_below(per, LOSS_FLAG_PT))
        return out


@dataclass
class Confirmation:
    """Every retrained candidate and the answer per device."""

    candidates: list[Candidate]
    answers: dict[str, DeviceAnswer]
    selection_seeds: list[int]
    report_seeds: list[int]
    fidelity: dict[str, Any]
    scenario: Scenario
    val_size: int = 0
    test_size: int = 0
    report_plan: str = ""              # what the time limit's rule (ReportTimer) did, if there was one
    selection_plan: str = ""           # what the time limit did to the selection (SelectionTimer), if it cut it
    workers: int = 1                   # retrainings at once (search.parallel)
    threads_per_run: int | None = None  # torch CPU threads each of them had (None: one at a time, as set)

    @property
    def fresh(self) -> bool:
        """The report seeds are disjoint from the selection seeds (unbiased report)."""
        return not set(self.report_seeds) & set(self.selection_seeds)

    @property
    def seeds(self) -> list[int]:
        """Every training seed the stage used, in order."""
        return sorted(set(self.selection_seeds) | set(self.report_seeds))

    def describe_fidelity(self) -> str:
        seeds = (f"selection seeds {self.selection_seeds}, report seeds {self.report_seeds} (fresh)" if self.fresh else
                 f"training seeds {self.selection_seeds}, selection and report on the same seeds (biased upwards)")
        return (f"{self.fidelity['training.epochs']} epoch(s), {self.fidelity['training.iters_per_task']} iterations "
                f"per task, {seeds}, paired"
                + (f"; {self.workers} runs at a time, {self.threads_per_run} torch thread(s) each"
                   if self.workers > 1 else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"selection_seeds": self.selection_seeds, "report_seeds": self.report_seeds,
                **({"report_seeds_planned": self.report_plan} if self.report_plan else {}),
                **({"selection_seeds_planned": self.selection_plan} if self.selection_plan else {}),
                "report_on_fresh_seeds": self.fresh, "fidelity": dict(self.fidelity),
                "runs_at_once": self.workers,
                **({"torch_threads_per_run": self.threads_per_run} if self.threads_per_run else {}),
                "val_images": self.val_size,
                "test_images": self.test_size, "scenario": self.scenario.to_dict()}


def confirmation_scenario(scenario: Scenario) -> Scenario:
    """The search's scenario with a larger fixed test subset for the report (same validation split)."""
    import dataclasses
    per = scenario.eval_per_class
    return dataclasses.replace(scenario, eval_per_class=None if per is None else max(per, CONFIRM_TEST_PER_CLASS))


def test_per_val(scenario: Scenario) -> float | None:
    """Test images a report run scores per validation image (``ReportTimer``'s first plan): 0 when
    the scenario scores on the test split (the test figure is the final validation), the ratio of the
    per-class caps on a validation split, None where the test subset is the whole test set (its
    size is not known before the data is read)."""
    if scenario.eval_split == "test":
        return 0.0
    if scenario.eval_per_class is None or not scenario.val_per_class:
        return None
    return scenario.eval_per_class / scenario.val_per_class


def retrain(candidates: list[Candidate], scenario: Scenario, seeds: Sequence[int], fidelity: dict[str, Any],
            train_fn: Callable, *, progress: bool = True, report_test: bool = True, stage: str = "confirm",
            clock: Callable[[], float] = time.perf_counter,
            another: Callable[[list[int]], bool] | None = None, workers: int = 1,
            gate: Callable[[int], bool] | None = None) -> tuple[int, int, list[int]]:
    """Train every candidate at every seed, seed-major; fill its val (and, with ``report_test``, test)
    scores and its wall time. A failed run is recorded (``errors``) and left out, never fatal.

    ``workers`` > 1 runs that many trainings at once on worker threads, each on an equal share of
    torch's threads (``search.parallel``); which thread runs a (candidate, seed) changes no score.
    Without ``another`` every run is queued at once, seed-major. With it the seeds go in rounds of
    ``seeds_per_round(workers, len(candidates))`` (every candidate's run at each seed of the round),
    and ``another(seeds run so far)`` is asked before each round after the first; False stops the
    stage. ``gate(seed)`` is asked as each run is about to start (``SelectionTimer``): False skips
    the run (nothing is recorded for it; the gate answers for a whole seed, so pairs stay whole).
    Returns (validation images, test images) per run (0 test images without ``report_test``: the
    test set is not touched) and the seeds run (without a seed the gate refused)."""
    from rep_tune.progress import ProgressBar
    from rep_tune.search.parallel import run_all
    seeds, sizes, ran = [int(s) for s in seeds], (0, 0), []
    per_round = max(1, len(seeds)) if another is None else seeds_per_round(workers, len(candidates))
    refused: set[int] = set()

    def run(job: tuple[Candidate, int]) -> tuple[int, int] | None:
        if gate is not None and not gate(job[1]):
            refused.add(job[1])
            return None
        return _run_one(job[0], job[1], scenario, fidelity, train_fn, report_test, clock, bar, stage)

    with ProgressBar(len(seeds) * len(candidates), stage, unit="runs", enabled=progress) as bar:
        for i in range(0, len(seeds), per_round):
            if ran and another is not None and not another(list(ran)):
                bar.set_total(bar.n)                         # stopped by design: the bar ends full
                break
            batch = seeds[i:i + per_round]
            ran.extend(batch)
            jobs = [(c, seed) for seed in batch for c in candidates]   # seed-major: every candidate's first seed first
            for _, got in run_all(jobs, run, workers, label="confirm"):
                sizes = got or sizes
                bar.update(1)
    return sizes[0], sizes[1], [s for s in ran if s not in refused]


def seeds_per_round(workers: int, n_configs: int) -> int:
    """Seeds a timed stage (the report) runs between two looks at the clock: enough that every worker
    has a run (2 workers, 2 configs: 1 seed; 2 workers, the paper preset alone: 2 seeds)."""
    return max(1, int(workers) // max(1, int(n_configs)))


def _run_one(c: Candidate, seed: int, scenario: Scenario, fidelity: dict[str, Any], train_fn: Callable,
             report_test: bool, clock: Callable[[], float], bar, stage: str) -> tuple[int, int] | None:
    """One retraining of ``c`` at ``seed`` (``retrain``): its scores, or its error; the run's image
    counts. Safe on worker threads: it writes only ``c``'s entries for ``seed``."""
    bar.set_description(f"{stage} {c.label} seed {seed}")
    cfg = c.config.replace(**fidelity, **{"training.seed": int(seed)})
    start = clock()
    try:
        res = train_fn(cfg, scenario, progress=False, energy=False, eval_every_task=False,
                       report_test=report_test)
    except Exception as e:                            # a crashing run is a failed run
        c.errors[seed] = f"{type(e).__name__}: {e}"
        return None
    finally:
        c.wall[seed] = clock() - start
    c.val[seed] = float(res.final_acc)
    c.seconds[seed] = float(getattr(res, "seconds", 0.0))
    records = getattr(res, "per_task", None) or []
    c.evals[seed] = float(getattr(records[-1], "eval_seconds", 0.0)) if records else 0.0
    test_n = 0
    if report_test:
        test = getattr(res, "test_acc", None)
        c.test[seed] = float(res.final_acc if test is None else test)
        test_n = int(getattr(res, "test_size", 0) or getattr(res, "eval_size", 0))
    return int(getattr(res, "eval_size", 0)), test_n


def _minus_se(values: Sequence[float]) -> float:
    """Mean of ``values`` less ``SELECT_SE`` standard errors of it (the mean alone for one value)."""
    if not values:
        return float("-inf")
    m = statistics.fmean(values)
    return m - SELECT_SE * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else m


def selection_score(c: Candidate, paper: Candidate | None, seeds: Sequence[int] | None = None) -> float:
    """What the choice maximises (fraction): ``c``'s per-seed validation gain over the paper preset,
    paired over ``seeds``, less ``SELECT_SE`` standard errors of its mean; 0 for the preset itself.
    Without a scored paper preset, ``c``'s mean validation accuracy less ``SELECT_SE`` standard errors.
    -inf for a candidate with no run paired with the preset's (it cannot be compared)."""
    mine = _on(c.val, seeds)
    ref = _on(paper.val, seeds) if paper is not None else {}
    if not ref:
        return _minus_se(list(mine.values()))
    if c is paper:
        return 0.0
    return _minus_se([mine[s] - ref[s] for s in sorted(set(mine) & set(ref))])


def decide(candidates: list[Candidate], feasible: dict[str, set[str]], selection_seeds: Sequence[int] | None = None,
           report_seeds: Sequence[int] | None = None) -> dict[str, DeviceAnswer]:
    """Per device key: the feasible candidate with the highest ``selection_score`` over the selection
    seeds (ties go to the paper preset), and its paired test-accuracy difference against the paper
    preset over the report seeds (default: every seed each has)."""
    paper = next((c for c in candidates if c.role == "paper"), None)
    sel = None if selection_seeds is None else list(selection_seeds)
    rep = None if report_seeds is None else list(report_seeds)
    out = {}
    for key, ok in feasible.items():
        pool = [c for c in candidates if c.hash in ok and _on(c.val, sel)]
        best = (max(pool, key=lambda c: (selection_score(c, paper, sel), c is paper)) if pool else None)
        answer = DeviceAnswer(key, best, [c.label for c in pool], None, set(ok), sel, rep, paper)
        per = answer.per_seed_vs_paper()                     # the paired differences (``paired``'s, per seed)
        answer.vs_paper = interval(list(per.values())) if per else None
        out[key] = answer
    return out


def write_csv(conf: Confirmation, path: Path) -> Path:
    """One row per (candidate, seed) run: its stage (select | report | select+report), validation and
    test accuracy (empty where the run did not score it), training seconds, the run's wall seconds
    (training and evaluation: what the time limit plans with), error.

    Written whole and swapped in (``schema.atomic_write_text``): a symlink at ``path`` is replaced,
    never followed."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["candidate", "trial", "role", "config_hash", "stage", "seed", "val_acc", "test_acc", "val_images",
                "test_images", "seconds", "wall_s", "error", *[f"best@{k}" for k in conf.answers]])
    for c in conf.candidates:
        for s in conf.seeds:
            in_sel, in_rep = s in conf.selection_seeds, s in conf.report_seeds
            if not in_sel and s not in c.val and s not in c.errors:
                continue                                      # not reported: it lost the selection everywhere
            stage = "select+report" if in_sel and in_rep else "select" if in_sel else "report"
            w.writerow([c.label, "" if c.trial is None else c.trial, c.role or "", c.hash, stage, s,
                        _num(c.val.get(s)), _num(c.test.get(s)), conf.val_size, conf.test_size if s in c.test else "",
                        _num(c.seconds.get(s), 2), _num(c.wall.get(s), 2), c.errors.get(s, ""),
                        *["yes" if a.best is c else "" for a in conf.answers.values()]])
    return atomic_write_text(path, f.getvalue(), newline="")


def answer_from_csv(path: Path, key: str) -> dict[str, Any] | None:
    """Device ``key``'s confirmed answer read back from a ``confirm.csv`` (``write_csv``): the chosen
    candidate, its test accuracy and its paired difference against the paper preset, both over the
    report rows only, in points. None when no candidate was chosen for ``key``."""
    rows = list(csv.DictReader(Path(path).open(newline="")))
    test: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["test_acc"] and "report" in row.get("stage", "report"):
            test.setdefault(row["candidate"], {})[int(row["seed"])] = float(row["test_acc"])
    chosen = next((row for row in rows if row.get(f"best@{key}") == "yes"), None)
    if chosen is None or chosen["candidate"] not in test:
        return None
    ref = next((row["candidate"] for row in rows if row["role"] == "paper"), None)
    mine = test[chosen["candidate"]]
    vs = paired(mine, test[ref]) if ref in test and chosen["candidate"] != ref else None
    return {"candidate": chosen["candidate"], "trial": int(chosen["trial"]) if chosen["trial"] else None,
            "test": interval(list(mine.values())).to_dict(100.0), "seeds": sorted(mine),
            "fresh": all(row.get("stage", "select+report") != "select+report" for row in rows),
            "vs_paper": None if vs is None else {**vs.to_dict(100.0), "resolved": vs.resolved}}


def _num(v: float | None, digits: int = 6) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def print_table(conf: Confirmation, targets, *, out=None) -> None:
    """The confirmed table and, per device, the answer with its intervals (on ``out``, default the
    current ``sys.stdout``: read at call time, not bound when the module was imported)."""
    out = out if out is not None else sys.stdout
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rep_tune.data.tasks import sampling_error

    console = Console(file=out, width=130)
    sel, rep = conf.selection_seeds, conf.report_seeds
    table = Table(title=escape(f"confirmation: {conf.describe_fidelity()}; validation {conf.val_size:,} images, "
                               f"test {conf.test_size:,} images; the choice: {SELECTION_RULE}"), title_justify="left")
    paper = next((c for c in conf.candidates if c.role == "paper"), None)
    for col in ("candidate", "search val %", f"val % (seeds {_span(sel)}): mean [min, max]",
                f"choice score (points, gain - {SELECT_SE:g} SE)",
                f"test % (seeds {_span(rep)}): mean [95 % CI]",
                *[f"fits {t.key}" for t in targets]):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for c in conf.candidates:
        fits = ["yes" if c.hash in conf.answers[t.key].feasible_hashes else "NO" for t in targets]
        vals = list(_on(c.val, sel).values())
        val = (f"{100 * statistics.fmean(vals):.2f} [{100 * min(vals):.2f}, {100 * max(vals):.2f}]" if vals else "failed")
        reported = any(s in c.val or s in c.errors for s in rep)
        test = c.test_interval(rep).text() if c.test_on(rep) else "failed" if reported else "- (not chosen)"
        score = selection_score(c, paper, sel) if vals else float("-inf")
        table.add_row(escape(c.label), "-" if c.search_acc is None else f"{100 * c.search_acc:.2f}", val,
                      "-" if math.isinf(score) else f"{100 * score:+.2f}", test, *fits)
    console.print(table)
    if not conf.fresh:
        console.print("  [yellow]the report reuses the selection seeds: the winner's figures are biased upwards "
                      "(winner's curse); --confirm K,S,R with R >= 2 reports on fresh seeds[/yellow]")
    for t in targets:
        a = conf.answers.get(t.key)
        if a is None or a.best is None:
            console.print(f"  [red]{escape(t.profile.name)}: no feasible candidate was confirmed[/red]")
            continue
        ti = a.best.test_interval(rep)
        if not ti.n:
            console.print(f"  [red]{escape(t.profile.name)}: confirmed best {escape(a.best.label)}: every report run "
                          f"failed (confirm.csv has the errors)[/red]")
            continue
        err = 100 * sampling_error(ti.mean, conf.test_size) if conf.test_size else float("nan")
        console.print(escape(f"  {t.profile.name}: confirmed best {a.best.label} (validation, {len(sel)} seeds): test "
                             f"accuracy {ti.text()} % ({ti.n} {'fresh ' if conf.fresh else ''}seeds on "
                             f"{conf.test_size:,} test images; their sampling error ±{err:.2f} points)"))
        if a.vs_paper is not None:
            verdict = "resolved" if a.vs_paper.resolved else "not resolved (the interval spans 0)"
            console.print(escape(f"    vs the paper preset: {a.vs_paper.text(sign=True)} points, paired over "
                                 f"{a.vs_paper.n} seeds -> {verdict}"))
            per = a.per_seed_vs_paper()
            console.print(escape("    per seed: " + ", ".join(f"seed {s} {100 * d:+.1f}" for s, d in per.items())
                                 + f"; below the paper preset on {len(seeds_below(per))} of {len(per)} seeds"))
            far = seeds_below(per, LOSS_FLAG_PT)
            if far:
                warn = (f"on seed(s) {_span(far)} it fell more than {LOSS_FLAG_PT:g} points below the paper preset "
                        f"(a task forgotten?): it is less reliable than its mean says; check confirm.csv before "
                        f"shipping it")
                console.print(f"    [yellow]{escape(warn)}[/yellow]")
        elif a.best.role == "paper":
            console.print("    the paper preset itself is the confirmed best")


def _span(seeds: Sequence[int]) -> str:
    """Seeds as a short label: "2-5" for a run of consecutive seeds, else "0,3"."""
    s = sorted(seeds)
    if len(s) > 1 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ",".join(map(str, s)) or "-"


def candidates_from(recs, targets, paper_record, top_k: int) -> tuple[list[Candidate], dict[str, set[str]]]:
    """Per device the ``top_k`` feasible trained configs by search accuracy besides the paper preset
    (distinct configs, union over devices), plus the paper preset; and per device the hashes of the
    candidates that fit it. The preset never takes a candidate's place: it is retrained anyway."""
    chosen: dict[str, Candidate] = {}
    feasible: dict[str, set[str]] = {t.key: set() for t in targets}
    scored = [r for r in recs if r.scored and r.config]
    paper_hash = paper_record.config_hash if paper_record is not None and paper_record.config else None
    for t in targets:
        ok = sorted((r for r in scored if r.feasible(t.key)), key=lambda r: -r.final_acc)
        seen: set[str] = set()
        for r in ok:
            h = r.config_hash
            if h in seen or h == paper_hash:
                continue
            seen.add(h)
            if len(seen) > top_k:
                break
            if h not in chosen:
                chosen[h] = Candidate(f"trial {r.number}", r.number, RepConfig.from_dict(r.config), r.final_acc, h)
    if paper_hash is not None:
        chosen[paper_hash] = Candidate(f"paper preset (trial {paper_record.number})", paper_record.number,
                                       RepConfig.from_dict(paper_record.config), paper_record.final_acc, paper_hash,
                                       role="paper")
    for t in targets:
        for r in scored:
            if r.config_hash in chosen and r.feasible(t.key):
                feasible[t.key].add(r.config_hash)
    return list(chosen.values()), feasible


def first_round(reported: list[Candidate], selection_seeds: Sequence[int], seeds: int, workers: int,
                test_per_val: float | None = None) -> float:
    """Wall seconds one report round of ``seeds`` seeds should take, from the selection's runs of
    ``reported`` (``ReportTimer``): per config its mean selection run plus ``test_per_val`` times its
    mean final validation pass (the test evaluation a report run adds); the round is that many runs
    in ``ceil(runs / workers)`` waves of the mean run, and at least the slowest run."""
    runs = []
    for c in reported:
        wall = list(_on(c.wall, selection_seeds).values()) or [0.0]
        evals = list(_on(c.evals, selection_seeds).values()) or [0.0]
        runs.append(statistics.fmean(wall) + (test_per_val or 0.0) * statistics.fmean(evals))
    return round_seconds(runs, seeds, workers)


def round_seconds(runs: Sequence[float], seeds: int, workers: int) -> float:
    """Wall seconds of ``seeds`` seeds of configs whose runs take ``runs`` seconds each, ``workers`` at
    a time: ``ceil(seeds * configs / workers)`` waves of the mean run, and at least the slowest run
    (side by side, a round lasts as long as its slowest run). 0 without runs."""
    if not runs:
        return 0.0
    waves = math.ceil(seeds * len(runs) / max(1, int(workers)))
    return max(waves * statistics.fmean(runs), max(runs))


class ReportTimer:
    """The report's stopping rule under a time limit (``another_report_seed``), round by round
    (``retrain``: a round is ``seeds_per_round`` seeds, one with 1 worker or 2 configs on 2
    workers): before each round it plans ``REPORT_SLACK`` times the last round's wall time on the
    clock and keeps ``REPORT_RESERVE_S`` for the files written after the report. It grows the report
    past ``requested`` only when a reported config is not the paper preset: more seeds narrow a
    gain's interval, and the preset alone has no gain to resolve. Made right before the report's
    first round: the first round's wall counts from here.

    Before the first round it has no round to go by, so it plans one from the selection
    (``first_round``): each reported config's mean selection run, plus its test evaluation
    (``test_per_val`` test images per validation image times the run's final validation pass; a
    report run also scores the test subset, which a selection run never touches), in as many waves
    as the workers need and never shorter than the slowest run (side by side, a round lasts as long
    as its slowest run). Only the announcement reads that plan: every decision is made on a
    measured round."""

    def __init__(self, reported: list[Candidate], selection_seeds: Sequence[int], requested: int,
                 deadline: float, clock: Callable[[], float], workers: int = 1,
                 test_per_val: float | None = None) -> None:
        self.reported, self.requested, self.deadline, self.clock = reported, requested, deadline, clock
        self.growth = REPORT_GROWTH if any(c.role != "paper" for c in reported) else 1
        self.most = self.growth * requested                     # the cap: seeds the report may run
        self.round = seeds_per_round(workers, len(reported))
        self.per_round = REPORT_SLACK * first_round(reported, selection_seeds, self.round, workers, test_per_val)
        self.mark, self.last, self.stopped = clock(), 0.0, False

    def _lap(self) -> float:
        """Wall seconds since the last round began (the round just run), and a new mark."""
        now = self.clock()
        self.last, self.mark = now - self.mark, now
        return self.last

    def __call__(self, done: list[int]) -> bool:
        """Another round after ``done`` (the report seeds run so far)?"""
        self.per_round = REPORT_SLACK * self._lap()
        left = self.deadline - self.clock() - REPORT_RESERVE_S
        self.stopped = not another_report_seed(len(done), self.requested, self.per_round, left, self.growth)
        return not self.stopped

    def announce(self) -> str:
        """The rule, before the report's first round."""
        per = f"{self.round} seeds" if self.round > 1 else "a seed"
        return (f"the report runs fresh seeds while each can end before the time limit: "
                f"{self.deadline - self.clock():.0f} s left, about {self.per_round:.0f} s {per} "
                f"({len(self.reported)} run(s) each); {self.requested} requested, "
                f"{min(self.requested, MIN_REPORT_SEEDS)} to {self.most}")

    def describe(self, seeds: list[int]) -> str:
        """What the rule did over the report ``seeds``, for the output and best_<device>.yaml
        (``report_seeds_planned``). Called once, right after the report's last round."""
        last = self.last if self.stopped or not seeds else self._lap()   # stopped: the last look timed it
        over, floor, ran = self.clock() - self.deadline, min(self.requested, MIN_REPORT_SEEDS), len(seeds)
        why = f"the floor of {floor} seeds" if ran <= floor else "a seed ran longer than planned"
        return (f"{ran} report seeds (requested {self.requested}), each started while it could end before the "
                f"time limit (the last {'round' if self.round > 1 else 'seed'} took {last:.0f} s); "
                + (f"the limit overrun by {over:.0f} s ({why})" if over > 0 else
                   f"{-over:.0f} s before the limit"))


class SelectionTimer:
    """The selection's stopping rule under a time limit (``retrain``'s ``gate``): seeds below
    ``MIN_SELECTION_SEEDS`` always run; a later seed starts only while, at the mean selection run so
    far, that seed's runs and then the report's floor end before the deadline less
    ``REPORT_RESERVE_S``. The first run of a seed decides for all its runs (seed-major order), so
    every candidate keeps the same selection seeds as the paper preset, and a refused seed refuses
    every later one. With no finished run to go by it lets the seed run.

    The report's floor is ``MIN_REPORT_SEEDS`` seeds (fewer if fewer were asked) of ``n_reported``
    configs (each device's choice and the paper preset) in ``seeds_per_round`` rounds, each planned
    as ``first_round`` plans one (``round_seconds``), on the mean of every candidate's selection
    runs (the choice is not known yet) and ``REPORT_SLACK`` over it. Why: the selection queued all its runs at once, so on a
    slow host it could leave the report less than its floor and the command overran the limit; now
    it gives up a selection seed (the choice then stands on 2 paired seeds) before the report's floor
    would overrun. Thread-safe: worker threads ask it."""

    def __init__(self, cands: list[Candidate], requested: int, report_seeds: int, n_reported: int,
                 deadline: float, clock: Callable[[], float], workers: int = 1,
                 test_per_val: float | None = None) -> None:
        self.cands, self.requested, self.deadline, self.clock = cands, int(requested), deadline, clock
        self.workers, self.test_per_val = max(1, int(workers)), test_per_val
        self.n_reported = max(1, min(int(n_reported), len(cands)))
        self.floor_seeds = min(int(report_seeds), MIN_REPORT_SEEDS)
        self.answers: dict[int, bool] = {}
        self.why = ""
        self._lock = threading.Lock()

    def needs(self) -> tuple[float, float] | None:
        """(seconds one more selection seed takes, seconds the report's floor takes) at the selection
        runs so far; None before any run has finished."""
        # tuple(values()) copies each dict in one step: worker threads add runs to them meanwhile
        walls = [w for c in self.cands for w in tuple(c.wall.values())]
        if not walls:
            return None
        run = statistics.fmean(walls)
        evals = [e for c in self.cands for e in tuple(c.evals.values())] or [0.0]
        report_run = run + (self.test_per_val or 0.0) * statistics.fmean(evals)
        seed_s = round_seconds([run] * len(self.cands), 1, self.workers)
        per = seeds_per_round(self.workers, self.n_reported)
        per_round = round_seconds([report_run] * self.n_reported, per, self.workers)
        floor_s = REPORT_SLACK * math.ceil(self.floor_seeds / per) * per_round if self.floor_seeds else 0.0
        return seed_s, floor_s

    def __call__(self, seed: int) -> bool:
        """May a run of selection seed ``seed`` start now?"""
        with self._lock:
            if seed in self.answers:
                return self.answers[seed]
            ok = seed < MIN_SELECTION_SEEDS or (all(self.answers.get(s, True) for s in range(seed)))
            need = self.needs() if ok and seed >= MIN_SELECTION_SEEDS else None
            if need is not None:
                left = self.deadline - self.clock() - REPORT_RESERVE_S
                ok = sum(need) <= left
                if not ok and not self.why:
                    self.why = (f"{seed} selection seeds (requested {self.requested}): seed {seed}'s runs (about "
                                f"{need[0]:.0f} s) and then the report's floor of {self.floor_seeds} seeds (about "
                                f"{need[1]:.0f} s) would end after the time limit ({left:.0f} s left)")
            self.answers[seed] = ok
            return ok


def run_stages(cands: list[Candidate], feasible: dict[str, set[str]], scenario: Scenario, train_fn: Callable, *,
               seeds: int = DEFAULT_SEEDS, report_seeds: int = DEFAULT_REPORT_SEEDS,
               fidelity: dict[str, Any] | None = None, progress: bool = True, deadline: float | None = None,
               clock: Callable[[], float] = time.time, out=None, workers: int = 1) -> Confirmation:
    """Select on ``seeds`` paired seeds by validation accuracy; report each device's best and the paper
    preset on fresh paired seeds (``report_seeds``; 0: on the selection seeds, biased); decide per device.

    With a ``deadline`` (a ``clock()`` time: the command's time limit), the report runs seed by seed
    while the next seed ends before it (``another_report_seed``): fewer than ``report_seeds`` when
    they would overrun it (never below ``MIN_REPORT_SEEDS``), up to ``REPORT_GROWTH`` times more when
    time is left and some device's choice is not the paper preset (``ReportTimer``). ``workers``:
    retrainings at once in both stages (``retrain``, ``search.parallel``)."""
    from rep_tune.search.parallel import threads_per_run
    fid = dict(fidelity or CONFIRM_FIDELITY)
    threads = threads_per_run(workers) if workers > 1 else None
    fresh = bool(report_seeds)
    gate = None if deadline is None else SelectionTimer(
        cands, seeds, report_seeds, min(len(cands), len(feasible) + 1), deadline, clock, workers,
        test_per_val(scenario))
    val_n, test_n, sel = retrain(cands, scenario, range(int(seeds)), fid, train_fn, progress=progress,
                                 report_test=not fresh, stage="confirm: select", clock=clock, workers=workers,
                                 gate=gate)
    if gate is not None and gate.why:
        print(f"  confirm: {gate.why}", file=out or sys.stdout)
    rep, plan = list(sel), ""
    if fresh:
        chosen = {id(a.best) for a in decide(cands, feasible, sel).values() if a.best is not None}
        reported = [c for c in cands if id(c) in chosen or c.role == "paper"]
        n = int(report_seeds)
        timer = None if deadline is None else ReportTimer(reported, sel, n, deadline, clock, workers,
                                                          test_per_val(scenario))
        if timer is not None:
            print(f"  confirm: {timer.announce()}", file=out or sys.stdout)
        last = int(seeds) + (n if timer is None else timer.most)
        _, test_n, rep = retrain(reported, scenario, range(int(seeds), last), fid, train_fn, progress=progress,
                                 report_test=True, stage="confirm: report", clock=clock, another=timer,
                                 workers=workers)
        if timer is not None:
            plan = timer.describe(rep)
            print(f"  confirm: {plan}", file=out or sys.stdout)
    return Confirmation(cands, decide(cands, feasible, sel, rep), sel, rep, fid, scenario, val_n, test_n, plan,
                        gate.why if gate is not None else "", workers, threads)


def confirm(recs, targets, paper_record, scenario: Scenario, train_fn: Callable, *, top_k: int = DEFAULT_TOP_K,
            seeds: int = DEFAULT_SEEDS, report_seeds: int = DEFAULT_REPORT_SEEDS, fidelity: dict[str, Any] | None = None,
            progress: bool = True, deadline: float | None = None, out=None, workers: int = 1) -> Confirmation:
    """The whole stage (module docstring): pick the candidates from the search's trial records, then
    ``run_stages`` on the confirmation's scenario (``deadline``: a ``time.time()`` the report plans to end by;
    ``workers``: retrainings at once)."""
    cands, feasible = candidates_from(recs, targets, paper_record, top_k)
    return run_stages(cands, feasible, confirmation_scenario(scenario), train_fn, seeds=seeds,
                      report_seeds=report_seeds, fidelity=fidelity, progress=progress, deadline=deadline, out=out,
                      workers=workers)
