"""Issue 19's proof, re-run as a user would: every hostile input and every interruption goes
through the real ``rep-tune`` command in its own process (real training, no fakes), and the
command, its exit code and its message are printed and written to
``benchmarks/results/resilience_<host>.txt``.

1. Hostile inputs: the cases of ``tests/test_fuzz.py`` that issue 19 lists (``--set`` paths into
   values, 10^400, devices that do not exist, duplicate keys, missing data paths, hostile pickles,
   IDX files, image folders and checkpoints, parse errors), each as ``rep-tune ...`` in a subprocess.
2. SIGTERM while the paper-preset reference trains: one line, exit 143; ``--resume`` trains the
   reference again (the "enqueued again" note) and ends with it COMPLETE.
3. kill -9 mid-training, the dead trial's owner rewritten to another host with a stale heartbeat
   (what a crash on another node of a shared file system leaves): ``--resume`` fails it and goes on.
4. A full disk (a small tmpfs, when this process may mount one): refused before the start below
   ``MIN_FREE_MIB``; filled mid-search: exit 75 naming the folder; freed: ``--resume`` finishes.
5. ``--resume`` on a folder whose study was deleted: refused, exit 2.

Run: python benchmarks/resilience_demo.py   (~6 min on 2 cores)
"""
from __future__ import annotations

import platform
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from rep_tune.search import optuna_backend, record  # noqa: E402
from rep_tune.search.run import MIN_FREE_MIB  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CLI = [sys.executable, "-m", "rep_tune.cli"]
# the fuzz corpus's cases for each of issue 19's items (ids in tests/test_fuzz.py)
INPUT_CASES = {
    "5. bad inputs exit 2 (were 70)": [
        "set-path-into-string", "set-path-into-list", "set-int-10e400", "train-device-tpu",
        "train-device-cuda-absent", "pth-broadcast-view-4tib", "search-set-bad-yaml"],
    "6. silent wrong acceptances": [
        "set-duplicate-key", "config-duplicate-nested-key", "config-duplicate-json-key",
        "train-data-path-missing-fashion", "flag-search-resume-no-run-yaml"],
    "7. hostile data files": [
        "folder-symlink-loops-and-fifo", "cifar-train-bytearray-4gib", "idx-gzip-longer-than-header",
        "idx-header-claims-85gb", "pth-zip-bomb"],
    "8. messages that leak or mislead": [
        "pth-code-no-advice", "config-parse-error-quotes-no-line", "config-json-error-quotes-no-line"],
}
LOG: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LOG.append(line)


def shown(argv: list[str], tmp: Path) -> str:
    return "rep-tune " + " ".join(shlex.quote(a.replace(str(tmp), "$TMP")) for a in argv)


