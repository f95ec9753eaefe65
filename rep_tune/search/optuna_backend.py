"""Optuna pieces of the search: shared storage, trial counting, liveness.

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
* heartbeats (``HEARTBEAT_S``; recorded by the trial loop for every trial it holds, in Optuna's
  own heartbeat table) let any process fail a trial whose process stopped beating for ``GRACE_S``;
* every trial records its owner (``host:pid:start``, see ``record``). Who is dead
  (``fail_dead_trials``, when a run starts or resumes and every ``loop.STALE_CHECK_S``): an owner
  on this host is judged by its pid and start time alone (gone: failed at once, so no RUNNING
  trial outlives its last process, even when the resumed run ends within the grace period; alive:
  never failed, however late its heartbeat); an owner on another host (or unreadable) only by its
  heartbeat, older than ``GRACE_S`` (the hosts' clocks must agree within a few seconds). Failing
  is idempotent: a trial another process finished meanwhile is left as it is;
* the write-ahead log stays small: SQLite checkpoints it every ``WAL_AUTOCHECKPOINT_PAGES`` pages,
  the loop checkpoints it (passively: never waiting) after each finished trial, the search
  truncates it when its loop ends (``checkpoint``), and a reset log is cut back to
  ``WAL_LIMIT_BYTES`` (``journal_size_limit``);
* a full disk (``disk_full``: ENOSPC, or SQLite's "database or disk is full") loses nothing
  committed: every write is one transaction, so the study keeps every finished trial.

``optuna-dashboard sqlite:///<run>/study.db --artifact-dir <run>/artifacts`` opens it as is. SQLite rather than the journal file
because Optuna's JournalStorage has no heartbeat.

Samplers and pruners: ``rep_tune.search.strategies`` (registries).

Budget: ``n_trials`` counts *trained* trials (prescreened and replayed ones are nearly free);
``trial_cap(n_trials)`` caps all trials so an all-infeasible space still stops.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from rep_tune.search import record
from rep_tune.search.strategies import make_pruner, make_sampler
from rep_tune.search.record import RecordWriter, TrialRecord

HEARTBEAT_S = 10
GRACE_S = 30
LOCK_TIMEOUT_S = 60
WAL_AUTOCHECKPOINT_PAGES = 1000              # SQLite's default, stated: ~4 MiB of log between checkpoints
WAL_LIMIT_BYTES = 8 * 1024 * 1024            # a reset log is truncated back to this size
TRUNCATE_WAIT_MS = 2000                      # the closing checkpoint waits this long for readers, then gives up
MAX_TOTAL_FACTOR = 25


def trial_cap(n_trials: int | None) -> int | None:
    """Most trials (of any kind) a search asks for ``n_trials`` trained ones."""
    return None if n_trials is None else MAX_TOTAL_FACTOR * n_trials + 100


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
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        dbapi_connection.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")

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


def checkpoint(storage, *, truncate: bool = False) -> bool:
    """Checkpoint a SQLite study's write-ahead log into the database: passively (copies what no
    reader still needs, never waits), or ``truncate`` (waits up to ``TRUNCATE_WAIT_MS`` for the
    readers, then empties the log file). Best effort: False when it could not (another storage,
    a busy or full disk; nothing is lost, the log keeps what it holds)."""
    storage = getattr(storage, "_backend", storage)        # a study's storage: Optuna's cache around the RDBStorage
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return False
    try:
        raw = engine.raw_connection()            # autocommit (the connect hook): no BEGIN around the pragma
    except Exception:
        return False
    try:
        cur = raw.cursor()
        if truncate:
            cur.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
        try:
            busy, _, _ = cur.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if truncate else 'PASSIVE'})").fetchone()
            return not busy
        finally:
            if truncate:
                cur.execute(f"PRAGMA busy_timeout={LOCK_TIMEOUT_S * 1000}")
    except Exception:
        return False
    finally:
        raw.close()


def disk_full(e: BaseException | None) -> bool:
    """``e`` (or an error it wraps) says the disk is full: an OSError ENOSPC/EDQUOT, or SQLite's
    SQLITE_FULL ("database or disk is full"; SQLAlchemy's OperationalError wraps it as ``orig``)."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in codes:
            return True
        if getattr(x, "sqlite_errorname", None) == "SQLITE_FULL" or "database or disk is full" in str(x):
            return True
        todo += [getattr(x, "orig", None), x.__cause__, x.__context__]
    return False


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


def check_resumable(run_dir: str | Path, study_name: str | None) -> None:
    """Refuse (ValueError naming the folder and what is missing) to resume a run folder whose study
    was deleted, emptied or renamed: resuming would otherwise start a new, empty study there."""
    import sqlite3

    path = Path(run_dir) / "study.db"
    named = f"study {study_name!r}" if study_name else "its study"
    if not path.exists():
        raise ValueError(f"--resume {run_dir}: no study.db there ({named} of run.yaml was deleted or moved); "
                         f"nothing to resume (a new search needs another --run-dir)")
    check_study_file(run_dir)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            names = [r[0] for r in con.execute("SELECT study_name FROM studies")]
    except sqlite3.DatabaseError:            # no studies table: an emptied (or truncated) file
        names = []
    if not names:
        raise ValueError(f"--resume {run_dir}: {path} holds no study ({named} of run.yaml is gone: the file was "
                         f"emptied or replaced); nothing to resume")
    if study_name and study_name not in names:
        raise ValueError(f"--resume {run_dir}: {path} has no study {study_name!r} (the one run.yaml names); it holds "
                         f"{', '.join(map(repr, names[:5]))} (renamed?); nothing to resume")


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
def _stale_heartbeats(study: optuna.Study) -> set[int]:
    """Trial ids whose last heartbeat is older than ``GRACE_S`` (Optuna's heartbeat table, read
    through the ``BaseHeartbeat`` interface ``optuna.storages.fail_stale_trials`` uses: that
    function fails every such trial at once, this process's too, and leaves no room to record why)."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return set()
    return set(storage._get_stale_trial_ids(study._study_id))


def dead_reason(t: FrozenTrial, stale: set[int], now: datetime.datetime | None = None) -> str | None:
    """Why a RUNNING trial's owner is dead, or None while it may be alive (the module docstring's rule)."""
    owner = t.user_attrs.get(record.OWNER)
    alive = record.owner_alive(owner)
    if alive is True:                        # on this host and running: never failed, however late its heartbeat
        return None
    if alive is False:
        return f"its process {owner} is gone"
    if t._trial_id in stale:                 # another host's (or an unreadable owner): judged by its heartbeat
        return f"no heartbeat from {owner or 'its process'} for {GRACE_S} s"
    now = now or datetime.datetime.now()
    if owner is None and t.datetime_start is not None and (now - t.datetime_start).total_seconds() > GRACE_S:
        return "its process stopped before recording itself"
    return None


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose owner is dead (``dead_reason``), each with ``interrupted`` =
    why (not an error: a resumed run trains it again). A trial finished meanwhile by its owner or
    another process is left as it is. Returns the numbers failed here."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    stale = _stale_heartbeats(study)
    now = datetime.datetime.now()
    failed = []
    for t in running:
        why = dead_reason(t, stale, now)
        if why is not None and _fail_interrupted(study, t, why):
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
