"""Ray Tune: a user's own ``tune.Tuner`` with rep-tune's searcher and ASHA, on a local Ray instance.

One Ray instance for the module (2 CPUs, no dashboard, 100 MB object store). The searcher, the
study, Tune's scheduler, callbacks, checkpoints, retries and ``Tuner.restore`` are real;
trainings are the fakes at the Trainer seam (``search_fakes.FakeTrain``, ``ray_fakes.TaskTrain``
with the learner's resume interface) except in the last test, which runs the real learner on
tiny settings through the trainable.
"""
from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

ray = pytest.importorskip("ray", reason="the rep-tune[ray] extra is not installed")
tune = pytest.importorskip("ray.tune")

from ray.tune.schedulers import ASHAScheduler  # noqa: E402

from rep_tune.config import EMBEDDED_BACKBONE  # noqa: E402
from rep_tune.data.scenario import Scenario  # noqa: E402
from rep_tune.search import record  # noqa: E402
from rep_tune.search.ray.cluster import worker_env  # noqa: E402
from rep_tune.search.run import SearchSettings  # noqa: E402
from rep_tune.search.ray.tune import (ACC, RESUMED_KEY, ROLE_KEY, TASK, TRIAL_KEY, ProtectReferences,  # noqa: E402
                                  RepSearcher, load_task_state, make_trainable)

sys.path.insert(0, str(Path(__file__).parent))
from ray_fakes import TaskTrain  # noqa: E402
from search_fakes import PROXY, FakeTrain, write_space  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    # private Ray members: ray.init's hidden _temp_dir (a short, per-run folder) and _node_ip_address
    # (loopback only; see rep_tune/search/cluster.py): no public equivalent for a local instance
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             _temp_dir=f"/tmp/rtt{os.getpid()}", _node_ip_address="127.0.0.1", runtime_env=worker_env(), log_to_driver=False)
    yield
    ray.shutdown()


class Started(tune.Callback):
    """The Optuna trial number of every Tune trial started (what reached Tune)."""

    def __init__(self, interrupt_after: int | None = None, once: Path | None = None):
        self.numbers: list[int] = []
        self.results = 0
        self.interrupt_after, self.once = interrupt_after, once

    def on_trial_start(self, iteration, trials, trial, **info):
        self.numbers.append(trial.config[TRIAL_KEY])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results += 1
        if self.results == self.interrupt_after and not self.once.exists():
            self.once.touch()                            # the restored copy of this callback goes on
            os.kill(os.getpid(), signal.SIGINT)          # Ctrl-C: Tune stops and saves its state


def _settings(tmp: Path, **kw) -> SearchSettings:
    base = dict(confirm_seeds=0, devices=["jetson_orin"], space=write_space(tmp / "space.yaml"), backbone=PROXY,
                scenario=Scenario(n_tasks=3), n_trials=5, run_dir=str(tmp / "run"), progress=False, seed=0)
    base.update(kw)
    return SearchSettings(**base)


def _tuner(searcher: RepSearcher, tmp: Path, callback: Started, max_failures: int = 0) -> tune.Tuner:
    """The module docstring's example (references kept from ASHA), with a callback."""
    asha = ASHAScheduler(max_t=searcher.n_tasks, grace_period=1, reduction_factor=2)
    return tune.Tuner(
        tune.with_resources(searcher.trainable(), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, metric=ACC, mode="max", num_samples=-1,
                                    scheduler=ProtectReferences(asha)),
        run_config=tune.RunConfig(name="rep", storage_path=str(tmp / "ray_results"), callbacks=[callback], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)))


def _attempts(log: Path) -> list[dict]:
    """TaskTrain's log: one entry per training attempt, oldest first."""
    return sorted((json.loads(p.read_text()) for p in log.glob("*.json")), key=lambda e: (e["hash"], e["steps"]))


