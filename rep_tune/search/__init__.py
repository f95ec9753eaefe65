"""Hardware-aware search over REP configs (Optuna; optional Ray Tune driver).

    space.py          SearchSpace: search_spaces/*.yaml -> Optuna distributions -> RepConfig
    budgets.py        absolute / relative-to-baseline budgets, resolved per device
    targets.py        device profiles as search targets; measured vs predicted cost
    objective.py      Trainer (train once per config), prescreen, Objective (constraints, pruning)
    optuna_backend.py storage (SQLite + heartbeat), samplers, TaskPercentilePruner, optimize loop
    ray_backend.py    the same objective driven through Ray workers (ask/tell, constraints kept)
    report.py         best_<device>.yaml, pareto_<device>.csv/.png, trials.csv, summary table
    run.py            search(settings): the whole flow, and resume
"""
from rep_tune.search.budgets import BudgetRequest, DeviceBudgets, parse_budget, resolve
from rep_tune.search.objective import Objective, Trainer, prescreen
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
