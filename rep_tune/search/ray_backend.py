"""Ray backend (``--backend ray``): the same objective, trainings run as Ray tasks.

Ray Tune's ``Tuner`` + ``OptunaSearch`` passes no constraints to Optuna and cannot skip a
candidate before it is scheduled, so it would lose both the constraints and the pre-screening.
This driver therefore keeps Optuna in charge (ask/tell) and uses Ray only to run trainings:

    ask -> propose (sample, price, pre-screen) in the driver
        -> ruled out: tell as infeasible at once (never scheduled)
        -> cached config: replayed in the driver
        -> otherwise: a ``ray.remote`` task opens the same study storage, reports per task through
           a real ``optuna.Trial`` (so the pruner works), sets the constraints and returns
    tell(value | PRUNED | FAIL) in the driver when the task ends.

Locally: ``ray.init(num_cpus=n_workers, include_dashboard=False)``. On a cluster, start Ray
(``ray start --head`` / ``--address``), set ``RAY_ADDRESS``, and put the run folder on a file
system every node sees (the SQLite study is opened by the workers). Trainings that share a
machine contaminate each other's *measured* latency; predicted costs are unaffected.
"""
from __future__ import annotations

import os
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from rep_tune.config import RepConfig
from rep_tune.search.objective import PRESCREEN_VALUE, Objective
from rep_tune.search.optuna_backend import MAX_TOTAL_FACTOR, TrainedBudget, count_trained, make_pruner
from rep_tune.search.space import config_hash


def _train_remote(objective: Objective, storage_url: str, study_name: str, trial_id: int, cfg: dict,
                  predicted: dict, pruner: str) -> tuple[float, Any]:
    """Runs in a Ray worker: train through a real Trial on the shared storage."""
    from pathlib import Path

    from rep_tune.search.optuna_backend import open_storage

    run_dir = Path(storage_url.removeprefix("sqlite:///")).parent
    study = optuna.load_study(study_name=study_name, storage=open_storage(run_dir), pruner=make_pruner(pruner))
    trial = optuna.Trial(study, trial_id)
    config = RepConfig.from_dict(cfg)
    value = objective.complete(trial, config, predicted)
    return value, objective.trainer.cached(config_hash(config))


def optimize_ray(study: optuna.Study, objective: Objective, run_dir, *, n_trials: int | None, timeout: float | None,
                 n_workers: int = 1, pruner: str = "percentile") -> TrainedBudget:
    """Ask/tell loop with trainings on Ray; stops at ``n_trials`` trained trials or ``timeout``."""
    import ray

    from rep_tune.search.optuna_backend import storage_url

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, n_workers), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(_train_remote)
    url = storage_url(run_dir)
    budget = TrainedBudget(n_trials)
    running: dict[Any, optuna.Trial] = {}
    start, asked = time.monotonic(), 0
    cap = None if n_trials is None else MAX_TOTAL_FACTOR * n_trials + 100

    def want_more() -> bool:
        if timeout is not None and time.monotonic() - start > timeout:
            return False
        if cap is not None and len(study.get_trials(deepcopy=False)) >= cap:
            budget.stopped_by_cap = True
            return False
        return n_trials is None or count_trained(study) + len(running) < n_trials

    import warnings
    warnings.filterwarnings("ignore", message="Heartbeat of storage")   # ask/tell: the driver owns trial states
    while True:
        while len(running) < n_workers and want_more():
            trial = study.ask()
            asked += 1
            try:
                cfg, predicted, screen = objective.propose(trial)
            except Exception as e:    # a bad combination is a failed trial
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
                study.tell(trial, state=TrialState.FAIL)
                continue
            if not screen.train:
                objective.record_costs(trial, predicted, None)
                trial.set_user_attr("trained", False)
                study.tell(trial, PRESCREEN_VALUE)
            elif objective.trainer.cached(config_hash(cfg)) is not None:
                _tell(study, trial, lambda: objective.complete(trial, cfg, predicted))
            else:
                trial.set_user_attr("trained", True)
                ref = remote.remote(objective, url, study.study_name, trial._trial_id, cfg.to_dict(), predicted,
                                    pruner)
                running[ref] = trial
        if not running:
            break
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            trial = running.pop(ref)

            def result(ref=ref):
                value, ev = ray.get(ref)
                if ev is not None:
                    objective.trainer.cache[ev.config_hash] = ev
                return value
            _tell(study, trial, result)
    return budget


def _tell(study: optuna.Study, trial: optuna.Trial, get_value) -> None:
    try:
        study.tell(trial, get_value())
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except Exception as e:      # RayTaskError wraps the worker's exception; the trial fails, not the search
        cause = getattr(e, "cause", None)
        if isinstance(cause, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
            return
        if "error" not in study.storage.get_trial(trial._trial_id).user_attrs:
            trial.set_user_attr("error", f"{type(cause or e).__name__}: {str(cause or e)[:300]}")
        study.tell(trial, state=TrialState.FAIL)