@pytest.mark.slow
def test_tuner_with_asha_keeps_constraints_and_prescreening(tmp_path):
    searcher = RepSearcher(_settings(tmp_path), train_fn=FakeTrain(0.3), out=io.StringIO())
    started = Started()
    results = _tuner(searcher, tmp_path, started).fit()
    out = io.StringIO()
    outcome = searcher.write_outputs(out=out)
    searcher.close()
    recs = {r.number: r for r in record.read_all(outcome.study.get_trials())}
    trained = sorted(n for n, r in recs.items() if r.trained)
    pre = [n for n, r in recs.items() if r.prescreened]
    print(f"\nTune: {len(recs)} trials, started in Tune {sorted(started.numbers)}, pre-screened {len(pre)}, "
          f"pruned by ASHA {[n for n, r in recs.items() if r.state == TrialState.PRUNED]}")
    assert pre and not set(pre) & set(started.numbers)             # ruled-out configs never reached Tune
    assert sorted(started.numbers) == trained and len(trained) == 5 == len(results)
    assert sum(r.paid for r in recs.values()) == 5                  # FINISHED once n_trials trainings exist
    for n in trained:
        r = recs[n]
        assert r.state in (TrialState.COMPLETE, TrialState.PRUNED) and r.task_acc    # per-task reports recorded
        assert r.devices["jetson_orin"].constraints                 # constraints through record.py
        if r.state == TrialState.PRUNED:                            # ASHA stopped it after a task
            assert r.pruned_at_task == len(r.task_acc) - 1 < 2
        else:
            assert len(r.task_acc) == 3 and r.final_acc == pytest.approx(r.task_acc[-1], abs=1e-6)
    assert [recs[0].role, recs[1].role] == ["paper", "baseline"]
    df = results.get_dataframe()
    assert "predicted_latency_ms@jetson_orin" in df.columns and ACC in df.columns   # costs reported to Tune
    assert (outcome.run_dir / "trials.csv").exists() and "rep-tune search" in out.getvalue()


def test_protect_references_keeps_asha_from_stopping_a_reference():
    """ASHA stops a trial whose value at a rung is below the others'; wrapped, it never sees a reference."""
    def trial(tid, role=None):
        return SimpleNamespace(trial_id=tid, config={TRIAL_KEY: 0, **({ROLE_KEY: role} if role else {})})

    def asha():
        return ASHAScheduler(metric=ACC, mode="max", max_t=3, grace_period=1, reduction_factor=2, brackets=1)

    good, ref, other = trial("good"), trial("ref", "baseline"), trial("other")
    worst = {"training_iteration": 1, ACC: 0.01}
    bare, kept = asha(), ProtectReferences(asha())
    for sched in (bare, kept):
        for t in (good, ref, other):
            sched.on_trial_add(None, t)
        assert sched.on_trial_result(None, good, {"training_iteration": 1, ACC: 0.9}) == "CONTINUE"
    assert bare.on_trial_result(None, ref, worst) == "STOP"               # what ASHA does to the reference
    assert kept.on_trial_result(None, ref, worst) == "CONTINUE"           # ... never, wrapped
    assert kept.on_trial_result(None, other, worst) == "STOP"             # every other trial is ASHA's
    assert kept.references == ["ref"] and kept.metric == ACC
    kept.on_trial_complete(None, ref, {"training_iteration": 3, ACC: 0.01})
    pending = SimpleNamespace(trial_id="ref", config=ref.config, status="PENDING", PENDING="PENDING", PAUSED="PAUSED")
    assert kept.choose_trial_to_run(SimpleNamespace(get_trials=lambda: [pending])) is pending   # references first


