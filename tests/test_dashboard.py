"""What a search shows in optuna-dashboard, checked against the real dashboard server; and what its
run folder and output say (no absolute paths, no profiler noise).

Trainings are ``search_fakes.FakeTrain`` (deterministic accuracy, no network); the study, TPE, the
loop, the notes, the artifact store and the dashboard are real. The dashboard runs as the command
the search prints (``optuna-dashboard sqlite:///... --artifact-dir ...``) in a subprocess on
127.0.0.1 and a free port, and is queried over HTTP through its JSON API (optuna-dashboard 0.21:
``/api/studies``, ``/api/studies/<id>``, ``/artifacts/<study>/<artifact>``). Where a headless
Chromium is installed (Debian: ``apt-get install chromium``), the trial pages are also rendered by
it and their text checked; ``REP_TUNE_SCREENSHOTS=<folder>`` keeps the screenshots.
"""
from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from rep_tune.data.scenario import Scenario
from rep_tune.device import DeviceProfile
from rep_tune.search import record
from rep_tune.search.run import SearchSettings, search, space_reference
from rep_tune.search.space import SearchSpace, default_space

sys.path.insert(0, str(Path(__file__).parent))
from search_fakes import PROXY, FakeTrain, write_space  # noqa: E402

pytest.importorskip("optuna_dashboard")
ROOT = Path(__file__).resolve().parent.parent
DEVICE = "jetson_orin"


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One small search run from inside its folder (relative paths, as a user types them): the
    paper reference is over the tightened latency budget (trained: over budget), some candidates
    are pre-screened."""
    tmp = tmp_path_factory.mktemp("dash")
    prof = DeviceProfile.load(DEVICE)
    prof.budgets.latency_ms = 125.0            # the paper preset (127 ms) just over, the baseline far over
    prof.save(tmp / "jetson_orin.yaml")
    write_space(tmp / "space.yaml")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        t0 = time.perf_counter()
        out = io.StringIO()
        settings = SearchSettings(confirm_seeds=0, devices=["jetson_orin.yaml"], space="space.yaml", backbone=PROXY,
                                  scenario=Scenario(n_tasks=3), n_trials=3, timeout=None, run_dir="run",
                                  progress=False, seed=0)
        outcome = search(settings, train_fn=FakeTrain(0.01), out=out)
        print(f"\nsearch: {time.perf_counter() - t0:.1f} s")
    finally:
        os.chdir(cwd)
    return outcome, tmp, out.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, raw: bool = False):
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200, (url, r.status)
        body = r.read()
    return body if raw else json.loads(body)


@pytest.fixture(scope="module")
def dashboard(searched):
    """The dashboard command the search printed, run from the folder it was printed in."""
    _, tmp, text = searched
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("dashboard: "))
    cmd = shlex.split(line.split("dashboard: ", 1)[1])
    assert cmd[0] == "optuna-dashboard" and "--artifact-dir" in cmd
    port = _free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen([str(exe), *cmd[1:], "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"{base}/api/meta")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"optuna-dashboard did not start: {proc.stdout.read().decode()[-2000:]}")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_dashboard_shows_true_accuracy_constraints_prescreened_notes_and_artifacts(searched, dashboard):
    outcome, tmp, _ = searched
    studies = _get(f"{dashboard}/api/studies")["study_summaries"]
    sid = next(s["study_id"] for s in studies if s["study_name"] == outcome.study.study_name)
    detail = _get(f"{dashboard}/api/studies/{sid}")
    trials = {t["number"]: t for t in detail["trials"]}
    recs = {r.number: r for r in record.read_all(outcome.study.get_trials())}
    assert detail["objective_names"] == ["final_acc"]

    # an over-budget trained trial: its true accuracy as the value, feasibility in the constraints only
    over = [n for n, r in recs.items() if r.scored and not r.feasible(DEVICE)]
    assert over, "the paper reference should be over the tightened latency budget"
    for n in over:
        t = trials[n]
        assert t["state"] == "Complete" and t["values"] == [pytest.approx(recs[n].final_acc)]
        assert max(t["constraints"]) > 0 and "OVER" in t["note"]["body"]
    feasible = [n for n, r in recs.items() if r.scored and r.feasible(DEVICE)]
    assert feasible and all(max(trials[n]["constraints"]) <= 0 for n in feasible)

    # pre-screened: not a COMPLETE trial with a made-up value; pruned, flagged, explained in its note
    pre = [n for n, r in recs.items() if r.prescreened]
    assert pre, "the tightened budget should rule some candidates out before training"
    for n in pre:
        t = trials[n]
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        assert t["state"] == "Pruned" and "values" not in t and not t["intermediate_values"]
        assert attrs["prescreened"] == "True" and max(t["constraints"]) > 0
        assert "pre-screened" in t["note"]["body"] and "Ruled out" in t["note"]["body"]

    # every finished trial has a note: verdict per budget, cost source, fidelity
    for n, t in trials.items():
        body = t["note"]["body"]
        assert body.startswith(f"### Trial {n}:"), body[:80]
        assert "| jetson_orin | latency [ms] |" in body and "Search fidelity" in body and PROXY in body
    # the study note names the best within budgets (the dashboard's own badge ignores constraints)
    best = outcome.bests[DEVICE]
    assert f"trial {best.number}, accuracy" in detail["note"]["body"]

    # artifacts: listed, and served from the printed --artifact-dir
    names = {a["filename"]: a for a in detail["artifacts"]}
    assert {"pareto_jetson_orin.png", "best_jetson_orin.yaml"} <= set(names)
    png = _get(f"{dashboard}/artifacts/{sid}/{names['pareto_jetson_orin.png']['artifact_id']}", raw=True)
    assert png == (outcome.run_dir.joinpath("pareto_jetson_orin.png") if outcome.run_dir.is_absolute()
                   else tmp / outcome.run_dir / "pareto_jetson_orin.png").read_bytes()

    shown = {n: {k: trials[n].get(k) for k in ("number", "state", "values", "constraints")} for n in (over[0], pre[0])}
    for n in shown:
        shown[n]["user_attrs"] = {a["key"]: a["value"] for a in trials[n]["user_attrs"]
                                  if a["key"] in ("role", "prescreened", "final_acc", "feasible@jetson_orin")}
        shown[n]["note"] = trials[n]["note"]["body"].splitlines()[0]
    print(f"\ndashboard /api/studies/{sid} (over budget, pre-screened):", json.dumps(shown, indent=1))
    print("artifacts:", sorted(names))


BROWSER = next((b for b in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if b), None)


def _render(url: str, shot: Path) -> str:
    """The page's DOM after its scripts ran, as a headless Chromium renders it, and a screenshot."""
    common = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1500,1100", "--virtual-time-budget=15000", f"--user-data-dir={shot.parent / 'profile'}"]
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=180, check=True)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())      # the text a reader sees
    return re.sub(r" ([,:.)])", r"\1", text)                                  # no space before punctuation


