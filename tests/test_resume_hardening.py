"""Long runs: references survive interruptions, dead owners on other hosts, SIGTERM, a full disk, a lost study.

Trainings are replaced at the Trainer seam by ``search_fakes.FakeTrain`` (or, for the command
line, ``rep_tune.runtime.learner.train`` is replaced by one); everything else is real: SQLite
storage, the sampler, the loop, the CLI, and a separate OS process for SIGTERM and ENOSPC.
"""
from __future__ import annotations

import collections
import errno
import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from rep_tune.cli import main
from rep_tune.data.scenario import Scenario
from rep_tune.search import optuna_backend, record, run
from rep_tune.search.optuna_backend import fail_dead_trials, open_study, storage_url
from rep_tune.search.record import RecordWriter
from rep_tune.search.run import DiskFull, SearchSettings, prepare, search

sys.path.insert(0, str(Path(__file__).parent))
from search_fakes import PROXY, FakeTrain, wait_for_training, write_space  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")   # trials asked by hand

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _settings(tmp: Path, **kw) -> SearchSettings:
    base = dict(confirm_seeds=0, devices=["jetson_orin"], space=write_space(tmp / "space.yaml"), backbone=PROXY,
                scenario=Scenario(n_tasks=2), n_trials=3, timeout=None, n_workers=1, run_dir=str(tmp / "run"),
                progress=False, seed=0)
    base.update(kw)
    return SearchSettings(**base)


def _records(run_dir: Path) -> list[record.TrialRecord]:
    return record.read_all(optuna.load_study(study_name=None, storage=storage_url(run_dir)).trials)


def _dead_owner() -> str:
    """An owner on this host whose process is gone (the parent's pid with another start time)."""
    owner = f"{socket.gethostname()}:{os.getppid()}:1"
    assert record.owner_alive(owner) is False
    return owner


def _cli_args(tmp: Path, run_dir: Path, n_trials: int = 3) -> list[str]:
    scenario = tmp / "scenario.yaml"
    scenario.write_text("n_tasks: 3\n")
    return ["search", "--device", "jetson_orin", "--space", write_space(tmp / "space.yaml"), "--backbone", PROXY,
            "--scenario", str(scenario), "--n-trials", str(n_trials), "--n-workers", "1", "--timeout", "0",
            "--no-confirm", "--no-progress", "--threads", "1", "--run-dir", str(run_dir)]


