"""Optuna pieces of the search: shared storage, samplers, TaskPercentilePruner, trial counting, liveness.

Storage: SQLite (``<run>/study.db``) through RDBStorage, opened so that several workers and
processes can share it (``rep-tune search --resume RUN`` in another shell joins the study):

* write-ahead logging (``journal_mode=WAL``, ``synchronous=NORMAL``): a commit costs microseconds
  instead of an fsync (~10 ms; a trial writes ~25 attributes), readers never wait for the writer,
  and a killed process loses nothing it committed. WAL needs every process on one host (shared
  memory): workers on other nodes must reach the study through a storage proxy, not the file;
* every transaction starts with ``BEGIN IMMEDIATE`` (it takes SQLite's write lock up front). Optuna
  claims an enqueued trial with a read-check-write (``SELECT ... FOR UPDATE``, which SQLite
  ignores) and numbers new trials by counting; under SQLite's default deferred transactions two
  processes could both claim the same enqueued trial (the loser then aborted with "Cannot tell a
  COMPLETE trial") or get the same number. Immediate transactions make both atomic. The lock
  wait is 60 s.
* heartbeats (``HEARTBEAT_S``; recorded by the trial loop for every trial it holds) let any
  process fail a trial whose process stopped beating for ``GRACE_S`` (another host's, too);
* every trial records its owner (``host:pid:start``, see ``record``): a RUNNING trial whose owner
  on this host is gone is failed at once when a run starts or resumes (``fail_dead_trials``), so no
  RUNNING trial outlives its last process, even when the resumed run ends within the grace period.

``optuna-dashboard sqlite:///<run>/study.db`` opens it as is. SQLite rather than the journal file
because Optuna's JournalStorage has no heartbeat.

Pruner: ``TaskPercentilePruner``. Continual learning gives one report per task (5 on the
embedded default); the reported value, the running average accuracy over the tasks seen, is
not monotone in the step (it falls as tasks are added), which breaks Hyperband/successive
halving's "more budget, better value" premise, and the steps are not independent instances, so
WilcoxonPruner's paired test has little power with 5 non-independent reports. Comparing each
trial with the other finished trials *at the same task* is sound because every config sees the
same class order: prune below the 25th percentile after task >= 1, once >= 5 trained trials
reported at that task. Prescreened trials report nothing, so they never enter the comparison.

Budget: ``n_trials`` counts *trained* trials (prescreened and replayed ones are nearly free);
``trial_cap(n_trials)`` caps all trials so an all-infeasible space still stops.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from rep_tune.search import record
from rep_tune.search.record import RecordWriter, TrialRecord

HEARTBEAT_S = 10
GRACE_S = 30
LOCK_TIMEOUT_S = 60
MAX_TOTAL_FACTOR = 25
SAMPLERS = ("tpe", "gp", "nsga2", "random")
PRUNERS = ("percentile", "median", "wilcoxon", "none")
STARTUP_TRIALS = 4


def trial_cap(n_trials: int | None) -> int | None:
    """Most trials (of any kind) a search asks for ``n_trials`` trained ones."""
    return None if n_trials is None else MAX_TOTAL_FACTOR * n_trials + 100


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


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """TPE (default; multivariate, grouped for the conditional space, constant liar for parallel
    workers), GP, NSGA-II or random. All read the constraints set through ``record``."""
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
    raise ValueError(f"--pruner: expected one of {', '.join(PRUNERS)}, found {name!r}")


# ---- storage ---------------------------------------------------------------------------------
def storage_url(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def _immediate_transactions(engine) -> None:
    """SQLite: every transaction begins with BEGIN IMMEDIATE (see the module docstring)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None          # pysqlite: let SQLAlchemy's BEGIN through
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()                                     # pooled connections made before the hooks


def open_storage_url(url: str) -> optuna.storages.RDBStorage:
    """RDBStorage for ``url`` with heartbeats; SQLite URLs get immediate transactions and a 60 s lock wait."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sqlite = url.startswith("sqlite")
    kwargs = {"connect_args": {"timeout": LOCK_TIMEOUT_S}} if sqlite else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                             grace_period=GRACE_S)
    if sqlite:
        _immediate_transactions(storage.engine)
    return storage


def file_lock(path: Path):
    """An exclusive lock among the processes and threads of one host on ``path`` (``filelock``'s
    ``FileLock``: ``flock`` on POSIX). A new lock object per use, so two threads of one process
    exclude each other too; a context manager."""
    from filelock import FileLock

    return FileLock(str(path))


def _creation_lock(run_dir: Path):
    """Serialise creating the database and the study among processes starting on one run folder
    (Optuna's schema creation is not safe against a concurrent one)."""
    return file_lock(run_dir / ".study.lock")


def planning_lock(run_dir: str | Path):
    """Held by a process's trial loop while it counts, asks and plans one trial, so that processes
    sharing a run folder on one host plan one at a time: the trained count then stops at
    ``n_trials`` exactly, and the claim protocol never has to wait for an undecided claim."""
    return lambda: file_lock(Path(run_dir) / ".plan.lock")


def check_study_file(run_dir: str | Path) -> None:
    """Refuse, naming it, a ``study.db`` that is not a readable Optuna study (before any work)."""
    import sqlite3

    path = Path(run_dir) / "study.db"
    if not path.exists():
        return
    if not path.is_file():
        raise ValueError(f"{path}: expected an Optuna study database (a file), found a folder")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path}: expected an Optuna study database (SQLite), found an unreadable file ({e})") from None
    if tables and "studies" not in tables:
        raise ValueError(f"{path}: expected an Optuna study database, found SQLite tables {sorted(tables)[:5]}")