@pytest.mark.skipif(BROWSER is None, reason="no headless browser here (Debian: apt-get install chromium)")
def test_a_headless_browser_shows_the_over_budget_and_the_prescreened_trial(searched, dashboard, tmp_path):
    """What a user sees: the dashboard's trial list rendered by Chromium shows the over-budget trial
    as Complete with its true accuracy and infeasible, and the pre-screened one as Pruned with its note."""
    outcome, _, _ = searched
    studies = _get(f"{dashboard}/api/studies")["study_summaries"]
    sid = next(s["study_id"] for s in studies if s["study_name"] == outcome.study.study_name)
    recs = {r.number: r for r in record.read_all(outcome.study.get_trials())}
    over = next(n for n, r in recs.items() if r.scored and not r.feasible(DEVICE))
    pre = next(n for n, r in recs.items() if r.prescreened)
    keep = os.environ.get("REP_TUNE_SCREENSHOTS")
    out = Path(keep) if keep else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    pages = {}
    for name, n in (("over_budget", over), ("prescreened", pre)):
        shot = out / f"dashboard_trial_{name}.png"
        # optuna-dashboard 0.21's trial list, one trial selected (its own URL scheme)
        pages[name] = _render(f"{dashboard}/dashboard/studies/{sid}/trials?numbers={n}", shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000, name
    page = pages["over_budget"]
    assert f"Trial {over} (trial_id=" in page and "Complete" in page
    assert f"Trial {over}: accuracy {100 * recs[over].final_acc:.2f} %, over budget on {DEVICE}" in page
    assert "OVER (+" in page
    page = pages["prescreened"]
    assert f"Trial {pre} (trial_id=" in page and "Pruned" in page
    assert f"Trial {pre}: pre-screened: ruled out by the cost model before training (never trained: no accuracy)" in page


def test_trials_csv_and_summary_tell_prescreened_from_pruned(searched):
    outcome, tmp, text = searched
    rows = list(csv.DictReader(open(tmp / "run" / "trials.csv")))
    recs = {r.number: r for r in record.read_all(outcome.study.get_trials())}
    for row in rows:
        r = recs[int(row["trial"])]
        if r.prescreened:
            assert row["state"] == "PRUNED" and row["kind"] == "prescreened" and row["objective"] == ""
        elif r.scored:
            assert float(row["objective"]) == pytest.approx(r.final_acc)
    n_pre = sum(r.prescreened for r in recs.values())
    assert f"{n_pre} ruled out by the cost model before training, 0 pruned" in text


def test_no_absolute_paths_in_the_run_folder_or_the_output(searched):
    outcome, tmp, text = searched
    lines = text.splitlines()
    assert "run folder: run" in lines
    assert "  dashboard: optuna-dashboard sqlite:///run/study.db --artifact-dir run/artifacts" in lines
    assert str(tmp) not in text and str(ROOT) not in text
    for p in (tmp / "run").glob("*.*"):
        if p.suffix in (".yaml", ".csv"):
            body = p.read_text()
            assert str(tmp) not in body and str(ROOT) not in body, p.name
    assert outcome.study.user_attrs["space"]["source"] == "space.yaml"
    # a shipped space is stored by its shipped name (found again from any folder), a user's file as given
    assert space_reference(str(default_space("l2p"))) == "l2p" and SearchSpace.load("l2p").name == "l2p"
    assert space_reference("my/space.yaml") == "my/space.yaml"


def test_without_optuna_dashboard_the_hint_is_the_pip_command(monkeypatch, tmp_path):
    from rep_tune.extras import MissingExtra
    from rep_tune.search import report

    monkeypatch.setattr(report, "dashboard_module", lambda: None)
    assert report.dashboard_hint(tmp_path) == "pip install 'rep-tune[dashboard]' to browse the study in optuna-dashboard"
    assert issubclass(MissingExtra, ImportError)


KINETO_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from search_fakes import FakeTrain, PROXY, write_space
    from rep_tune.data.scenario import Scenario
    from rep_tune.runtime.measure import measure_step
    from rep_tune.search.run import SearchSettings, search

    class Measuring(FakeTrain):
        '''The fake training, plus one CPU memory window in the training (worker) thread, as the
        learner opens them.'''
        windows = 0

        def __call__(self, config, scenario, **kw):
            cost = measure_step(lambda i: torch.ones(256, 256) @ torch.ones(256, 256), n=1, warmup=0, memory_iters=1)
            assert cost.peak_memory_mb.value > 0
            Measuring.windows += 1
            return super().__call__(config, scenario, **kw)

    run = sys.argv[2]
    s = SearchSettings(confirm_seeds=0, devices=["jetson_orin"], space=write_space(run + ".space.yaml"), backbone=PROXY,
                       scenario=Scenario(n_tasks=2), n_trials=1, references=False, timeout=None, run_dir=run,
                       progress=False, seed=0)
    search(s, train_fn=Measuring(0.0))
    print("memory windows in workers:", Measuring.windows)
""")


@pytest.mark.slow
def test_no_profiler_error_line_on_stderr(tmp_path):
    """kineto's "ERROR: External init callback must run in same thread as registerClient" (and c10's
    allocator note) used to reach stderr once per search: the first memory window opened in a
    training thread. The search now initialises the profiler from the main thread first."""
    script = tmp_path / "kineto.py"
    script.write_text(KINETO_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(tmp_path / "run")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    print(f"\nsubprocess search: {time.perf_counter() - t0:.1f} s")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "memory windows in workers: 1" in p.stdout, (p.stdout[-2000:], p.stderr[-2000:])
    bad = [ln for ln in p.stderr.splitlines() if ln.startswith("ERROR:") or "Memory block of unknown size" in ln]
    assert not bad, bad
