"""Confirmation: retrain the search's top candidates and the paper preset with paired seeds.

The best of N noisy trials overstates its accuracy (winner's curse: about sigma times the expected
maximum of N standard normals), and the search scores at a reduced fidelity. So, after the trials:

1. candidates = per device, the ``top_k`` feasible trained configs by validation accuracy (the
   search's score), plus the paper preset (the reference every answer is compared with);
2. each is retrained ``seeds`` times at the confirmation fidelity (``CONFIRM_FIDELITY``), with
   training seeds 0..seeds-1 shared by every candidate (paired: seed s gives every config the same
   batch order and prompt initialisation draw);
3. each run is scored on the validation split (selection) and, once, on the test subset (report);
4. per device, the confirmed best is the feasible candidate with the highest mean validation
   accuracy; its test accuracy is reported as a mean with a 95 % t-interval over seeds, and its
   paired per-seed difference against the paper preset with a 95 % t-interval, "resolved" when
   that interval excludes 0.

The test set is touched only here, after selection, to report; it never chooses. Intervals are
over training seeds on fixed images: the test subset's own sampling error (binomial) is stated
beside them. Pure arithmetic (``interval``, ``paired``) is separate from the trainings so that it
can be tested on a fake trainer with known noise.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.schema import atomic_write_text
from rep_tune.search.space import config_hash

# retraining fidelity: 1 epoch of at most 32 iterations per task (the search scores at 12; the
# embedded preset's own schedule is 64): the default search, confirmation included, fits 20 minutes
# on 2 CPU cores (README, benchmarks/results)
CONFIRM_FIDELITY = {"training.epochs": 1, "training.iters_per_task": 32}
CONFIRM_TEST_PER_CLASS = 100      # test images per class the confirmed answer is reported on
DEFAULT_TOP_K, DEFAULT_SEEDS = 3, 3


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


# ---- runs -----------------------------------------------------------------------------------------
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
    errors: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hash = self.hash or config_hash(self.config)

    def val_interval(self) -> Interval:
        return interval(list(self.val.values()))

    def test_interval(self) -> Interval:
        return interval(list(self.test.values()))


@dataclass
class DeviceAnswer:
    """The confirmed answer for one device: the best feasible candidate and its gain over the paper preset."""

    key: str
    best: Candidate | None
    feasible: list[str]                # labels of the confirmed candidates that fit this device
    vs_paper: Interval | None          # test accuracy, best - paper preset, paired over seeds
    feasible_hashes: set[str] = field(default_factory=set)   # config hashes of the candidates that fit

    def summary(self) -> dict[str, Any]:
        """What best_<device>.yaml's ``expected.confirmed`` holds."""
        if self.best is None:
            return {}
        b = self.best
        out = {"candidate": b.label, "trial": b.trial, "config_hash": b.hash,
               "val_acc": b.val_interval().to_dict(), "test_acc": b.test_interval().to_dict(),
               "seeds": sorted(b.test)}
        if self.vs_paper is not None:
            out["vs_paper_preset"] = {**self.vs_paper.to_dict(), "unit": "fraction (test accuracy, paired over seeds)",
                                      "resolved": self.vs_paper.resolved}
        return out


@dataclass
class Confirmation:
    """Every retrained candidate and the answer per device."""

    candidates: list[Candidate]
    answers: dict[str, DeviceAnswer]
    seeds: list[int]
    fidelity: dict[str, Any]
    scenario: Scenario
    val_size: int = 0
    test_size: int = 0

    def describe_fidelity(self) -> str:
        return (f"{self.fidelity['training.epochs']} epoch(s), {self.fidelity['training.iters_per_task']} iterations "
                f"per task, training seeds {self.seeds} (paired)")

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "fidelity": dict(self.fidelity), "val_images": self.val_size,
                "test_images": self.test_size, "scenario": self.scenario.to_dict()}


def confirmation_scenario(scenario: Scenario) -> Scenario:
    """The search's scenario with a larger fixed test subset for the report (same validation split)."""
    import dataclasses
    per = scenario.eval_per_class
    return dataclasses.replace(scenario, eval_per_class=None if per is None else max(per, CONFIRM_TEST_PER_CLASS))


def retrain(candidates: list[Candidate], scenario: Scenario, seeds: Sequence[int], fidelity: dict[str, Any],
            train_fn: Callable, *, progress: bool = True) -> tuple[int, int]:
    """Train every candidate at every seed; fill its val/test scores. A failed run is recorded
    (``errors``) and left out, never fatal. Returns (validation images, test images) per run."""
    from rep_tune.progress import ProgressBar
    sizes = (0, 0)
    jobs = [(c, s) for s in seeds for c in candidates]       # seed-major: every candidate has seed 0 first
    with ProgressBar(len(jobs), "confirm", unit="runs", enabled=progress) as bar:
        for c, seed in jobs:
            bar.set_description(f"confirm {c.label} seed {seed}")
            cfg = c.config.replace(**fidelity, **{"training.seed": int(seed)})
            try:
                res = train_fn(cfg, scenario, progress=False, energy=False, eval_every_task=False, report_test=True)
            except Exception as e:                            # a crashing run is a failed run
                c.errors[seed] = f"{type(e).__name__}: {e}"
                bar.update(1)
                continue
            c.val[seed] = float(res.final_acc)
            test = getattr(res, "test_acc", None)
            c.test[seed] = float(res.final_acc if test is None else test)
            c.seconds[seed] = float(getattr(res, "seconds", 0.0))
            sizes = (int(getattr(res, "eval_size", 0)), int(getattr(res, "test_size", 0) or getattr(res, "eval_size", 0)))
            bar.update(1)
    return sizes


