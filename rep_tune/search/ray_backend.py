"""Ray executor (``--backend ray``): the search's one trial loop, with trainings run as Ray tasks.

Ray Tune's ``Tuner`` + ``OptunaSearch`` passes no constraints to Optuna and cannot skip a
candidate before it is scheduled, so it would lose both the constraints and the pre-screening.
The driver therefore keeps Optuna and the loop (``loop.run_trials``: ask, plan, pre-screen,
replay, tell) and uses Ray only to execute trainings: ``submit`` starts a ``ray.remote`` task that
opens the study through ``job.study`` (a ``StudyRef``), runs ``loop.run_job`` (per-task reports
through a real ``optuna.Trial``, so the pruner works) and returns an ``Outcome``; the driver
records it and tells. A worker process that dies gives a failed trial, and the search goes on.

Locally: ``ray.init(num_cpus=n_workers, include_dashboard=False)``. With ``RAY_ADDRESS`` set the
driver joins that cluster; the workers open the SQLite study, so the run folder must then be on a
file system every node sees. Trainings that share a machine contaminate each other's *measured*
latency; predicted costs are unaffected.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Hashable

import optuna

from rep_tune.search.loop import TrainJob, run_job
from rep_tune.search.objective import Outcome, Trainer
from rep_tune.search.optuna_backend import StudyRef


def _remote_job(job: TrainJob, trainer: Trainer) -> Outcome:
    """Runs in a Ray worker."""
    return run_job(job, trainer, job.study.open())


class RayExecutor:
    """Executes ``TrainJob``s as Ray tasks (one CPU each); ``slots`` of them at once."""

    def __init__(self, study: optuna.Study, trainer: Trainer, study_ref: StudyRef, n_workers: int = 1):
        import ray

        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init(include_dashboard=False, log_to_driver=False)
            else:   # local workers import what this driver imports (a train_fn defined next to the caller too)
                path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
                ray.init(num_cpus=max(1, n_workers), include_dashboard=False, log_to_driver=False,
                         configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
        self.slots = max(1, int(n_workers))
        self.study_ref = study_ref
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_remote_job)
        self._trainer = ray.put(trainer)
        self._refs: dict = {}

    def submit(self, job: TrainJob) -> Hashable:
        ref = self._remote.remote(job, self._trainer)
        self._refs[ref] = job
        return ref

    def wait(self, timeout: float) -> list[tuple[Hashable, Outcome]]:
        import ray

        if not self._refs:
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        out = []
        for ref in ready:
            self._refs.pop(ref, None)
            try:
                out.append((ref, ray.get(ref)))
            except Exception as e:           # the worker process died (RayTaskError / WorkerCrashedError)
                cause = getattr(e, "cause", None) or e
                out.append((ref, Outcome(None, "failed", f"Ray worker lost: {type(cause).__name__}: {cause}")))
        return out

    def cancel(self) -> None:
        import ray

        for ref in list(self._refs):
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass

    def close(self) -> None:
        self._refs.clear()