def last_lines(text: str, tmp: Path, n: int = 2) -> str:
    lines = [ln.replace(str(tmp), "$TMP") for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def run(argv: list[str], tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + argv, cwd=tmp, capture_output=True, text=True, timeout=timeout)


# ---- 1. hostile inputs ---------------------------------------------------------------------------------
def inputs(base: Path) -> None:
    import test_fuzz
    cases = {c.id: c for c in test_fuzz.CASES}
    for item, ids in INPUT_CASES.items():
        say(f"## {item}")
        for cid in ids:
            tmp = base / cid
            tmp.mkdir(parents=True)
            argv, fragment = cases[cid].build(tmp)
            t0 = time.perf_counter()
            p = run(argv, tmp, timeout=120)
            secs = time.perf_counter() - t0
            out = p.stdout + p.stderr
            ok = p.returncode == 2 and "Traceback" not in out and fragment.replace(str(tmp), "$TMP") in \
                out.replace(str(tmp), "$TMP")
            absent = cases[cid].absent
            if absent and absent in out:
                ok = False
            say(f"- {cid}: `{shown(argv, tmp)}`")
            say(f"  exit {p.returncode} in {secs:.1f} s{'' if ok else '  <-- NOT AS EXPECTED'}: "
                f"{last_lines(p.stderr or p.stdout, tmp, 1)}")
        say()


# ---- 2-5. interruptions ----------------------------------------------------------------------------------
def search_argv(run_dir: Path, n_trials: int = 3, *extra: str) -> list[str]:
    return ["search", "--device", "jetson_orin", "--n-trials", str(n_trials), "--no-confirm", "--no-progress",
            "--threads", "1", "--iters-per-task", "4", "--run-dir", str(run_dir), *extra]


def records(run_dir: Path) -> list[record.TrialRecord]:
    study = optuna.load_study(study_name=None, storage=optuna_backend.open_storage(run_dir))
    return record.read_all(study.get_trials())


def wait_until(proc: subprocess.Popen, run_dir: Path, cond, limit: float = 300) -> None:
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if (run_dir / "study.db").exists():
            try:
                if cond(records(run_dir)):
                    return
            except Exception:       # the study being created
                continue
    raise SystemExit(f"the condition never held (rc {proc.poll()})")


def spawn(argv: list[str], tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def roles(run_dir: Path) -> str:
    return ", ".join(f"trial {r.number} {r.role or 'search'} {r.state.name}"
                     + (f" ({r.interrupted})" if r.interrupted else "") for r in records(run_dir))


def resume(run_dir: Path, tmp: Path, shown_text, prefix: str = "") -> subprocess.CompletedProcess:
    """``rep-tune search --resume run_dir``: print the command, its exit code, the line
    ``shown_text(result)`` picks, and the study's trials after it."""
    argv = ["search", "--resume", str(run_dir), "--no-progress", "--threads", "1"]
    r = run(argv, tmp, timeout=600)
    say(f"- {prefix}`{shown(argv, tmp)}`")
    say(f"  exit {r.returncode}: {last_lines(shown_text(r), tmp, 1)}")
    say(f"  study: {roles(run_dir)}")
    return r


def sigterm_reference(tmp: Path) -> None:
    say("## 1 + 4. SIGTERM while the paper-preset reference trains, then --resume")
    run_dir = tmp / "sigterm"
    argv = search_argv(run_dir)
    p = spawn(argv, tmp)
    wait_until(p, run_dir, lambda rs: any(r.role == "paper" and r.state == TrialState.RUNNING for r in rs))
    time.sleep(3)                                   # inside its training
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    say(f"- `{shown(argv, tmp)}`, SIGTERM while trial 0 (paper) trains")
    say(f"  exit {p.returncode}: {last_lines(err, tmp, 1)}")
    say(f"  study: {roles(run_dir)}")
    resume(run_dir, tmp, lambda r: " ".join(ln for ln in r.stdout.splitlines() if "enqueued again" in ln)
           or "(no note)")
    say()


def other_host(tmp: Path) -> None:
    say("## 2. kill -9 mid-training; the trial's owner then belongs to another host with a stale heartbeat")
    run_dir = tmp / "otherhost"
    argv = search_argv(run_dir)
    p = spawn(argv, tmp)
    wait_until(p, run_dir, lambda rs: any(r.state == TrialState.RUNNING and r.trained for r in rs))
    time.sleep(2)
    p.kill()
    p.communicate()
    study = optuna.load_study(study_name=None, storage=optuna_backend.open_storage(run_dir))
    running = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    with sqlite3.connect(run_dir / "study.db") as con:
        for t in running:
            con.execute("UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = ?",
                        ('"elsewhere.example:4242:0"', t._trial_id, record.OWNER))
            con.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-3600 seconds') "
                        "WHERE trial_id = ?", (t._trial_id,))
    say(f"- `{shown(argv, tmp)}`, kill -9 while trial {[t.number for t in running]} trains; "
        f"owner set to elsewhere.example:4242:0, heartbeat 1 h old")
    resume(run_dir, tmp, lambda r: r.stdout if r.returncode == 0 else r.stderr)
    say()


def full_disk(tmp: Path) -> None:
    say("## 3. a full disk (tmpfs)")
    mnt = tmp / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True).returncode:
        say("- skipped: this process cannot mount a tmpfs (tests/test_resume_hardening.py covers it with a fake)")
        return
    try:
        argv = search_argv(mnt / "run")
        r = run(argv, tmp)
        say(f"- a 20 MiB file system (< MIN_FREE_MIB {MIN_FREE_MIB}): `{shown(argv, tmp)}`")
        say(f"  exit {r.returncode}: {last_lines(r.stderr, tmp, 1)}")
    finally:
        unmount(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MIN_FREE_MIB + 30}m", "tmpfs", str(mnt)], check=True)
    try:
        run_dir = mnt / "run"
        argv = search_argv(run_dir, 4)
        p = spawn(argv, tmp)
        wait_until(p, run_dir, lambda rs: sum(r.paid for r in rs) >= 1)
        filler = mnt / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
        out, err = p.communicate(timeout=600)
        say(f"- `{shown(argv, tmp)}` on a {MIN_FREE_MIB + 30} MiB file system, filled after the first trained trial")
        say(f"  exit {p.returncode}: {last_lines(err, tmp, 1)}")
        wal = run_dir / "study.db-wal"
        say(f"  study.db {(run_dir / 'study.db').stat().st_size / 1024:.0f} KiB, "
            f"WAL {wal.stat().st_size / 1024 if wal.exists() else 0:.0f} KiB; study: {roles(run_dir)}")
        filler.unlink()
        resume(run_dir, tmp, lambda r: r.stdout if r.returncode == 0 else r.stderr, prefix="filler removed; ")
    finally:
        unmount(mnt)
    say()


def unmount(path: Path) -> None:
    """umount, retried while a just-ended process lets go of it; lazily as the last resort."""
    for _ in range(20):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(path)])


def deleted_study(tmp: Path) -> None:
    say("## 6. --resume on a run whose study was deleted")
    run_dir = tmp / "sigterm"
    (run_dir / "study.db").rename(run_dir / "renamed.db")
    argv = ["search", "--resume", str(run_dir), "--no-progress"]
    r = run(argv, tmp)
    say(f"- study.db renamed: `{shown(argv, tmp)}`")
    say(f"  exit {r.returncode}: {last_lines(r.stderr, tmp, 1)}")
    say()


def main() -> int:
    t0 = time.time()
    say(f"# resilience_demo on {platform.node() or 'this machine'}: real `rep-tune` processes, real training "
        f"(jetson_orin, 4 iterations per task); $TMP is a fresh temporary folder")
    say()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        inputs(tmp / "inputs")
        sigterm_reference(tmp)
        other_host(tmp)
        full_disk(tmp)
        deleted_study(tmp)
    say(f"total {time.time() - t0:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    host = "vm" if not shutil.which("nvidia-smi") else platform.node()
    path = RESULTS / f"resilience_{host}.txt"
    path.write_text("\n".join(LOG) + "\n")
    print(f"written: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