def open_storage(run_dir: str | Path) -> optuna.storages.RDBStorage:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_study_file(run_dir)
    with _creation_lock(run_dir):
        return open_storage_url(storage_url(run_dir))


def open_study(run_dir: str | Path, study_name: str, sampler: str, seed: int | None, pruner: str) -> tuple[optuna.Study, bool]:
    """Create the study, or join it when it exists; ``created`` is True for exactly one process.

    Creation is atomic (the study name is unique in the storage), so the creator alone enqueues
    the reference points and writes the study's attributes.
    """
    storage = open_storage(run_dir)
    kw = dict(storage=storage, study_name=study_name, sampler=make_sampler(sampler, seed), pruner=make_pruner(pruner))
    with _creation_lock(Path(run_dir)):
        try:
            study = optuna.create_study(direction="maximize", load_if_exists=False, **kw)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(**kw)
            created = False
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([record.OBJECTIVE_NAME])
    return study, created


class StudyRef:
    """How a worker elsewhere (a Ray task) reaches the study: storage URL, study name, pruner."""

    def __init__(self, url: str, study_name: str, pruner: str):
        self.url, self.study_name, self.pruner = url, study_name, pruner

    def open(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=open_storage_url(self.url),
                                 pruner=make_pruner(self.pruner))


# ---- counting --------------------------------------------------------------------------------
def is_trained(t: FrozenTrial) -> bool:
    """A finished trial that paid for a training (see ``TrialRecord.paid``)."""
    return TrialRecord.read(t).paid


def count_trained(study: optuna.Study) -> int:
    return sum(is_trained(t) for t in study.get_trials(deepcopy=False))


def count_committed(study: optuna.Study) -> int:
    """Trained trials plus trainings in flight in any process (RUNNING, decided to train, owner not gone)."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        r = TrialRecord.read(t)
        if r.paid or (r.state == TrialState.RUNNING and r.trained and record.owner_alive(r.owner) is not False):
            n += 1
    return n


def _fail_interrupted(study: optuna.Study, t: FrozenTrial, why: str) -> bool:
    """FAIL a RUNNING trial with ``interrupted`` = ``why`` (not an error: a resumed run trains it
    again). False when another process finished it first."""
    try:
        RecordWriter(study._storage, t._trial_id).interrupted(why)
        return bool(study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


# ---- liveness --------------------------------------------------------------------------------
def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose owner process (on this host) is gone, and trials whose heartbeat
    stopped for ``GRACE_S`` (any host); each gets ``interrupted`` (not an error: a resumed run
    trains it again). Returns the numbers failed here."""
    failed = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(record.OWNER)
        unowned = owner is None and t.datetime_start is not None and (now - t.datetime_start).total_seconds() > GRACE_S
        if record.owner_alive(owner) is False or unowned:
            why = f"its process {owner} is gone" if owner else "its process stopped before recording itself"
            if _fail_interrupted(study, t, why):
                failed.append(t.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number in before - after and record.INTERRUPTED not in t.user_attrs:
            RecordWriter(study._storage, t._trial_id).interrupted(f"no heartbeat for {GRACE_S} s")
            failed.append(t.number)
    return failed


def fail_own_trials(study: optuna.Study, why: str, attempts: int = 20) -> list[int]:
    """Fail every RUNNING trial this process owns (``record.OWNER``), with ``interrupted`` = ``why``.

    The last step of an interrupted loop: whatever the loop's own bookkeeping missed (a trial
    between being asked and handed to a worker, a write that lost a busy-database race with a
    training thread still stopping), no trial of a process that exits stays RUNNING. Retries a
    storage error a few times (SQLite under load); returns the numbers failed here.
    """
    me = record.this_process()
    failed: list[int] = []
    for attempt in range(attempts):
        try:
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.user_attrs.get(record.OWNER) == me and _fail_interrupted(study, t, why):
                    failed.append(t.number)
            return failed
        except Exception:                    # a locked database: the training threads are still letting go
            time.sleep(0.05 * (attempt + 1))
    return failed


class Heartbeat:
    """One thread per process recording a heartbeat for every trial the loop holds."""

    def __init__(self, study: optuna.Study, interval: float = HEARTBEAT_S):
        self.storage, self.interval = study._storage, interval
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rep-tune-heartbeat", daemon=True)

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.add(trial_id)
        self._beat(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _beat(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception:       # a finished trial, a locked database: the next beat retries
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for i in ids:
                self._beat(i)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
