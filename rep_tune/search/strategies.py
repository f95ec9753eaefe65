"""Samplers and pruners behind two registries, each entry an Optuna ``BaseSampler`` /
``BasePruner`` factory: ``--sampler NAME`` and ``--pruner NAME`` (and the CLI's choices) read
``SAMPLERS`` and ``PRUNERS``; adding one is a decorated function here (or in a plug-in module
that imports this one), nothing else.

Samplers read the constraints set through ``record`` from each trial's system attributes
(``FrozenTrial.constraints``; Optuna 5 deprecated ``constraints_func``, so none is passed). The
value is the true accuracy; TPE splits every trial with a positive violation (COMPLETE or PRUNED:
pre-screened trials are PRUNED) into an infeasible group ranked by violation, after the feasible
ones, so it keeps preferring feasible configs. GP and NSGA-II read COMPLETE trials only
(pre-screened ones are invisible to them; see ``record``).

Pruner: ``TaskPercentilePruner`` (default). Continual learning gives one report per task (5 on
the embedded default); the reported value, the running average accuracy over the tasks seen, is
not monotone in the step (it falls as tasks are added), which breaks Hyperband/successive
halving's "more budget, better value" premise, and the steps are not independent instances, so
WilcoxonPruner's paired test has little power with 5 non-independent reports. Comparing each
trial with the other finished trials *at the same task* is sound because every config sees the
same class order: prune below the 25th percentile after task >= 1, once >= 5 trained trials
reported at that task. Prescreened trials report nothing, so they never enter the comparison.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from rep_tune.registry import Registry

STARTUP_TRIALS = 4

SAMPLERS: Registry[Callable[[int | None], BaseSampler]] = Registry("--sampler")
PRUNERS: Registry[Callable[[], BasePruner]] = Registry("--pruner")
_PRUNER_ALIASES = {"task-percentile": "percentile", "nop": "none"}


def register_sampler(name: str) -> Callable:
    """Decorator: ``fn(seed) -> BaseSampler`` becomes ``--sampler name``."""
    def deco(fn: Callable[[int | None], BaseSampler]) -> Callable[[int | None], BaseSampler]:
        return SAMPLERS.add(name, fn)
    return deco


def register_pruner(name: str) -> Callable:
    """Decorator: ``fn() -> BasePruner`` becomes ``--pruner name``."""
    def deco(fn: Callable[[], BasePruner]) -> Callable[[], BasePruner]:
        return PRUNERS.add(name, fn)
    return deco


def make_sampler(name: str, seed: int | None) -> BaseSampler:
    """The registered sampler ``name``, seeded; ValueError naming the registered ones otherwise."""
    make = SAMPLERS.lookup(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return make(seed)


def make_pruner(name: str) -> BasePruner:
    """The registered pruner ``name`` (``task-percentile``/``nop`` are accepted aliases)."""
    return PRUNERS.lookup(_PRUNER_ALIASES.get(name, name))()


# ---- samplers ---------------------------------------------------------------------------------
@register_sampler("tpe")
def _tpe(seed: int | None) -> BaseSampler:
    """Multivariate, grouped for the conditional space, constant liar for parallel workers; few
    random start-up trials: budgets are tens of trained trials, the two enqueued references and
    every pre-screened (free) trial already count as observations."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=STARTUP_TRIALS)


@register_sampler("gp")
def _gp(seed: int | None) -> BaseSampler:
    """GP models the parameters every trial shares; conditional ones (AToM form, ALD on/off) fall
    back to independent random sampling, by design of Optuna's GPSampler."""
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


@register_sampler("nsga2")
def _nsga2(seed: int | None) -> BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)


@register_sampler("random")
def _random(seed: int | None) -> BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


# ---- pruners ----------------------------------------------------------------------------------
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


register_pruner("percentile")(TaskPercentilePruner)


@register_pruner("median")
def _median() -> BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


@register_pruner("wilcoxon")
def _wilcoxon() -> BasePruner:
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1)


@register_pruner("none")
def _none() -> BasePruner:
    return optuna.pruners.NopPruner()