@pytest.mark.slow
def test_references_train_to_the_end_and_the_best_is_the_best_feasible(tmp_path):
    """The references have the worst values at every rung (ASHA would stop them) and the baseline,
    over the latency budget, ends the most accurate: it is Tune's best, not rep-tune's."""
    t0 = time.monotonic()
    fake = TaskTrain(0.3, str(tmp_path / "log"), scripted={"-trial0": (0.02, 0.5), "-trial1": (0.01, 0.995)})
    settings = _settings(tmp_path, confirm_top_k=1, confirm_seeds=2, confirm_report_seeds=2)
    searcher = RepSearcher(settings, train_fn=fake, out=io.StringIO())
    results = _tuner(searcher, tmp_path, Started()).fit()
    out = io.StringIO()
    outcome = searcher.write_outputs(out=out)
    best = searcher.best()
    best_result = searcher.best_result(results)
    tune_best = results.get_best_result(metric=ACC, mode="max")
    # the confirmation, as `rep-tune search` runs it after its trials, in this (the driver's) process
    n_before = len(list((tmp_path / "log").glob("*.json")))
    confirmed = searcher.confirm(outcome, time_limit=600.0, out=out)
    searcher.close()
    conf = confirmed.confirmation
    answer = conf.answers["jetson_orin"]
    assert answer.best is not None and answer.best.hash == best.config_hash      # the fakes have no seed noise
    assert conf.selection_seeds == [0, 1] and conf.report_seeds[:2] == [2, 3] and conf.fresh
    assert answer.vs_paper.mean == pytest.approx(best.final_acc - 0.5, abs=1e-5) and answer.vs_paper.resolved
    assert len(list((tmp_path / "log").glob("*.json"))) - n_before == 2 * 2 + 2 * len(conf.report_seeds)
    rows = (tmp_path / "run" / "confirm.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 + 2 * len(conf.report_seeds)
    import yaml
    expected = yaml.safe_load((tmp_path / "run" / "best_jetson_orin.yaml").read_text())["expected"]
    assert expected["confirmed"]["config_hash"] == best.config_hash and expected["confirmed"]["selection_seeds"] == [0, 1]
    unconfirmed = RepSearcher(_settings(tmp_path, run_dir=str(tmp_path / "run0")), train_fn=fake, out=io.StringIO())
    with pytest.raises(ValueError, match="confirm_seeds: expected >= 1 to confirm, found 0"):
        unconfirmed.confirm()
    unconfirmed.close()                                   # its heartbeat stops with the test
    recs = {r.number: r for r in record.read_all(outcome.study.get_trials())}
    others = [r for r in recs.values() if r.trained and not r.role]
    trained = [(r.number, r.role, r.state.name, r.task_acc, r.feasible("jetson_orin")) for r in recs.values() if r.trained]
    print(f"\nreferences vs ASHA ({time.monotonic() - t0:.1f} s): {trained}; "
          f"Tune's best trial {tune_best.config[TRIAL_KEY]}, rep-tune's best {best.number if best else None}")
    for n, role in ((0, "paper"), (1, "baseline")):
        r = recs[n]
        assert r.role == role and r.state == TrialState.COMPLETE and len(r.task_acc) == 3   # trained to the end
        assert r.task_acc[0] < min(o.task_acc[0] for o in others)                          # the worst at rung 1
    assert "not trained" not in out.getvalue() and "stopped by the Tune scheduler" not in searcher.out.getvalue()
    # Tune ranks by accuracy alone: the baseline, over the budget; rep-tune's best fits it
    assert tune_best.config[TRIAL_KEY] == 1 and not recs[1].feasible("jetson_orin")
    feasible = [r for r in recs.values() if r.scored and r.feasible("jetson_orin")]
    assert best is not None and best.number == max(feasible, key=lambda r: r.final_acc).number
    assert best.final_acc < recs[1].final_acc
    trained_by = best.cached_from if best.cached_from is not None else best.number
    assert best_result is not None and best_result.config[TRIAL_KEY] == trained_by
    assert outcome.bests["jetson_orin"].number == best.number                # the summary's and best_<device>.yaml's


@pytest.mark.slow
def test_a_trial_that_fails_after_task_2_resumes_at_task_3(tmp_path):
    """``FailureConfig(max_failures=1)``: Tune restarts the trial from its checkpoint after task 2."""
    t0 = time.monotonic()
    log = tmp_path / "log"
    settings = _settings(tmp_path, scenario=Scenario(n_tasks=4), n_trials=1, references=False, prescreen=False)
    searcher = RepSearcher(settings, train_fn=TaskTrain(0.2, str(log), fail_after=2), out=io.StringIO())
    results = _tuner(searcher, tmp_path, Started(), max_failures=1).fit()
    searcher.close()
    attempts = _attempts(log)
    (r,) = [r for r in record.read_all(searcher.study.get_trials()) if r.trained]
    (res,) = list(results)
    saved = load_task_state(res.checkpoint, r.config_hash)       # the last checkpoint: after task 2, weights_only
    print(f"\nfailed after task 2 ({time.monotonic() - t0:.1f} s): attempts "
          f"{[(a['resumed_after'], a['tasks'], a['steps']) for a in attempts]}; last checkpoint after task "
          f"{saved['task']}; Optuna trial {r.number} {r.state.name} task_acc {r.task_acc}")
    assert [(a["resumed_after"], a["tasks"]) for a in attempts] == [(-1, [0, 1, 2]), (2, [3])]
    assert attempts[-1]["steps"] == 4                            # the state carried on: 4 tasks trained in all
    assert saved["task"] == 2 and int(saved["state"]["model"]["steps"]) == 3
    assert res.error is None and res.metrics[TASK] == 3 and res.metrics[RESUMED_KEY] == 2
    assert r.state == TrialState.COMPLETE and len(r.task_acc) == 4 and r.final_acc is not None


@pytest.mark.slow
def test_tuner_restore_after_ctrl_c_finishes_the_same_study(tmp_path):
    """Ctrl-C, then ``Tuner.restore``: the cut trials go on from their last task checkpoint."""
    log = tmp_path / "log"
    searcher = RepSearcher(_settings(tmp_path, n_trials=4), train_fn=TaskTrain(0.5, str(log)), out=io.StringIO())
    first = Started(interrupt_after=2, once=tmp_path / "interrupted")
    _tuner(searcher, tmp_path, first).fit()
    searcher.close()
    path = tmp_path / "ray_results" / "rep"
    assert tune.Tuner.can_restore(str(path))
    interrupted = {r.number: r for r in record.read_all(searcher.study.get_trials()) if r.trained}
    restored = tune.Tuner.restore(str(path), trainable=tune.with_resources(
        make_trainable(searcher.settings.scenario, TaskTrain(0.05, str(log))), {"cpu": 1}), resume_unfinished=True)
    results = restored.fit()
    from rep_tune.search.optuna_backend import open_study
    study, _ = open_study(searcher.settings.run_dir, searcher.settings.study_name, "tpe", 0, "none")
    recs = record.read_all(study.get_trials())
    attempts = _attempts(log)
    resumed = [a for a in attempts if a["resumed_after"] >= 0]
    states = [(r.number, r.state.name, r.kind, r.interrupted) for r in recs if r.trained or r.interrupted]
    print(f"\nTune restore: first run started {first.numbers}, left "
          f"{[(n, r.state.name, len(r.task_acc)) for n, r in interrupted.items()]}; after restore {len(results)} Tune "
          f"trials; states {states}; attempts (config, resumed after task, tasks trained) "
          f"{[(a['config'], a['resumed_after'], a['tasks']) for a in attempts]}")
    assert not [r for r in recs if r.state == TrialState.RUNNING]
    cut = [n for n, r in interrupted.items() if r.state == TrialState.RUNNING]
    assert cut and all(recs[n].state in (TrialState.COMPLETE, TrialState.PRUNED) and recs[n].task_acc
                       for n in cut)                                  # resumed into the same Optuna trial
    assert resumed                                                    # mid-trial, from a task checkpoint
    for a in resumed:
        n = int(a["config"].rsplit("trial", 1)[1])
        assert n in cut and a["tasks"][0] == a["resumed_after"] + 1   # not from task 0
        assert len(interrupted[n].task_acc) >= a["resumed_after"] + 1
        if recs[n].state == TrialState.COMPLETE:                      # every task recorded once, none trained twice
            assert len(recs[n].task_acc) == 3 and a["steps"] == 3 and a["tasks"][-1] == 2
    assert sum(r.paid for r in recs) == 4                            # the budget is met across both runs
    assert all(r.devices["jetson_orin"].constraints for r in recs if r.paid and r.state != TrialState.FAIL)


@pytest.mark.slow
def test_the_trainable_runs_the_real_learner_and_reports_costs(tmp_path):
    from rep_tune.runtime.backbone import WEIGHTS_DIR
    from rep_tune.config import EMBEDDED_SURROGATE

    have = all((WEIGHTS_DIR / f"{n}.safetensors").exists() for n in (EMBEDDED_BACKBONE, EMBEDDED_SURROGATE))
    tiny = {"training.epochs": 1, "training.iters_per_task": 2, "training.batch_size": 8,
            "training.eval_batch_size": 256, **({} if have else {"backbone.pretrained": False,
                                                                  "selection.pretrained": False})}
    settings = SearchSettings(devices=["profiles/cpu_x86_generic.yaml"], scenario=Scenario(n_tasks=2, max_per_class=8, eval_per_class=5,
                              test_fraction=0.1), overrides=tiny, n_trials=1, run_dir=str(tmp_path / "run"),
                              progress=False, seed=3, deploy_backbone=EMBEDDED_BACKBONE, references=False,
                              prescreen=False)
    searcher = RepSearcher(settings, out=io.StringIO())
    results = tune.Tuner(tune.with_resources(searcher.trainable(), {"cpu": 1}),
                         tune_config=tune.TuneConfig(search_alg=searcher, metric=ACC, mode="max", num_samples=-1),
                         run_config=tune.RunConfig(name="real", storage_path=str(tmp_path / "ray_results"),
                                                   verbose=0)).fit()
    searcher.close()
    assert len(results) == 1 and results[0].error is None
    metrics = results[0].metrics
    r = record.read_all(searcher.study.get_trials())[0]
    print(f"\nreal trainable: {({k: metrics[k] for k in sorted(metrics) if k.startswith(('final', 'measured_', ACC))})}")
    assert r.state == TrialState.COMPLETE and r.trained and len(r.task_acc) == 2
    assert 0 <= metrics["final_acc"] <= 1 and metrics["final_acc"] == pytest.approx(r.final_acc, abs=1e-6)
    measured = dict(r.measured.items()) if r.measured is not None else {}
    assert measured                                                   # what the learner measured in the worker
    for m, fig in measured.items():
        assert metrics[record.measured_key(m)] == pytest.approx(fig.value, rel=1e-4) and fig.value > 0
        assert metrics[record.measured_source_key(m)] == fig.source
    assert metrics["predicted_latency_ms@cpu_x86_generic"] > 0
    saved = load_task_state(results[0].checkpoint, r.config_hash)     # the learner's state after task 0, weights_only
    assert saved["task"] == 0 and saved["state"]["task"] == 0 and metrics[RESUMED_KEY] == -1
    assert saved["state"]["model"] and all(k.startswith(("prompt.", "head.")) for k in saved["state"]["model"])
