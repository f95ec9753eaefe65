"""The search end to end with the real trainer on tiny settings (2 tasks, 2 iterations per task).

The trainer is wrapped by a counter (the real ``runtime.learner.train`` runs underneath). The
deployment is the proxy itself (``deploy_backbone`` = the embedded backbone: direct accuracy),
so these tests run whatever the embedded default's token layout is.
"""
from __future__ import annotations

import dataclasses
import io
import math

import optuna
import pytest
from optuna.trial import TrialState

from rep_tune.cli import main
from rep_tune.config import EMBEDDED_BACKBONE, RepConfig, preset
from rep_tune.data.scenario import Scenario
from rep_tune.runtime.learner import train
from rep_tune.search import record
from rep_tune.search.optuna_backend import storage_url
from rep_tune.search.run import SearchSettings, search
from rep_tune.search.space import config_hash
from rep_tune.search.targets import load_targets

DEVICES = ["profiles/jetson_orin.yaml", "profiles/cpu_x86_generic.yaml"]
TINY = {"training.epochs": 1, "training.iters_per_task": 2, "training.batch_size": 8, "training.eval_batch_size": 256}


def _pretrained() -> dict:
    from rep_tune.config import EMBEDDED_SURROGATE
    from rep_tune.runtime.backbone import WEIGHTS_DIR
    have = all((WEIGHTS_DIR / f"{n}.safetensors").exists() for n in (EMBEDDED_BACKBONE, EMBEDDED_SURROGATE))
    return {} if have else {"backbone.pretrained": False, "selection.pretrained": False}


