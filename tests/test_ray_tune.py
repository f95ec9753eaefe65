"""Ray Tune: a user's own ``tune.Tuner`` with rep-tune's searcher and ASHA, on a local Ray instance.

One Ray instance for the module (2 CPUs, no dashboard, 100 MB object store). The searcher, the
study, Tune's scheduler, callbacks and ``Tuner.restore`` are real; trainings are the fake at the
Trainer seam (``search_fakes.FakeTrain``) except in the last test, which runs the real learner on
tiny settings through the trainable.
"""
from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

ray = pytest.importorskip("ray", reason="the rep-tune[ray] extra is not installed")
tune = pytest.importorskip("ray.tune")

from ray.tune.schedulers import ASHAScheduler  # noqa: E402

from rep_tune.config import EMBEDDED_BACKBONE  # noqa: E402
from rep_tune.data.scenario import Scenario  # noqa: E402
from rep_tune.search import record  # noqa: E402
from rep_tune.search.cluster import worker_env  # noqa: E402
from rep_tune.search.run import SearchSettings  # noqa: E402
from rep_tune.search.tune import ACC, TRIAL_KEY, RepSearcher, make_trainable  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from search_fakes import PROXY, FakeTrain, write_space  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
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


def _tuner(searcher: RepSearcher, tmp: Path, callback: Started) -> tune.Tuner:
    """The README's example, with a callback."""
    return tune.Tuner(
        tune.with_resources(searcher.trainable(), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, metric=ACC, mode="max", num_samples=-1,
                                    scheduler=ASHAScheduler(max_t=searcher.n_tasks, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(name="rep", storage_path=str(tmp / "ray_results"), callbacks=[callback], verbose=0))


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


@pytest.mark.slow
def test_tuner_restore_after_ctrl_c_finishes_the_same_study(tmp_path):
    searcher = RepSearcher(_settings(tmp_path, n_trials=4), train_fn=FakeTrain(0.5), out=io.StringIO())
    first = Started(interrupt_after=3, once=tmp_path / "interrupted")
    _tuner(searcher, tmp_path, first).fit()
    searcher.close()
    path = tmp_path / "ray_results" / "rep"
    assert tune.Tuner.can_restore(str(path))
    interrupted = {r.number: r for r in record.read_all(searcher.study.get_trials()) if r.trained}
    restored = tune.Tuner.restore(str(path), trainable=tune.with_resources(
        make_trainable(searcher.settings.scenario, FakeTrain(0.05)), {"cpu": 1}), resume_unfinished=True)
    results = restored.fit()
    from rep_tune.search.optuna_backend import open_study
    study, _ = open_study(searcher.settings.run_dir, searcher.settings.study_name, "tpe", 0, "none")
    recs = record.read_all(study.get_trials())
    print(f"\nTune restore: first run started {first.numbers}, left {[(n, r.state.name) for n, r in interrupted.items()]}; "
          f"after restore {len(results)} Tune trials; states "
          f"{[(r.number, r.state.name, r.kind, r.interrupted) for r in recs if r.trained or r.interrupted]}")
    assert not [r for r in recs if r.state == TrialState.RUNNING]
    cut = [n for n, r in interrupted.items() if r.state == TrialState.RUNNING]
    assert cut and all(recs[n].state in (TrialState.COMPLETE, TrialState.PRUNED) and recs[n].task_acc
                       for n in cut)                                  # resumed into the same Optuna trial
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