def decide(candidates: list[Candidate], feasible: dict[str, set[str]]) -> dict[str, DeviceAnswer]:
    """Per device key: the feasible candidate with the highest mean validation accuracy, and its
    paired test-accuracy difference against the paper preset."""
    paper = next((c for c in candidates if c.role == "paper"), None)
    out = {}
    for key, ok in feasible.items():
        pool = [c for c in candidates if c.hash in ok and c.val]
        best = max(pool, key=lambda c: c.val_interval().mean) if pool else None
        vs = paired(best.test, paper.test) if best is not None and paper is not None and best is not paper else None
        out[key] = DeviceAnswer(key, best, [c.label for c in pool], vs, set(ok))
    return out


def write_csv(conf: Confirmation, path: Path) -> Path:
    """One row per (candidate, seed): validation and test accuracy, seconds, error.

    Written whole and swapped in (``schema.atomic_write_text``): a symlink at ``path`` is replaced,
    never followed."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["candidate", "trial", "role", "config_hash", "seed", "val_acc", "test_acc", "val_images",
                "test_images", "seconds", "error", *[f"best@{k}" for k in conf.answers]])
    for c in conf.candidates:
        for s in conf.seeds:
            w.writerow([c.label, "" if c.trial is None else c.trial, c.role or "", c.hash, s,
                        _num(c.val.get(s)), _num(c.test.get(s)), conf.val_size, conf.test_size,
                        _num(c.seconds.get(s), 2), c.errors.get(s, ""),
                        *["yes" if a.best is c else "" for a in conf.answers.values()]])
    return atomic_write_text(path, f.getvalue(), newline="")


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
    table = Table(title=escape(f"confirmation: {conf.describe_fidelity()}; validation {conf.val_size:,} images, "
                               f"test {conf.test_size:,} images; mean [95 % CI over seeds], %"), title_justify="left")
    for col in ("candidate", "search val %", "val %", "test %", *[f"fits {t.key}" for t in targets]):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for c in conf.candidates:
        fits = ["yes" if c.hash in conf.answers[t.key].feasible_hashes else "NO" for t in targets]
        table.add_row(escape(c.label), "-" if c.search_acc is None else f"{100 * c.search_acc:.2f}",
                      c.val_interval().text() if c.val else "failed", c.test_interval().text() if c.test else "failed",
                      *fits)
    console.print(table)
    for t in targets:
        a = conf.answers.get(t.key)
        if a is None or a.best is None:
            console.print(f"  [red]{escape(t.profile.name)}: no feasible candidate was confirmed[/red]")
            continue
        ti = a.best.test_interval()
        err = 100 * sampling_error(ti.mean, conf.test_size) if conf.test_size else float("nan")
        console.print(escape(f"  {t.profile.name}: confirmed best {a.best.label}: test accuracy {ti.text()} % "
                             f"({ti.n} seeds on {conf.test_size:,} test images; their sampling error ±{err:.2f} points)"))
        if a.vs_paper is not None:
            verdict = "resolved" if a.vs_paper.resolved else "not resolved (the interval spans 0)"
            console.print(escape(f"    vs the paper preset: {a.vs_paper.text(sign=True)} points, paired over "
                                 f"{a.vs_paper.n} seeds -> {verdict}"))
        elif a.best.role == "paper":
            console.print("    the paper preset itself is the confirmed best")


def candidates_from(recs, targets, paper_record, top_k: int) -> tuple[list[Candidate], dict[str, set[str]]]:
    """Per device the ``top_k`` feasible trained configs by search accuracy (distinct configs, union over
    devices), plus the paper preset; and per device the hashes of the candidates that fit it."""
    chosen: dict[str, Candidate] = {}
    feasible: dict[str, set[str]] = {t.key: set() for t in targets}
    scored = [r for r in recs if r.scored and r.config]
    for t in targets:
        ok = sorted((r for r in scored if r.feasible(t.key)), key=lambda r: -r.final_acc)
        seen: set[str] = set()
        for r in ok:
            h = r.config_hash
            if h in seen:
                continue
            seen.add(h)
            if len(seen) > top_k:
                break
            if h not in chosen:
                chosen[h] = Candidate(f"trial {r.number}", r.number, RepConfig.from_dict(r.config), r.final_acc, h)
    if paper_record is not None and paper_record.config:
        h = paper_record.config_hash
        if h in chosen:
            chosen[h].role, chosen[h].label = "paper", f"paper preset (trial {paper_record.number})"
        else:
            chosen[h] = Candidate(f"paper preset (trial {paper_record.number})", paper_record.number,
                                  RepConfig.from_dict(paper_record.config), paper_record.final_acc, h, role="paper")
    for t in targets:
        for r in scored:
            if r.config_hash in chosen and r.feasible(t.key):
                feasible[t.key].add(r.config_hash)
    return list(chosen.values()), feasible


def confirm(recs, targets, paper_record, scenario: Scenario, train_fn: Callable, *, top_k: int = DEFAULT_TOP_K,
            seeds: int = DEFAULT_SEEDS, fidelity: dict[str, Any] | None = None, progress: bool = True) -> Confirmation:
    """The whole stage (module docstring): pick, retrain with paired seeds, decide per device."""
    fid = dict(fidelity or CONFIRM_FIDELITY)
    cands, feasible = candidates_from(recs, targets, paper_record, top_k)
    scen = confirmation_scenario(scenario)
    seed_list = list(range(int(seeds)))
    val_n, test_n = retrain(cands, scen, seed_list, fid, train_fn, progress=progress)
    answers = decide(cands, feasible)
    return Confirmation(cands, answers, seed_list, fid, scen, val_n, test_n)
