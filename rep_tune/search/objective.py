"""The search objective: sample -> pre-screen -> train once -> report per task -> constraints.

One objective, the final average accuracy (percent) after the last task, so Optuna's pruners
work; forgetting, training time and every cost figure are user attributes. Latency, memory
(and energy when budgeted) are constraints ``latency_ms@<device> = cost / budget - 1`` (<= 0
feasible, see ``budgets.violation``), set with Optuna 5's ``trial.set_constraint`` for every
target device. With several devices the sampler sees the whole vector; the best config per
device is chosen from the per-device user attributes (``feasible@<device>``).

Pre-screening: the cost model prices the candidate on every target *before* training. When it
is over a budget by more than ``margin`` on every target, the trial is never trained: it
completes with the placeholder accuracy ``PRESCREEN_VALUE`` (0.0), its predicted constraints,
``prescreened = True`` and the reason. TPE and GP rank infeasible trials by their constraint
violation, not by the value, so the placeholder does not mislead them; reports exclude
prescreened trials.

Accuracy is device-independent: a config (by ``config_hash``) is trained at most once per run;
a repeat proposal replays the cached per-task reports and result (``cached_from``). The cache is
rebuilt from the study's storage on resume.

Per-task reports: after task t the running average accuracy over the tasks seen so far is
reported at step t; every config sees the same class order, so values at one step compare.

Failures: an exception in training (OOM, NaN loss, a bad combination) is recorded in the trial's
``error`` attribute and re-raised; the backend runs with ``catch=(Exception,)`` so the trial is
FAIL and the search goes on.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.figures import Cost, Figure
from rep_tune.search.budgets import METRICS, UNITS, violation
from rep_tune.search.space import SearchSpace, config_hash
from rep_tune.search.targets import Target

PRESCREEN_VALUE = 0.0
NUM_CLASSES = {"digits": 10, "fashion-mnist": 10, "cifar100": 100, "imagenet-r": 200}


@dataclass
class Evaluation:
    """What training one config produced (device-independent, except ``measured``)."""

    config_hash: str
    state: str                                   # complete | pruned
    task_acc: list[float] = field(default_factory=list)   # running average accuracy after each task (%)
    final_acc: float | None = None               # %
    forgetting: float | None = None              # points
    avg_incremental_acc: float | None = None     # %
    measured: Cost | None = None
    seconds: float = 0.0
    iterations: int = 0
    trial_number: int | None = None


def _pct(x: float | None) -> float | None:
    """TrainResult accuracies are fractions in [0, 1]; the study and reports use percent."""
    return None if x is None else float(x) * 100.0


def running_accuracy(acc_matrix: Any, task: int) -> float:
    """Average accuracy over tasks 0..task after training task ``task`` (row ``task``), in %."""
    row = [float(v) for v in list(acc_matrix[task])[: task + 1]]
    vals = [v for v in row if not math.isnan(v)]
    return sum(vals) / len(vals) * 100.0 if vals else float("nan")


class Trainer:
    """Trains configs on one scenario, each at most once (cache by config hash); thread-safe."""

    def __init__(self, scenario: Scenario, train_fn: Callable | None = None, *, progress: bool = False):
        self.scenario = scenario
        self._train_fn = train_fn
        self.progress = progress
        self.cache: dict[str, Evaluation] = {}
        self.calls = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Picklable for Ray workers: the lock is recreated, the cache travels."""
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def train_fn(self) -> Callable:
        if self._train_fn is None:
            from rep_tune.runtime.learner import train
            self._train_fn = train
        return self._train_fn

    def cached(self, cfg_hash: str) -> Evaluation | None:
        with self._lock:
            return self.cache.get(cfg_hash)

    def train(self, config: RepConfig, on_task: Callable[[int, float], None] | None = None) -> Evaluation:
        """Train ``config``; ``on_task(task, running_acc)`` after each task may raise TrialPruned."""
        h = config_hash(config)
        ev = Evaluation(h, "pruned")
        t0 = time.perf_counter()

        def callback(task_id: int, so_far: Any) -> None:
            acc = running_accuracy(so_far.acc_matrix, task_id)
            ev.task_acc.append(acc)
            ev.measured = getattr(so_far, "cost", None) or ev.measured
            if on_task is not None:
                on_task(task_id, acc)

        with self._lock:
            self.calls += 1
        try:
            result = self.train_fn(config, self.scenario, callbacks=(callback,), progress=self.progress)
        except optuna.TrialPruned:
            ev.seconds = time.perf_counter() - t0
            with self._lock:
                self.cache[h] = ev
            raise
        final = _pct(result.final_acc)
        if final is None or math.isnan(final):
            raise FloatingPointError("training produced a NaN accuracy (diverged)")
        ev.state, ev.final_acc = "complete", final
        ev.forgetting = _pct(result.forgetting)
        ev.avg_incremental_acc = _pct(result.avg_incremental_acc)
        ev.measured = result.cost
        ev.iterations = int(result.iterations)
        ev.seconds = float(result.seconds)
        with self._lock:
            self.cache[h] = ev
        return ev

    def restore(self, trials: Sequence[optuna.trial.FrozenTrial]) -> None:
        """Refill the cache from a study's finished trained trials (resume)."""
        for t in trials:
            ua = t.user_attrs
            h = ua.get("config_hash")
            if not h or ua.get("prescreened") or h in self.cache:
                continue
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
                self.cache[h] = Evaluation(h, "complete", [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                                           float(t.value), ua.get("forgetting"), ua.get("avg_incremental_acc"),
                                           _cost_from_attrs(ua), float(ua.get("train_seconds", 0.0)), 0, t.number)


def _cost_from_attrs(ua: dict) -> Cost | None:
    figs = {m: Figure(ua[f"measured_{m}"], UNITS[m], "measured") for m in METRICS if ua.get(f"measured_{m}") is not None}
    return Cost(**figs) if figs else None


@dataclass
class Screen:
    """Pre-screen outcome of one candidate."""

    train: bool
    reasons: list[str]


def prescreen(predicted: dict[str, Cost], targets: Sequence[Target], margin: float) -> Screen:
    """Train unless the cost model puts the candidate over budget by more than ``margin`` on every target."""
    reasons, any_ok = [], False
    for t in targets:
        over = []
        for m, b in (t.budgets.budgets.items() if t.budgets else []):
            fig = getattr(predicted[t.key], m)
            if fig is not None and fig.value > b.value * (1.0 + margin):
                over.append(f"{m} {fig.value:.4g} > {b.value:.4g} {UNITS[m]} (+{100 * (fig.value / b.value - 1):.0f}%) on {t.key}")
        reasons += over
        any_ok |= not over
    return Screen(any_ok or not targets, [] if any_ok else reasons)


class Objective:
    """Callable for ``study.optimize``; also the unit the Ray backend runs."""

    def __init__(self, space: SearchSpace, base: RepConfig, targets: Sequence[Target], trainer: Trainer,
                 *, margin: float = 0.1, prescreen: bool = True):
        self.space, self.base, self.targets, self.trainer = space, base, list(targets), trainer
        self.margin, self.use_prescreen = margin, prescreen
        self.num_classes = NUM_CLASSES.get(trainer.scenario.dataset)
        self.deadline: float | None = None     # time.monotonic() after which a training stops at its next task

    # ---- pieces reused by the Ray backend --------------------------------------------------
    def propose(self, trial: optuna.trial.BaseTrial) -> tuple[RepConfig, dict[str, Cost], Screen]:
        """Sample a config, price it on every target and pre-screen it (records attrs)."""
        cfg = self.space.sample(trial, self.base)
        cfg.name = f"{self.space.name}-trial{trial.number}"
        trial.set_user_attr("config", cfg.to_dict())
        trial.set_user_attr("config_hash", config_hash(cfg))
        predicted = {t.key: t.predict(cfg, self.num_classes) for t in self.targets}
        for t in self.targets:
            for m in METRICS:
                fig = getattr(predicted[t.key], m)
                if fig is not None:
                    trial.set_user_attr(f"predicted_{m}@{t.key}", round(fig.value, 6))
                    trial.set_user_attr(f"predicted_source@{t.key}", fig.source)
        screen = prescreen(predicted, self.targets, self.margin) if self.use_prescreen else Screen(True, [])
        if not screen.train and trial.user_attrs.get("role"):
            # reference points (paper default, baseline) are trained anyway: results state gains over both
            trial.set_user_attr("over_budget_reference", "; ".join(screen.reasons))
            screen = Screen(True, [])
        trial.set_user_attr("prescreened", not screen.train)
        if not screen.train:
            trial.set_user_attr("prescreen_reason", "; ".join(screen.reasons))
        return cfg, predicted, screen

    def record_costs(self, trial: optuna.trial.BaseTrial, predicted: dict[str, Cost], measured: Cost | None) -> None:
        """Per-device cost attrs (value + source) and constraints ``cost / budget - 1``."""
        if measured is not None:
            for m in METRICS:
                fig = getattr(measured, m)
                if fig is not None:
                    trial.set_user_attr(f"measured_{m}", round(fig.value, 6))
        for t in self.targets:
            cost = measured if (t.local and measured is not None) else predicted[t.key]
            feasible = True
            for m in METRICS:
                fig = getattr(cost, m) or getattr(predicted[t.key], m)
                if fig is None:
                    continue
                trial.set_user_attr(f"{m}@{t.key}", round(fig.value, 6))
                trial.set_user_attr(f"{m}_source@{t.key}", fig.source)
                b = t.budgets.budgets.get(m) if t.budgets else None
                if b is not None:
                    v = violation(fig.value, b.value)
                    trial.set_constraint(f"{m}@{t.key}", v)
                    feasible &= v <= 0
            trial.set_user_attr(f"feasible@{t.key}", feasible)

    # ---- the objective ---------------------------------------------------------------------
    def __call__(self, trial: optuna.Trial) -> float:
        try:
            cfg, predicted, screen = self.propose(trial)
        except (ValueError, KeyError) as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise
        if not screen.train:
            self.record_costs(trial, predicted, None)
            trial.set_user_attr("trained", False)
            return PRESCREEN_VALUE
        return self.complete(trial, cfg, predicted)

    def complete(self, trial: optuna.trial.BaseTrial, cfg: RepConfig, predicted: dict[str, Cost]) -> float:
        """Train (or replay from the cache) a screened-in config, reporting per task; set constraints."""
        h = config_hash(cfg)
        cached = self.trainer.cached(h)

        def on_task(task: int, acc: float) -> None:
            trial.report(acc, task)
            if self.deadline is not None and time.monotonic() > self.deadline and task < self.trainer.scenario.n_tasks - 1:
                trial.set_user_attr("stopped", "search timeout")
                self.record_costs(trial, predicted, None)
                raise optuna.TrialPruned(f"search timeout after task {task}")
            if trial.should_prune():
                trial.set_user_attr("pruned_at_task", task)
                self.record_costs(trial, predicted, None)
                raise optuna.TrialPruned(f"running accuracy {acc:.2f}% after task {task}")

        if cached is not None:
            trial.set_user_attr("cached_from", cached.trial_number)
            trial.set_user_attr("trained", False)
            for task, acc in enumerate(cached.task_acc):
                trial.report(acc, task)
            if cached.state != "complete":
                self.record_costs(trial, predicted, None)
                raise optuna.TrialPruned("cached: pruned before")
            ev = cached
        else:
            trial.set_user_attr("trained", True)
            try:
                ev = self.trainer.train(cfg, on_task)
            except optuna.TrialPruned:
                done = self.trainer.cached(h)
                if done is not None:
                    done.trial_number = trial.number
                    trial.set_user_attr("train_seconds", round(done.seconds, 3))
                raise
            except Exception as e:   # a crash is a failed trial, not a failed search
                trial.set_user_attr("error", f"{type(e).__name__}: {str(e)[:300]}")
                raise
            ev.trial_number = trial.number
            trial.set_user_attr("train_seconds", round(ev.seconds, 3))
        self.record_costs(trial, predicted, ev.measured)
        trial.set_user_attr("forgetting", ev.forgetting)
        trial.set_user_attr("avg_incremental_acc", ev.avg_incremental_acc)
        return float(ev.final_acc)
