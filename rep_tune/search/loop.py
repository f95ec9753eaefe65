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
(``ThreadExecutor``) and Ray (``ray.executor.RayExecutor``) are two executors of this same loop.

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

Executors and study references: ``ThreadExecutor`` shares the driver's study object;
``ray.executor.RayExecutor`` runs trainings as Ray tasks on a local instance or a cluster
(``cluster.py``) and gives each job a ``storage_proxy.ProxyStudyRef`` (the driver's study served
over Optuna's gRPC storage proxy: workers never open the SQLite file). The per-trial steps of the
loop live in ``TrialFlow``, which the Ray Tune searcher (``tune.py``) drives too: one control flow
whether this loop or Tune schedules the trainings.

Budgets: ``n_trials`` counts trained trials in the whole study (every process sharing it): before
each ask the loop counts finished trainings plus trainings in flight anywhere. Counting, asking
and planning happen under ``lock`` (``optuna_backend.planning_lock``: a file lock on the run
folder), so processes on one host plan one trial at a time and the trained count stops at
``n_trials`` exactly. Processes on different hosts (sharing the study through a storage proxy,
without the lock) may overshoot it by at most (number of processes - 1). A reference point waiting
in the queue (``role``; re-enqueued on resume when its trial was interrupted) is asked even when
the budget is spent: references are part of the study's contract (each still counts as one trained
trial, as the original would have). Timeout: no new trial after it; a training in flight stops at
its next task boundary (PRUNED, ``stopped: search timeout``).