def _spawn_cli(argv: list[str], tmp: Path, fake: str) -> subprocess.Popen:
    """``rep-tune search`` in another process, its training replaced by ``fake`` (Python source)."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            f"from search_fakes import FakeTrain\n"
            f"import rep_tune.runtime.learner as learner\n"
            f"learner.train = {fake}\n"
            f"from rep_tune.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=open(tmp / "stdout", "w"),
                            stderr=open(tmp / "stderr", "w"))


# ---- references ------------------------------------------------------------------------------
def test_an_interrupted_reference_is_trained_again_exactly_once(tmp_path):
    s = _settings(tmp_path)
    p = prepare(s, train_fn=FakeTrain(0.01), out=io.StringIO())
    paper, baseline = p.study.ask(), p.study.ask()
    assert (paper.user_attrs[record.ROLE], baseline.user_attrs[record.ROLE]) == ("paper", "baseline")
    dead = _dead_owner()
    for t in (paper, baseline):
        RecordWriter.of(t).owner(dead)
        RecordWriter.of(t).decided(True)
    # the paper preset: left RUNNING by a killed process; the baseline: already failed as interrupted
    # by an earlier resume that did not enqueue it again (the bug: "baseline not trained" forever)
    RecordWriter.of(baseline).interrupted("Ctrl-C")
    p.study.tell(baseline, state=TrialState.FAIL)

    fake, out = FakeTrain(0.01, str(tmp_path / "log")), io.StringIO()
    outcome = search(SearchSettings.resume(tmp_path / "run", progress=False), train_fn=fake, out=out)
    recs = record.read_all(outcome.study.get_trials())
    by_role = collections.defaultdict(list)
    for r in recs:
        if r.role:
            by_role[r.role].append(r)
    assert {role: [(r.number, r.state) for r in rs] for role, rs in by_role.items()} == {
        "paper": [(0, TrialState.FAIL), (2, TrialState.COMPLETE)],
        "baseline": [(1, TrialState.FAIL), (3, TrialState.COMPLETE)]}
    assert "is gone" in recs[0].interrupted and recs[1].interrupted == "Ctrl-C"
    assert by_role["paper"][1].paid and by_role["baseline"][1].paid
    # each reference's config trained once (the log counts every training start)
    trained = collections.Counter(f.name.split(".")[0] for f in (tmp_path / "log").iterdir())
    assert trained[by_role["paper"][1].config_hash] == 1 and trained[by_role["baseline"][1].config_hash] == 1
    assert sum(r.paid for r in recs) == 3 and not [r for r in recs if r.state == TrialState.RUNNING]
    assert out.getvalue().count("was cut off before its result: enqueued again") == 2
    # settled now: a further resume enqueues nothing
    refs = run.reference_configs(p.space, p.objective.base, s)
    assert run.ensure_references(outcome.study, refs, tmp_path / "run", out=io.StringIO()) == []


def test_two_concurrent_resumes_enqueue_a_reference_once(tmp_path, monkeypatch):
    s = _settings(tmp_path)
    p = prepare(s, train_fn=FakeTrain(0.01), out=io.StringIO())
    for t in (p.study.ask(), p.study.ask()):                 # both references interrupted
        RecordWriter.of(t).owner(_dead_owner())
        RecordWriter.of(t).decided(True)
        RecordWriter.of(t).interrupted("SIGTERM")
        p.study.tell(t, state=TrialState.FAIL)
    refs = run.reference_configs(p.space, p.objective.base, s)
    enqueue = optuna.Study.enqueue_trial

    def slow_enqueue(self, *a, **kw):                        # widen the check-then-enqueue window
        time.sleep(0.3)
        return enqueue(self, *a, **kw)

    monkeypatch.setattr(optuna.Study, "enqueue_trial", slow_enqueue)
    barrier, results = threading.Barrier(2), []

    def resume():
        study, created = open_study(tmp_path / "run", s.study_name, "tpe", 0, "none")
        assert not created
        barrier.wait()
        results.append(run.ensure_references(study, refs, tmp_path / "run", out=io.StringIO()))

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(role for r in results for role in r) == ["baseline", "paper"]
    waiting = collections.Counter(r.role for r in _records(tmp_path / "run") if r.state == TrialState.WAITING)
    assert waiting == {"paper": 1, "baseline": 1}


# ---- dead owners -----------------------------------------------------------------------------
def _other_host_trial(study: optuna.Study, host: str, heartbeat_age_s: float | None) -> optuna.Trial:
    t = study.ask()
    RecordWriter.of(t).owner(f"{host}:4242:0")
    RecordWriter.of(t).decided(True)
    study._storage.record_heartbeat(t._trial_id)
    if heartbeat_age_s:
        with sqlite3.connect(Path(study._storage._backend.url.removeprefix("sqlite:///"))) as con:
            con.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, ?) WHERE trial_id = ?",
                        (f"-{int(heartbeat_age_s)} seconds", t._trial_id))
    return t


def test_a_dead_owner_on_another_host_is_failed_on_resume_without_exit_70(tmp_path, monkeypatch, capsys):
    search(_settings(tmp_path, n_trials=2), train_fn=FakeTrain(0.01), out=io.StringIO())
    study = optuna.load_study(study_name=None, storage=optuna_backend.open_storage(tmp_path / "run"))
    stale = _other_host_trial(study, "elsewhere.example", heartbeat_age_s=3600)
    fresh = _other_host_trial(study, "elsewhere.example", heartbeat_age_s=None)
    monkeypatch.setattr("rep_tune.runtime.learner.train", FakeTrain(0.01))
    rc = main(["search", "--resume", str(tmp_path / "run"), "--n-trials", "4", "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc in (0, 1), err                                 # was 70: UpdateFinishedTrialError
    assert "UpdateFinishedTrialError" not in err and "internal error" not in err
    recs = {r.number: r for r in _records(tmp_path / "run")}
    assert recs[stale.number].state == TrialState.FAIL and not recs[stale.number].paid
    why = f"no heartbeat from elsewhere.example:4242:0 for {optuna_backend.GRACE_S} s"
    assert recs[stale.number].interrupted == why
    assert recs[fresh.number].state == TrialState.RUNNING    # its heartbeat is fresh: alive, left alone


def test_failing_a_trial_finished_meanwhile_is_a_no_op(tmp_path, monkeypatch):
    study, _ = open_study(tmp_path, "s", "random", 0, "none")
    a = _other_host_trial(study, "elsewhere.example", heartbeat_age_s=3600)
    b = _other_host_trial(study, "elsewhere.example", heartbeat_age_s=3600)
    stale_ids = study._storage._get_stale_trial_ids

    def owner_finishes_b_meanwhile(study_id):
        ids = stale_ids(study_id)
        study.tell(b, 0.5)                                   # b's owner tells its result just now
        return ids

    monkeypatch.setattr(study._storage, "_get_stale_trial_ids", owner_finishes_b_meanwhile)
    assert fail_dead_trials(study) == [a.number]
    ta, tb = study.trials
    assert ta.state == TrialState.FAIL and "no heartbeat" in ta.user_attrs[record.INTERRUPTED]
    assert tb.state == TrialState.COMPLETE and tb.value == 0.5 and record.INTERRUPTED not in tb.user_attrs
    mine = study.ask()                                       # this process's own trial: never failed for its heartbeat
    RecordWriter.of(mine).owner()
    study._storage.record_heartbeat(mine._trial_id)
    monkeypatch.setattr(study._storage, "_get_stale_trial_ids", lambda study_id: [mine._trial_id])
    assert fail_dead_trials(study) == [] and study.trials[2].state == TrialState.RUNNING


# ---- SIGTERM ---------------------------------------------------------------------------------
def test_sigterm_is_one_line_exit_143_and_resumable(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    proc = _spawn_cli(_cli_args(tmp_path, run_dir), tmp_path, "FakeTrain(0.7)")
    wait_for_training(run_dir, proc, limit=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    err = (tmp_path / "stderr").read_text()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("terminated (SIGTERM): ") and lines[0].endswith(f"--resume {run_dir}")
    recs = _records(run_dir)
    assert not [r for r in recs if r.state == TrialState.RUNNING]          # failed, not left RUNNING
    cut = [r for r in recs if r.state == TrialState.FAIL]
    assert cut and all(r.interrupted == "SIGTERM" and not r.paid for r in cut)

    monkeypatch.setattr("rep_tune.runtime.learner.train", FakeTrain(0.01))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["search", "--resume", str(run_dir), "--no-progress", "--threads", "1"]) in (0, 1)
    recs = _records(run_dir)
    assert sum(r.paid for r in recs) == 3 and not [r for r in recs if r.state == TrialState.RUNNING]
    assert {r.role for r in recs if r.scored and r.role} == {"paper", "baseline"}
    assert signal.getsignal(signal.SIGTERM) is before                         # restored after the search


# ---- a full disk -----------------------------------------------------------------------------
def _sqlite_full():
    import sqlalchemy.exc

    return sqlalchemy.exc.OperationalError("UPDATE trial_user_attributes ...", {},
                                           sqlite3.OperationalError("database or disk is full"))


def test_a_full_database_stops_the_search_resumably(tmp_path, monkeypatch):
    result, calls = RecordWriter.result, []

    def result_then_full(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise _sqlite_full()
        return result(self, *a, **kw)

    monkeypatch.setattr(RecordWriter, "result", result_then_full)
    run_dir = tmp_path / "run"
    with pytest.raises(DiskFull) as e:
        search(_settings(tmp_path), train_fn=FakeTrain(0.01), out=io.StringIO())
    assert e.value.exit_code == 75
    assert e.value.message == (f"disk full under {run_dir}: free at least {run.space_needed_mib(run_dir)} MiB there "
                               f"and rerun with --resume {run_dir} (every finished trial is kept in "
                               f"{run_dir / 'study.db'})")
    recs = _records(run_dir)
    assert [(r.number, r.state) for r in recs] == [(0, TrialState.COMPLETE), (1, TrialState.FAIL)]
    assert recs[0].paid and recs[1].interrupted == "disk full" and not recs[1].paid
    monkeypatch.setattr(RecordWriter, "result", result)
    search(SearchSettings.resume(run_dir, progress=False), train_fn=FakeTrain(0.01), out=io.StringIO())
    recs = _records(run_dir)
    assert sum(r.paid for r in recs) == 3 and recs[0].state == TrialState.COMPLETE
    assert not (run_dir / "study.db-wal").exists() or (run_dir / "study.db-wal").stat().st_size == 0   # truncated


def test_a_full_disk_while_planning_is_not_a_refused_trial(tmp_path, monkeypatch):
    planned, calls = RecordWriter.planned, []

    def planned_then_full(self, *a, **kw):                   # as Optuna raises it: StorageInternalError from SQLite's
        calls.append(1)
        if len(calls) == 2:
            try:
                raise _sqlite_full()
            except Exception as e:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e
        return planned(self, *a, **kw)

    monkeypatch.setattr(RecordWriter, "planned", planned_then_full)
    with pytest.raises(DiskFull, match="disk full under "):
        search(_settings(tmp_path), train_fn=FakeTrain(0.01), out=io.StringIO())
    recs = _records(tmp_path / "run")
    assert [(r.number, r.state, r.paid) for r in recs] == [(0, TrialState.COMPLETE, True), (1, TrialState.FAIL, False)]
    assert recs[1].interrupted == "disk full" and recs[1].error is None     # not refused: a resume plans it again


def test_enospc_in_a_training_exits_75_naming_the_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    fake = "FakeTrain(0.01); import errno; _t = learner.train\n" \
           "def _train(config, scenario, **kw):\n" \
           "    if _t.calls >= 1: raise OSError(errno.ENOSPC, 'No space left on device')\n" \
           "    return _t(config, scenario, **kw)\n" \
           "learner.train = _train"
    proc = _spawn_cli(_cli_args(tmp_path, run_dir), tmp_path, fake)
    assert proc.wait(timeout=120) == 75, (tmp_path / "stderr").read_text()
    lines = [ln for ln in (tmp_path / "stderr").read_text().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"rep-tune search: disk full under {run_dir}: free at least ")
    assert f"--resume {run_dir}" in lines[0]
    recs = _records(run_dir)
    assert [(r.state, r.paid) for r in recs] == [(TrialState.COMPLETE, True), (TrialState.FAIL, False)]
    assert recs[1].interrupted == "disk full" and recs[1].error is None      # not a crash: a resume trains it


def test_too_little_free_space_is_refused_before_any_work(tmp_path, monkeypatch, capfd):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20))
    monkeypatch.setattr("rep_tune.runtime.learner.train", FakeTrain(0.01))      # a regression fails fast
    run_dir = tmp_path / "run"
    assert main(_cli_args(tmp_path, run_dir)) == 75
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"rep-tune search: disk full under {run_dir}: free at least {run.MIN_FREE_MIB} MiB there and run "
                   f"the search again (10 MiB free now)"]
    assert not (run_dir / "study.db").exists()


def test_the_free_space_check_and_disk_full_errors():
    assert optuna_backend.disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert optuna_backend.disk_full(_sqlite_full())
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing trials.csv") from inner
    except RuntimeError as outer:
        assert optuna_backend.disk_full(outer)
    assert not optuna_backend.disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not optuna_backend.disk_full(sqlite3.OperationalError("database is locked"))


# ---- a lost study ----------------------------------------------------------------------------
def test_resume_refuses_a_deleted_emptied_or_renamed_study(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("rep_tune.runtime.learner.train", FakeTrain(0.01))      # a regression fails fast
    s = _settings(tmp_path)
    p = prepare(s, train_fn=FakeTrain(0.01), out=io.StringIO())
    assert optuna_backend.checkpoint(p.study._storage, truncate=True)      # the whole study in study.db
    run_dir = tmp_path / "run"
    keep = tmp_path / "study.db.bak"
    shutil.copy(run_dir / "study.db", keep)
    for f in run_dir.glob("study.db-*"):
        f.unlink()

    def refused() -> str:
        assert main(["search", "--resume", str(run_dir), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"rep-tune search: error: --resume {run_dir}: ")
        return err[0]

    (run_dir / "study.db").unlink()
    assert "no study.db there" in refused() and not (run_dir / "study.db").exists()   # not restarted as a new study
    (run_dir / "study.db").write_bytes(b"")
    assert "holds no study" in refused() and (run_dir / "study.db").stat().st_size == 0
    shutil.copy(keep, run_dir / "study.db")
    with sqlite3.connect(run_dir / "study.db") as con:
        con.execute("UPDATE studies SET study_name = 'something-else'")
    message = refused()
    assert f"has no study {s.study_name!r}" in message and "'something-else'" in message and "renamed" in message
