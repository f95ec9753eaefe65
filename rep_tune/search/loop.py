"""The one trial loop of a search, and the executor interface trainings run behind.

    while the budget allows:
        trial = study.ask()                       (an enqueued reference first, else the sampler's)
        plan  = objective.plan(study, trial)      sample, price on every target, pre-screen, decide
        refused / prescreened / cached   -> finished here, at once (never trained)
        wait                             -> kept aside until the same config's result exists
        train                            -> executor.submit(TrainJob)
    as trainings finish: objective.finish(plan, outcome) -> record, constraints, tell

The loop owns the control flow (planning, replay, constraints, tell, budgets, timeout, Ctrl-C,
heartbeats, failing dead trials); an executor only *executes* trainings. Local worker threads
(``ThreadExecutor``) and Ray (``ray_backend.RayExecutor``) are two executors of this same loop.

Executor interface::

    class Executor(Protocol):
        slots: int                                            # trainings it runs at once
        def submit(self, job: TrainJob) -> Hashable: ...      # start one training; a handle
        def wait(self, timeout: float) -> list[tuple[Hashable, Outcome]]: ...
                                                              # trainings finished since the last call
                                                              # (empty after ``timeout`` seconds)
        def cancel(self) -> None: ...                         # stop every training at its next task
                                                              # boundary (Ctrl-C); results are dropped
        def close(self) -> None: ...

A ``TrainJob`` carries what a worker needs: the config, the trial (id, number), the deadline
(wall clock: a training stops at its next task boundary past it) and a ``StudyRef`` saying how to
reach the study from another process. The worker-side body is ``run_job(job, trainer, study)``
for every executor: it trains through ``Trainer.train`` and, after each task, reports the running
accuracy on the trial and asks the study's pruner; it writes nothing else, and returns an
``Outcome`` (complete / pruned / failed, never raising). An executor that loses a worker (a killed
process) returns ``Outcome(None, "failed", why)`` for its job; the search goes on.

Adding Ray-cluster features (``--address``, resources per trial, the gRPC storage proxy so that
workers need no shared file system, a Ray Tune searcher feeding asks) means a new executor or a
new ``StudyRef`` (e.g. one that opens ``optuna.storages.GrpcStorageProxy``); the loop is unchanged.

Budgets: ``n_trials`` counts trained trials in the whole study (every process sharing it): before
each ask the loop counts finished trainings plus trainings in flight anywhere. Counting, asking
and planning happen under ``lock`` (``optuna_backend.planning_lock``: a file lock on the run
folder), so processes on one host plan one trial at a time and the trained count stops at
``n_trials`` exactly. Processes on different hosts (sharing the study through a storage proxy,
without the lock) may overshoot it by at most (number of processes - 1). Timeout: no new trial after
it; a training in flight stops at its next task boundary (PRUNED, ``stopped: search timeout``).
"""
from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Hashable
from typing import ContextManager
from dataclasses import dataclass, field
from typing import Protocol

import optuna
from optuna.trial import FrozenTrial

from rep_tune.config import RepConfig
from rep_tune.search.objective import CACHED, PRESCREENED, REFUSED, TRAIN, WAIT, Objective, Outcome, Plan, Trainer
from rep_tune.search.optuna_backend import Heartbeat, StudyRef, count_committed, fail_dead_trials, trial_cap
from rep_tune.search.record import RecordWriter

STALE_CHECK_S = 15.0
THREAD_PREFIX = "rep-tune-trial-"