Stopping: Ctrl-C, and SIGTERM while ``sigterm_interrupts`` is in force (``Terminated``, a
KeyboardInterrupt), cancel the trainings, fail every trial held (``interrupted`` = "Ctrl-C" /
"SIGTERM": a resumed run trains them again) and re-raise. A full disk (``optuna_backend.disk_full``)
does the same, as far as the disk lets it (a trial it cannot fail is failed on resume: its owner
is gone), and re-raises the error.
"""
from __future__ import annotations

import contextlib
import queue
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ContextManager, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from rep_tune.config import RepConfig
from rep_tune.search import record
from rep_tune.search.objective import CACHED, PRESCREENED, REFUSED, TRAIN, WAIT, Objective, Outcome, Plan, Trainer
from rep_tune.search.optuna_backend import (Heartbeat, StudyRef, checkpoint, count_committed, disk_full,
                                           fail_dead_trials, fail_own_trials, trial_cap)
from rep_tune.search.record import RecordWriter

if TYPE_CHECKING:
    from rep_tune.search.ray.storage_proxy import ProxyStudyRef

STALE_CHECK_S = 15.0
THREAD_PREFIX = "rep-tune-trial-"


def trainings_alive() -> int:
    """Training threads of this process still running (after Ctrl-C they stop at their next task)."""
    return sum(t.name.startswith(THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())
TIMEOUT_STOP = "search timeout"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``sigterm_interrupts``): stops the search as Ctrl-C does; ``exit_code`` 128 + signal."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self.why = signal.Signals(signum).name
        self.exit_code = 128 + int(signum)
        self.message = f"terminated ({self.why}) before the search started; nothing to resume"
        super().__init__(self.message)


_raised: list[KeyboardInterrupt] = []       # the interrupt a signal handler raised last, until delivered


def _interrupt(e: KeyboardInterrupt) -> None:
    _raised[:] = [e]
    raise e


def check_interrupts() -> None:
    """Raise again an interrupt whose signal arrived while Python ran a weakref callback or a
    ``__del__`` (a garbage collection in the main thread, e.g. SQLAlchemy's registry cleanup):
    Python drops the exception raised there, so Ctrl-C would be lost. The trial loop calls this on
    every round and ``run.search`` once more at its end; an interrupt delivered is cleared
    (``_delivered``)."""
    if _raised:
        raise _raised.pop()


def _quiet_dropped_interrupt(previous):
    """An unraisable hook that says nothing of our own pending interrupt (``check_interrupts``
    raises it again, with its one line), and passes anything else to ``previous``."""
    def hook(unraisable):
        if _raised and unraisable.exc_value is _raised[-1]:
            return
        previous(unraisable)
    return hook


def _delivered() -> None:
    _raised.clear()


@contextlib.contextmanager
def sigterm_interrupts():
    """While in force (main thread only; elsewhere it does nothing), SIGTERM raises ``Terminated``
    in the main thread, as SIGINT raises KeyboardInterrupt: the search fails its trials in flight and
    stops resumably. Once: a second SIGTERM during that cleanup is ignored (SIGKILL still ends it).
    SIGINT keeps Python's behaviour (KeyboardInterrupt, every time) when its handler is Python's
    default, but through ``_interrupt``, so that one dropped by Python is raised again by the loop
    (``check_interrupts``). The previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []
    _delivered()

    def handler(signum, _frame):
        if not fired:
            fired.append(signum)
            _interrupt(Terminated(signum))

    def on_sigint(_signum, _frame):
        _interrupt(KeyboardInterrupt())

    previous = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_dropped_interrupt(previous_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        sys.unraisablehook = previous_hook
        _delivered()


@dataclass
class TrainJob:
    """One training to execute (picklable: it travels to Ray workers)."""

    trial_id: int
    number: int
    config: RepConfig
    config_hash: str
    n_tasks: int
    deadline: float | None = None          # time.time() after which the training stops at its next task
    study: StudyRef | ProxyStudyRef | None = None   # how a worker in another process opens the study


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
        if disk_full(e):                     # ... but a full disk stops the search (its trial is not a crash)
            raise
        return Outcome(None, "failed", f"{type(e).__name__}: {e}")


class ThreadExecutor:
    """Local workers: one daemon thread per training, sharing the driver's study and trainer.

    Made in the main thread before any worker starts, it initialises torch's profiler there
    (``runtime.measure.prepare_profiler``): the trainings' CPU memory windows then open in worker
    threads without kineto's "External init callback must run in same thread as registerClient"
    line on stderr, and no worker ever redirects a file descriptor.

    With several workers, each training runs on an equal share of torch's CPU threads until
    ``close`` (``search.parallel.threads_per_run``): 2 workers on 2 threads run 1 thread each, not 2
    each on 2 cores (oversubscribed OpenMP threads run several times slower).
    """

    def __init__(self, study: optuna.Study, trainer: Trainer, n_workers: int = 1):
        self.study, self.trainer, self.slots = study, trainer, max(1, int(n_workers))
        if threading.current_thread() is threading.main_thread():
            from rep_tune.runtime.measure import prepare_profiler
            prepare_profiler()
        self._threads = contextlib.ExitStack()          # torch's threads shared out until close()
        if self.slots > 1:
            from rep_tune.search.parallel import shared_threads
            self._threads.enter_context(shared_threads(self.slots))
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
        """Give torch back the threads it had (once; ``close`` may be called again)."""
        self._threads.close()


def thread_executor(p) -> ThreadExecutor:
    """The ``optuna`` backend's executor (``search.backends``): ``p.settings.n_workers`` threads here."""
    return ThreadExecutor(p.study, p.trainer, p.settings.n_workers)


@dataclass
class LoopResult:
    stopped_by_cap: bool = False
    lost: list[int] = field(default_factory=list)      # trials another process finished under us
    interrupted: list[int] = field(default_factory=list)


class TrialFlow:
    """The loop's steps for one study: ask and plan a trial under ``lock``, finish at once the plans
    that need no training, keep WAIT plans aside, finish trainings, fail interrupted ones.

    Two drivers use it, so the control flow lives here once: ``run_trials`` (which hands TRAIN
    plans to an executor and waits) and the Ray Tune searcher (``search.ray.tune``: Tune asks for a
    config, runs it and reports back). ``beat`` records heartbeats of the trials held.
    """

    def __init__(self, study: optuna.Study, objective: Objective, beat: Heartbeat, *, n_trials: int | None,
                 deadline: float | None = None, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 lock: Callable[[], ContextManager] = contextlib.nullcontext, out=sys.stderr):
        self.study, self.objective, self.beat = study, objective, beat
        self.n_trials, self.deadline, self.on_trial, self.lock, self.out = n_trials, deadline, on_trial, lock, out
        self.cap = trial_cap(n_trials)
        self.result = LoopResult()
        self.waiting: list[Plan] = []
        self.asked: list[optuna.Trial] = []      # asked, not yet planned or handed on (failed on Ctrl-C)
        self._last_check = time.monotonic()

    def want_more(self) -> bool:
        """Budget left: before the deadline, under the trial cap, fewer than ``n_trials`` committed."""
        study = self.study
        if self.deadline is not None and time.time() > self.deadline:
            return False
        trials = study.get_trials(deepcopy=False)
        if self.cap is not None and len(trials) >= self.cap:
            self.result.stopped_by_cap = True
            return False
        if self.n_trials is None or count_committed(study) < self.n_trials:
            return True
        return any(t.state == TrialState.WAITING and t.user_attrs.get(record.ROLE) for t in trials)

    def check_stale(self, force: bool = False) -> None:
        """Every ``STALE_CHECK_S``: fail trials whose process is gone (any process sharing the study)."""
        if force or time.monotonic() - self._last_check > STALE_CHECK_S:
            fail_dead_trials(self.study)
            self._last_check = time.monotonic()

    def done(self, plan: Plan) -> None:
        self.beat.discard(plan.trial._trial_id)
        checkpoint(self.study._storage)      # passive: the log stays small over a long run, never waits
        if self.on_trial is not None:
            self.on_trial(self.study, self.study._storage.get_trial(plan.trial._trial_id))

    def guarded(self, plan: Plan | None, action: Callable[[], None]) -> None:
        """Run a finishing action; a trial another process already failed (heartbeat lapse) is noted."""
        try:
            action()
        except optuna.exceptions.UpdateFinishedTrialError:
            if plan is not None:
                self.result.lost.append(plan.number)
                print(f"rep-tune search: trial {plan.number} was finished by another process meanwhile; "
                      "its result is kept in this process only", file=self.out)

    def settle(self, plan: Plan) -> Plan | None:
        """Finish a plan that needs no training (pre-screened, refused, cached) or keep a WAIT plan
        aside; returns a TRAIN plan, for the caller to run."""
        objective, study = self.objective, self.study
        if plan.kind == TRAIN:
            return plan
        if plan.kind == WAIT:
            self.waiting.append(plan)
            return None
        if plan.kind == PRESCREENED:
            self.guarded(plan, lambda: objective.finish_prescreened(study, plan))
        elif plan.kind == REFUSED:
            self.guarded(plan, lambda: objective.finish_refused(study, plan))
        elif plan.kind == CACHED:
            self.guarded(plan, lambda: objective.replay(study, plan))
        self.done(plan)
        return None

    def _ask_and_plan(self) -> Plan | None:
        study = self.study
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")    # the loop beats, not optimize()
            trial = study.ask()
        self.asked.append(trial)
        self.beat.add(trial._trial_id)
        try:
            return self.objective.plan(study, trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.result.lost.append(trial.number)
            self.beat.discard(trial._trial_id)
            return None
        except Exception as e:               # a bug in planning fails the trial, not the search
            if disk_full(e):                 # ... a full disk stops the search (the trial is not refused)
                raise
            plan = Plan(REFUSED, trial, reason=f"{type(e).__name__}: {e}")
            self.guarded(plan, lambda: RecordWriter.of(trial).error(plan.reason))
            return plan

    def step(self) -> tuple[bool, Plan | None]:
        """Ask and plan one trial if the budget allows: (budget left, a TRAIN plan or None). The
        trial stays in ``asked`` until the caller has handed the plan on (``asked.clear()``)."""
        with self.lock():
            more = self.want_more()
            plan = self._ask_and_plan() if more else None
        if plan is not None:
            plan = self.settle(plan)
        return more, plan

    def ready(self) -> list[Plan]:
        """WAIT plans decided again: CACHED ones are finished here; TRAIN ones are returned."""
        out = []
        for plan in list(self.waiting):
            with self.lock():
                nxt = self.objective.recheck(self.study, plan)
            if nxt is not None:
                self.waiting.remove(plan)
                nxt = self.settle(nxt)
                if nxt is not None:
                    out.append(nxt)
        return out

    def job(self, plan: Plan, study_ref: StudyRef | None = None) -> TrainJob:
        return TrainJob(plan.trial._trial_id, plan.number, plan.config, plan.config_hash, self.objective.n_tasks,
                        self.deadline, study_ref)

    def finish(self, plan: Plan, outcome: Outcome) -> None:
        """A training's outcome: record it, tell Optuna, let go of the trial."""
        self.guarded(plan, lambda: self.objective.finish(self.study, plan, outcome))
        self.done(plan)

    def interrupt(self, held: list[Plan], why: str) -> None:
        """Fail the trials in flight, waiting, or asked and not yet handed on (not counted as trained:
        a resumed run trains them again)."""
        plans = {p.trial._trial_id: p for p in [*held, *self.waiting]}
        for t in self.asked:
            plans.setdefault(t._trial_id, Plan(REFUSED, t))
        for plan in plans.values():
            self.result.interrupted.append(plan.number)
            try:                         # best effort: a resumed run fails them anyway (owner gone)
                self.objective.interrupted(self.study, plan, why)
            except Exception:
                pass
            self.beat.discard(plan.trial._trial_id)


def run_trials(study: optuna.Study, objective: Objective, executor: Executor, *, n_trials: int | None,
               timeout: float | None = None, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
               lock: Callable[[], ContextManager] = contextlib.nullcontext, out=sys.stderr) -> LoopResult:
    """Ask, plan and finish trials until ``n_trials`` trained trials exist in the study, the trial cap,
    or ``timeout`` seconds; trainings run on ``executor``. Ctrl-C fails the trials in flight
    (``interrupted``; a resumed run trains them again) and re-raises KeyboardInterrupt."""
    deadline = None if timeout is None else time.time() + timeout
    running: dict[Hashable, Plan] = {}
    study_ref = getattr(executor, "study_ref", None)
    with Heartbeat(study) as beat:
        flow = TrialFlow(study, objective, beat, n_trials=n_trials, deadline=deadline, on_trial=on_trial,
                         lock=lock, out=out)
        try:
            flow.check_stale(force=True)
            while True:
                check_interrupts()               # one Python dropped in a weakref callback
                flow.check_stale()
                for plan in flow.ready():
                    running[executor.submit(flow.job(plan, study_ref))] = plan
                while len(running) < executor.slots:
                    more, plan = flow.step()
                    if not more:
                        break
                    if plan is not None:
                        running[executor.submit(flow.job(plan, study_ref))] = plan
                    flow.asked.clear()
                if not running and not flow.waiting:
                    check_interrupts()
                    break
                for handle, outcome in executor.wait(timeout=0.5 if flow.waiting else 2.0):
                    plan = running.pop(handle, None)
                    if plan is not None:
                        flow.finish(plan, outcome)
        except KeyboardInterrupt as e:
            _delivered()
            _stop(executor, flow, running, getattr(e, "why", "Ctrl-C"))
            raise
        except Exception as e:
            if disk_full(e):                     # as far as the disk lets it; a resume fails the rest
                _stop(executor, flow, running, "disk full", attempts=2)
            raise
        finally:
            executor.close()
    return flow.result


def _stop(executor: Executor, flow: TrialFlow, running: dict[Hashable, Plan], why: str, attempts: int = 20) -> None:
    """Cancel the trainings and fail every trial held (``interrupted`` = ``why``)."""
    executor.cancel()
    flow.interrupt(list(running.values()), why)
    executor.close()
    fail_own_trials(flow.study, why, attempts)   # whatever the bookkeeping above missed