class Counting:
    """The real trainer, counting calls; optionally raising on chosen calls."""

    def __init__(self, fail: dict[int, BaseException] | None = None):
        self.hashes: list[str] = []
        self.fail = fail or {}

    def __call__(self, config, scenario, **kw):
        self.hashes.append(config_hash(config))
        if len(self.hashes) in self.fail:
            raise self.fail[len(self.hashes)]
        return train(config, scenario, **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: oversubscribed OpenMP threads make training ~5x slower."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _settings(run_dir, **kw) -> SearchSettings:
    base = dict(confirm_seeds=0, devices=DEVICES, scenario=Scenario(n_tasks=2, max_per_class=8, eval_per_class=20),
                overrides={**TINY, **_pretrained()}, n_trials=4, timeout=None, run_dir=str(run_dir),
                budgets={"latency_ms": "0.8x", "peak_memory_mb": "1.05x"}, progress=False, seed=3,
                deploy_backbone=EMBEDDED_BACKBONE)
    base.update(kw)
    return SearchSettings(**base)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("search") / "run"
    trainer = Counting(fail={3: RuntimeError("CUDA out of memory (simulated)")})
    out = io.StringIO()
    # seed 1: a sampler seed whose proposals include configs the tight budgets rule out (the space's
    # draws, not the budgets, decide that; re-pick it when the default space changes)
    outcome = search(_settings(run_dir, seed=1), train_fn=trainer, out=out)
    return outcome, trainer, out.getvalue()


@pytest.mark.slow
def test_prescreened_trials_are_never_trained(searched):
    outcome, trainer, _ = searched
    trials = outcome.study.get_trials()
    pre = [t for t in trials if t.user_attrs.get("prescreened")]
    trained = [t for t in trials if t.user_attrs.get("trained")]
    assert pre, "the tight budgets should rule some candidates out"
    assert len(trainer.hashes) == len(trained)                       # one trainer call per trained trial
    assert not {t.user_attrs["config_hash"] for t in pre} & set(trainer.hashes)
    for t in pre:
        # never trained: PRUNED with no value and no reports (no made-up accuracy in any plot)
        assert t.state == TrialState.PRUNED and t.value is None and not t.intermediate_values
        assert "train_seconds" not in t.user_attrs
        assert any(v > 0 for v in t.constraints.values()) and "on " in t.user_attrs["prescreen_reason"]
    # 4 trained trials counted (one crashed), plus the two references first
    assert sum(1 for t in trained if t.state != TrialState.FAIL or "error" in t.user_attrs) == 4
    assert [trials[0].user_attrs.get("role"), trials[1].user_attrs.get("role")] == ["paper", "baseline"]


@pytest.mark.slow
def test_crashed_trial_is_failed_not_the_search(searched):
    outcome, _, _ = searched
    failed = [t for t in outcome.study.get_trials() if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "out of memory" in failed[0].user_attrs["error"]


@pytest.mark.slow
def test_constraints_recorded_for_every_device(searched):
    outcome, _, _ = searched
    for t in outcome.study.get_trials(states=(TrialState.COMPLETE,)):
        for target in outcome.targets:
            key = target.key
            for m, b in target.budgets.budgets.items():
                value = t.user_attrs[f"{m}@{key}"]
                assert t.constraints[f"{m}@{key}"] == pytest.approx(value / b.value - 1, abs=1e-6)
            feasible = all(t.constraints[f"{m}@{key}"] <= 0 for m in target.budgets.budgets)
            assert t.user_attrs[f"feasible@{key}"] == feasible
            assert t.user_attrs[f"latency_ms_source@{key}"] in ("predicted", "estimated")
        r = record.TrialRecord.read(t)
        # the value is the true accuracy, within budgets or not: feasibility is in the constraints only
        assert not r.prescreened and t.value == pytest.approx(r.final_acc, abs=1e-6)


@pytest.mark.slow
def test_outputs_per_device_fit_their_budgets(searched):
    outcome, _, text = searched
    run = outcome.run_dir
    assert (run / "trials.csv").exists() and "run folder" in text and "budgets applied" in text
    written = 0
    for target in outcome.targets:
        key = target.key
        assert (run / f"pareto_{key}.csv").exists() and (run / f"pareto_{key}.png").stat().st_size > 1000
        best = outcome.bests[key]
        if best is None:
            assert not (run / f"best_{key}.yaml").exists()
            continue
        written += 1
        cfg = RepConfig.load(run / f"best_{key}.yaml")
        assert cfg.target.device == target.profile.name
        for m in ("latency_ms", "peak_memory_mb"):
            assert cfg.expected.figure(m).value <= cfg.target.budgets.limits()[m].value
            assert cfg.expected.figure(m).source in ("predicted", "estimated", "measured")
        assert cfg.expected.final_acc.value == pytest.approx(best.final_acc, abs=1e-6)
        assert cfg.expected.final_acc.accuracy == "direct" and 0 <= best.final_acc <= 1   # 2 iterations: near chance
        assert cfg.expected.gain_over_paper is not None and cfg.expected.gain_over_baseline is not None
        assert cfg.provenance.trial == best.number
        assert cfg.provenance.profile_checksum == target.profile.checksum()
        assert cfg.provenance.study_name == outcome.study.study_name
    assert written >= 1
    # the storage opens as is (what optuna-dashboard does)
    loaded = optuna.load_study(study_name=outcome.study.study_name, storage=storage_url(run))
    assert len(loaded.trials) == len(outcome.study.trials)


@pytest.mark.slow
def test_resume_keeps_every_finished_trial(tmp_path):
    run_dir = tmp_path / "run"
    first = Counting(fail={3: KeyboardInterrupt()})        # killed while starting the 3rd training
    with pytest.raises(KeyboardInterrupt):
        search(_settings(run_dir, n_trials=3, devices=DEVICES[1:]), train_fn=first, out=io.StringIO())
    before = {t.number: (t.state, t.value) for t in
              optuna.load_study(study_name=None, storage=storage_url(run_dir)).trials if t.state.is_finished()}
    assert sum(s == TrialState.COMPLETE for s, _ in before.values()) >= 2
    second = Counting()
    outcome = search(SearchSettings.resume(run_dir, progress=False), train_fn=second, out=io.StringIO())
    after = {t.number: (t.state, t.value) for t in outcome.study.trials}
    for number, (state, value) in before.items():
        assert after[number][0] == state and (value is None or math.isclose(after[number][1], value))
    trained = [t for t in outcome.study.trials if t.user_attrs.get("trained") and t.state == TrialState.COMPLETE]
    assert len(trained) == 3 and len(second.hashes) == 1          # only the missing trial was trained
    assert outcome.targets[0].budgets.to_dict() == SearchSettings.resume(run_dir).resolved_budgets[outcome.targets[0].key]


def test_cli_defaults_and_bad_budget(capsys):
    import argparse

    from rep_tune.cli.search import add_arguments, settings_from_args
    p = argparse.ArgumentParser()
    add_arguments(p)
    s = settings_from_args(p.parse_args(["--device", "profiles/jetson_orin.yaml"]))
    assert s.n_trials == 16 and s.timeout == 600 and s.sampler == "tpe" and s.budgets == {} and s.prescreen
    assert s.overrides["training.iters_per_task"] == 12 and s.scenario.eval_per_class == 50   # the search fidelity
    assert main(["search", "--device", "profiles/jetson_orin.yaml", "--latency-budget", "fast"]) == 2
    assert "latency-budget" in capsys.readouterr().err
    # the confirmation: K,S[,R]; R fresh report seeds by default, 0 = report on the selection seeds
    assert (s.confirm_top_k, s.confirm_seeds, s.confirm_report_seeds) == (2, 3, 6)
    s = settings_from_args(p.parse_args(["--device", "jetson_orin", "--confirm", "3,2"]))
    assert (s.confirm_top_k, s.confirm_seeds, s.confirm_report_seeds) == (3, 2, 6)
    s = settings_from_args(p.parse_args(["--device", "jetson_orin", "--confirm", "2,3,0"]))
    assert (s.confirm_top_k, s.confirm_seeds, s.confirm_report_seeds) == (2, 3, 0)
    for bad in ("3", "3,2,1", "0,2", "3,2,4,5", "a,b"):
        assert main(["search", "--device", "profiles/jetson_orin.yaml", "--confirm", bad]) == 2
        err = capsys.readouterr().err
        assert "--confirm" in err and "K,S[,R]" in err and repr(bad) in err, err
    # the whole command's time limit the report plans within: 20 minutes by default, 0 = none (R exactly)
    assert settings_from_args(p.parse_args(["--device", "jetson_orin"])).time_limit == 1200.0
    assert settings_from_args(p.parse_args(["--device", "jetson_orin", "--time-limit", "300"])).time_limit == 300.0
    assert settings_from_args(p.parse_args(["--device", "jetson_orin", "--time-limit", "0"])).time_limit is None
    assert main(["search", "--device", "profiles/jetson_orin.yaml", "--time-limit", "-5"]) == 2
    assert "--time-limit" in capsys.readouterr().err
    # the confirmation's retrainings at once: auto (None) by default, or as many as asked, never 0
    assert settings_from_args(p.parse_args(["--device", "jetson_orin"])).confirm_workers is None
    assert settings_from_args(p.parse_args(["--device", "jetson_orin", "--confirm-workers", "2"])).confirm_workers == 2
    capsys.readouterr()
    assert main(["search", "--device", "profiles/jetson_orin.yaml", "--confirm-workers", "0"]) == 2
    assert "--confirm-workers" in capsys.readouterr().err


def test_the_search_phase_keeps_within_its_share_of_the_time_limit():
    """The trials get half of --time-limit when a confirmation follows (all of it without one), or
    --timeout if that is sooner; the default (600 s of 1200 s) is unchanged and says nothing."""
    from rep_tune.search.run import search_phase_timeout
    s = SearchSettings()
    assert (s.timeout, s.time_limit, s.confirm_seeds > 0) == (600.0, 1200.0, True)
    assert search_phase_timeout(s) == (600.0, "")
    t, why = search_phase_timeout(dataclasses.replace(s, time_limit=600.0))
    assert t == 300.0 and why == ("search: the trials stop after 300 s, 50% of the 600 s time limit (the rest is "
                                  "the confirmation's), before --timeout 600 s")
    assert search_phase_timeout(dataclasses.replace(s, time_limit=600.0, confirm_seeds=0))[0] == 600.0
    assert search_phase_timeout(dataclasses.replace(s, time_limit=900.0, confirm_seeds=0)) == (600.0, "")
    t, why = search_phase_timeout(dataclasses.replace(s, time_limit=800.0, timeout=None))
    assert t == 400.0 and "--timeout" not in why
    assert search_phase_timeout(dataclasses.replace(s, time_limit=None, timeout=None)) == (None, "")
    assert search_phase_timeout(dataclasses.replace(s, time_limit=None, timeout=50.0)) == (50.0, "")


def test_targets_from_folder_and_names():
    targets = load_targets(["profiles/"])
    assert "jetson_orin" in [t.key for t in targets] and {t.kind for t in targets} == {"device"}
    assert [t.key for t in load_targets(["jetson_orin"])] == ["jetson_orin"]
    with pytest.raises(FileNotFoundError, match="no such device profile"):
        load_targets(["profiles/nope.yaml"])


# The Ray backend is tested against a real 2-node cluster in test_ray_cluster.py (run by default).


def test_a_profile_written_on_this_host_is_a_local_target(tmp_path):
    """The two target kinds: a shipped profile is priced on its deployment; a profile whose host is
    this machine is a LocalTarget (the proxy is the deployment, its cost measured)."""
    import socket

    from rep_tune.device import DeviceProfile
    from rep_tune.figures import Cost, Figure
    from rep_tune.search.targets import LocalTarget
    prof = DeviceProfile.load("profiles/jetson_orin.yaml")
    prof.identity = {**(prof.identity or {}), "host": socket.gethostname()}
    path = prof.save(tmp_path / "here.yaml")
    (shipped,), (here,) = load_targets(["jetson_orin"]), load_targets([str(path)])
    assert type(shipped) is not LocalTarget and isinstance(here, LocalTarget)
    assert (shipped.cost_source, here.cost_source) == ("predicted", "measured")
    proxy = preset("paper")
    assert here.deployment(proxy).backbone == proxy.backbone.name and shipped.deployment(proxy).backbone != proxy.backbone.name
    predicted = Cost({"latency_ms": Figure(100.0, "ms", "predicted")})
    measured = Cost({"latency_ms": Figure(80.0, "ms", "measured")})
    assert here.trial_cost(predicted, measured).latency_ms.value == 80.0      # the training's own figure
    assert shipped.trial_cost(predicted, measured).latency_ms.value == 100.0  # the deployment's prediction


def test_each_trial_maps_once_per_device_and_validates_each_config_once(tmp_path, monkeypatch):
    """Planning a trial with two devices: the sampled config and each deployed config are validated
    once each (3), the config is mapped onto each device once (2); the budget text is parsed once
    per search."""
    from search_fakes import FakeTrain

    from rep_tune.cost import deploy
    from rep_tune.search import budgets, objective
    from rep_tune.search import run as run_mod
    calls = {"map": 0, "validate": 0, "parse": 0}

    def counting(fn, key):
        def wrapper(*a, **k):
            calls[key] += 1
            return fn(*a, **k)
        return wrapper
    monkeypatch.setattr(deploy, "map_to_deployment", counting(deploy.map_to_deployment, "map"))
    monkeypatch.setattr(RepConfig, "validate", counting(RepConfig.validate, "validate"))
    monkeypatch.setattr(run_mod, "parse_budget", counting(budgets.parse_budget, "parse"))
    per_plan = []
    plan = objective.Objective.plan

    def counted_plan(self, study, trial):
        before = dict(calls)
        out = plan(self, study, trial)
        per_plan.append((calls["map"] - before["map"], calls["validate"] - before["validate"]))
        return out
    monkeypatch.setattr(objective.Objective, "plan", counted_plan)
    settings = SearchSettings(confirm_seeds=0, devices=["profiles/jetson_orin.yaml", "profiles/rtx3090.yaml"],
                              scenario=Scenario(n_tasks=2, max_per_class=8, eval_per_class=20),
                              overrides={**TINY, "backbone.pretrained": False, "selection.pretrained": False},
                              n_trials=3, timeout=None, run_dir=str(tmp_path / "run"), budgets={"latency_ms": "0.8x"},
                              progress=False, seed=3)
    search(settings, train_fn=FakeTrain(0.0), out=io.StringIO())
    assert per_plan and set(per_plan) == {(2, 3)}
    assert calls["parse"] == 1