def trainings_alive() -> int:
    """Training threads of this process still running (after Ctrl-C they stop at their next task)."""
    return sum(t.name.startswith(THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())
TIMEOUT_STOP = "search timeout"


@dataclass
class TrainJob:
    """One training to execute (picklable: it travels to Ray workers)."""

    trial_id: int
    number: int
    config: RepConfig
    config_hash: str
    n_tasks: int
    deadline: float | None = None          # time.time() after which the training stops at its next task
    study: StudyRef | None = None          # how a worker in another process reaches the study


class Executor(Protocol):
    slots: int

    def submit(self, job: TrainJob) -> Hashable: ...

    def wait(self, timeout: float) -> list[tuple[Hashable, Outcome]]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


class Aborted(Exception):
    """The executor was cancelled (Ctrl-C): the training stops at its task boundary."""


def run_job(job: TrainJob, trainer: Trainer, study: optuna.Study, abort: threading.Event | None = None) -> Outcome:
    """Worker side of every executor: train, report per task, ask the pruner; never raises."""
    trial = optuna.Trial(study, job.trial_id)
    stop: dict = {}

    def on_task(task: int, acc: float) -> None:
        trial.report(acc, task)
        if abort is not None and abort.is_set():
            raise Aborted()
        if task >= job.n_tasks - 1:          # the result is complete: nothing left to save
            return
        if job.deadline is not None and time.time() > job.deadline:
            stop.update(task=task, stopped=TIMEOUT_STOP)
            raise optuna.TrialPruned(f"{TIMEOUT_STOP} after task {task}")
        if trial.should_prune():
            stop.update(task=task)
            raise optuna.TrialPruned(f"running accuracy {acc:.4f} after task {task}")

    try:
        ev = trainer.train(job.config, on_task)
        return Outcome(ev, "complete")
    except optuna.TrialPruned as e:
        ev = getattr(e, "evaluation", None)
        if ev is not None:
            ev.pruned_at_task = None if stop.get("stopped") else stop.get("task")
            ev.stopped = stop.get("stopped")
        return Outcome(ev, "pruned", str(e))
    except Aborted:
        return Outcome(None, "failed", "cancelled")
    except Exception as e:                   # a crash is a failed trial, not a failed search
        return Outcome(None, "failed", f"{type(e).__name__}: {e}")


class ThreadExecutor:
    """Local workers: one daemon thread per training, sharing the driver's study and trainer."""

    def __init__(self, study: optuna.Study, trainer: Trainer, n_workers: int = 1):
        self.study, self.trainer, self.slots = study, trainer, max(1, int(n_workers))
        self._done: queue.Queue = queue.Queue()
        self._abort = threading.Event()

    def submit(self, job: TrainJob) -> Hashable:
        threading.Thread(target=self._run, args=(job,), name=f"{THREAD_PREFIX}{job.number}", daemon=True).start()
        return job.trial_id

    def _run(self, job: TrainJob) -> None:
        try:
            outcome = run_job(job, self.trainer, self.study, self._abort)
        except BaseException as e:           # KeyboardInterrupt / SystemExit from a train_fn: the driver re-raises it
            self._done.put((job.trial_id, e))
            return
        self._done.put((job.trial_id, outcome))

    def wait(self, timeout: float) -> list[tuple[Hashable, Outcome]]:
        try:
            items = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self._done.get_nowait())
            except queue.Empty:
                break
        for _, item in items:
            if isinstance(item, BaseException):
                raise item
        return items

    def cancel(self) -> None:
        self._abort.set()

    def close(self) -> None:
        pass


@dataclass
class LoopResult:
    stopped_by_cap: bool = False
    lost: list[int] = field(default_factory=list)      # trials another process finished under us
    interrupted: list[int] = field(default_factory=list)


