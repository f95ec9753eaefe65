"""Optuna backend: storage, sampler, pruner, and the optimize loop with a trained-trial budget.

Storage: SQLite (``<run>/study.db``) through RDBStorage with a lock timeout of 60 s and a
heartbeat (a killed worker's RUNNING trial is failed by the next worker after ``GRACE_S``).
Several processes may share it (``rep-tune search --resume RUN`` in another shell joins the
study); ``optuna-dashboard sqlite:///<run>/study.db`` opens it as is. SQLite rather than the
journal file because Optuna's JournalStorage has no heartbeat.

Pruner: ``TaskPercentilePruner``. Continual learning gives one report per task (5 on the
embedded default); the reported value, the running average accuracy over the tasks seen, is
not monotone in the step (it falls as tasks are added), which breaks Hyperband/successive
halving's "more budget, better value" premise, and the steps are not independent instances, so
WilcoxonPruner's paired test has little power with 5 non-independent reports. Comparing each
trial with the other finished trials *at the same task* is sound because every config sees the
same class order: prune below the 25th percentile after task >= 1, once >= 5 trained trials
reported at that task. Prescreened trials report nothing, so they never enter the comparison.

Budget: ``n_trials`` counts *trained* trials (prescreened and cache-replayed ones are nearly
free); ``MAX_TOTAL_FACTOR`` caps all trials so an all-infeasible space still stops.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_S = 10
GRACE_S = 30
MAX_TOTAL_FACTOR = 25
SAMPLERS = ("tpe", "gp", "nsga2", "random")


class TaskPercentilePruner(BasePruner):
    """Prune a trial whose running accuracy after task t is below the ``percentile`` of other trials' at t."""

    def __init__(self, percentile: float = 25.0, min_trials: int = 5, warmup_tasks: int = 1):
        self.percentile, self.min_trials, self.warmup_tasks = percentile, min_trials, warmup_tasks

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.warmup_tasks:
            return False
        others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if step in t.intermediate_values and not math.isnan(t.intermediate_values[step])]
        if len(others) < self.min_trials:
            return False
        return trial.intermediate_values[step] < float(np.percentile(others, self.percentile))


STARTUP_TRIALS = 4


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """TPE (default; multivariate, grouped for the conditional space, constant liar for parallel
    workers), GP, NSGA-II or random. All read the constraints set with ``trial.set_constraint``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # few random start-up trials: budgets are tens of trained trials, the two enqueued
            # references and every pre-screened (free) trial already count as observations
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=STARTUP_TRIALS)
        if name == "gp":
            # GP models the parameters every trial shares; conditional ones (AToM form, ALD on/off) fall
            # back to independent random sampling, by design of Optuna's GPSampler
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"--sampler: expected one of {', '.join(SAMPLERS)}, found {name!r}")


def make_pruner(name: str) -> BasePruner:
    if name in ("percentile", "task-percentile"):
        return TaskPercentilePruner()
    if name in ("none", "nop"):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    raise ValueError(f"--pruner: expected percentile, median, wilcoxon or none, found {name!r}")


def storage_url(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def open_storage(run_dir: str | Path) -> optuna.storages.RDBStorage:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            storage_url(run_dir), engine_kwargs={"connect_args": {"timeout": 60}},
            heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


def open_study(run_dir: str | Path, study_name: str, sampler: str, seed: int | None, pruner: str) -> optuna.Study:
    return optuna.create_study(storage=open_storage(run_dir), study_name=study_name, direction="maximize",
                               sampler=make_sampler(sampler, seed), pruner=make_pruner(pruner), load_if_exists=True)


def is_trained(t: FrozenTrial) -> bool:
    """A trial that paid for training (not prescreened, not replayed from the cache).

    A trial that crashed in training counts (its cost was paid); one interrupted by a kill or
    Ctrl-C (FAIL without an ``error`` attribute) does not, so a resumed run retrains it.
    """
    if not t.user_attrs.get("trained") or not t.state.is_finished():
        return False
    return t.state != TrialState.FAIL or "error" in t.user_attrs


def count_trained(study: optuna.Study) -> int:
    return sum(is_trained(t) for t in study.get_trials(deepcopy=False))


class TrainedBudget:
    """Callback: stop once ``n_trials`` trials were trained (or all trials reach the cap)."""

    def __init__(self, n_trials: int | None, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None):
        self.n_trials, self.on_trial = n_trials, on_trial
        self.cap = None if n_trials is None else MAX_TOTAL_FACTOR * n_trials + 100
        self.stopped_by_cap = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.on_trial is not None:
            self.on_trial(study, trial)
        if self.n_trials is None:
            return
        trials = study.get_trials(deepcopy=False)
        if sum(is_trained(t) for t in trials) >= self.n_trials:
            study.stop()
        elif len(trials) >= self.cap:
            self.stopped_by_cap = True
            study.stop()


def optimize(study: optuna.Study, objective: Callable, *, n_trials: int | None, timeout: float | None,
             n_workers: int = 1, callbacks: Sequence[Callable] = (),
             on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> TrainedBudget:
    """Run until ``n_trials`` trained trials exist in the study (all workers together) or ``timeout``."""
    budget = TrainedBudget(n_trials, on_trial)
    if n_trials is not None and count_trained(study) >= n_trials:
        return budget
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=None, timeout=timeout, n_jobs=n_workers, catch=(Exception,),
                   callbacks=[budget, *callbacks], gc_after_trial=False, show_progress_bar=False)
    return budget
