"""Hardware-aware search over REP configs: one trial loop, Optuna storage, local-thread or Ray executors.

    space.py          SearchSpace: search_spaces/*.yaml -> Optuna distributions -> RepConfig
    budgets.py        absolute / relative-to-baseline budgets per device (iterates figures.METRICS)
    targets.py        devices as targets: the deployment each prices on (proxy accuracy, deployment cost)
    record.py         the trial record: every attribute key, how it is written and read (TrialRecord)
    objective.py      Trainer (one training), prescreen, Objective (plan each trial, finish it)
    loop.py           run_trials: the one trial loop; the Executor interface; ThreadExecutor
    backends.py       the executor backends (registry): optuna (local threads), ray
    ray/              everything that imports Ray (``pip install rep-tune[ray]``):
      executor.py       RayExecutor: the same loop, trainings as Ray tasks
      cluster.py        which Ray: a local instance or a cluster (--address), probed in bounded time
      storage_proxy.py  the driver's study served to Ray workers over Optuna's gRPC storage proxy
      tune.py           Ray Tune: RepSearcher (the constrained study as a Tune Searcher), rep_trainable
    optuna_backend.py shared SQLite storage, counting, liveness
    strategies.py     samplers and pruners (registries; TaskPercentilePruner)
    report.py         best_<device>.yaml, pareto_<device>.csv/.png, trials.csv, summary table
    run.py            SearchSettings (the defaults) and search(settings): the whole flow, resume, join
"""
from rep_tune.search.budgets import BudgetRequest, DeviceBudgets, parse_budget, resolve
from rep_tune.search.objective import Objective, Trainer, prescreen
from rep_tune.search.record import TrialRecord
from rep_tune.search.space import SearchSpace, config_hash
from rep_tune.search.targets import Target, load_targets

__all__ = [
    "BudgetRequest",
    "DeviceBudgets",
    "Objective",
    "SearchSettings",
    "SearchSpace",
    "Target",
    "Trainer",
    "TrialRecord",
    "config_hash",
    "load_targets",
    "parse_budget",
    "prescreen",
    "resolve",
    "search",
]


def __getattr__(name):
    if name in ("search", "SearchSettings"):
        from rep_tune.search import run
        return getattr(run, name)
    raise AttributeError(name)