def run_trials(study: optuna.Study, objective: Objective, executor: Executor, *, n_trials: int | None,
               timeout: float | None = None, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
               lock: Callable[[], ContextManager] = contextlib.nullcontext, out=sys.stderr) -> LoopResult:
    """Ask, plan and finish trials until ``n_trials`` trained trials exist in the study, the trial cap,
    or ``timeout`` seconds; trainings run on ``executor``. Ctrl-C fails the trials in flight
    (``interrupted``; a resumed run trains them again) and re-raises KeyboardInterrupt."""
    result = LoopResult()
    deadline = None if timeout is None else time.time() + timeout
    cap = trial_cap(n_trials)
    running: dict[Hashable, Plan] = {}
    waiting: list[Plan] = []
    last_check = time.monotonic()

    def want_more() -> bool:
        if deadline is not None and time.time() > deadline:
            return False
        if cap is not None and len(study.get_trials(deepcopy=False)) >= cap:
            result.stopped_by_cap = True
            return False
        return n_trials is None or count_committed(study) < n_trials

    def done(plan: Plan) -> None:
        beat.discard(plan.trial._trial_id)
        if on_trial is not None:
            on_trial(study, study._storage.get_trial(plan.trial._trial_id))

    def guarded(plan: Plan | None, action: Callable[[], None]) -> None:
        """Run a finishing action; a trial another process already failed (heartbeat lapse) is noted."""
        try:
            action()
        except optuna.exceptions.UpdateFinishedTrialError:
            if plan is not None:
                result.lost.append(plan.number)
                print(f"rep-tune search: trial {plan.number} was finished by another process meanwhile; "
                      "its result is kept in this process only", file=out)

    def dispatch(plan: Plan) -> None:
        if plan.kind == TRAIN:
            job = TrainJob(plan.trial._trial_id, plan.number, plan.config, plan.config_hash, objective.n_tasks,
                           deadline, study_ref)
            running[executor.submit(job)] = plan
            return
        if plan.kind == WAIT:
            waiting.append(plan)
            return
        if plan.kind == PRESCREENED:
            guarded(plan, lambda: objective.finish_prescreened(study, plan))
        elif plan.kind == REFUSED:
            guarded(plan, lambda: objective.finish_refused(study, plan))
        elif plan.kind == CACHED:
            guarded(plan, lambda: objective.replay(study, plan))
        done(plan)

    def ask_and_plan() -> Plan | None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")    # the loop beats, not optimize()
            trial = study.ask()
        asked.append(trial)
        beat.add(trial._trial_id)
        try:
            return objective.plan(study, trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            result.lost.append(trial.number)
            beat.discard(trial._trial_id)
            return None
        except Exception as e:               # a bug in planning fails the trial, not the search
            plan = Plan(REFUSED, trial, reason=f"{type(e).__name__}: {e}")
            guarded(plan, lambda: RecordWriter.of(trial).error(plan.reason))
            return plan

    study_ref = getattr(executor, "study_ref", None)
    asked: list[optuna.Trial] = []
    with Heartbeat(study) as beat:
        try:
            fail_dead_trials(study)
            while True:
                if time.monotonic() - last_check > STALE_CHECK_S:
                    fail_dead_trials(study)
                    last_check = time.monotonic()
                for plan in list(waiting):
                    with lock():
                        nxt = objective.recheck(study, plan)
                    if nxt is not None:
                        waiting.remove(plan)
                        dispatch(nxt)
                while len(running) < executor.slots:
                    with lock():
                        more = want_more()
                        plan = ask_and_plan() if more else None
                    if not more:
                        break
                    if plan is not None:
                        dispatch(plan)
                    asked.clear()
                if not running and not waiting:
                    break
                for handle, outcome in executor.wait(timeout=0.5 if waiting else 2.0):
                    plan = running.pop(handle, None)
                    if plan is None:
                        continue
                    guarded(plan, lambda: objective.finish(study, plan, outcome))
                    done(plan)
        except KeyboardInterrupt:
            executor.cancel()
            held = {p.trial._trial_id: p for p in [*running.values(), *waiting]}
            for t in asked:                  # asked, not yet planned or dispatched
                held.setdefault(t._trial_id, Plan(REFUSED, t))
            for plan in held.values():
                result.interrupted.append(plan.number)
                try:                         # best effort: a resumed run fails them anyway (owner gone)
                    objective.interrupted(study, plan, "Ctrl-C")
                except Exception:
                    pass
            raise
        finally:
            executor.close()
    return result

