"""Search spaces, budgets and pre-screening: fast, no training."""
from __future__ import annotations

import optuna
import pytest

from rep_tune.config import preset
from rep_tune.device import Budgets, DeviceProfile
from rep_tune.figures import Cost, Figure
from rep_tune.schema import SchemaError
from rep_tune.search.budgets import DeviceBudgets, ResolvedBudget, parse_budget, resolve, violation
from rep_tune.search.objective import prescreen
from rep_tune.search.optuna_backend import TaskPercentilePruner
from rep_tune.search.space import SearchSpace, config_hash, shipped_spaces
from rep_tune.search.targets import Target

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("method", ["l2p", "dualprompt"])
def test_shipped_space_contains_paper_and_baseline(method):
    space = SearchSpace.load(method)
    assert space.method == method
    base = space.base_config()
    for role in ("paper", "baseline"):
        cfg = preset(role, method)
        params = space.params_of(cfg)
        got = space.sample(optuna.trial.FixedTrial(params), base)
        assert got.merge_schedule == cfg.merge_schedule
        assert got.selection.surrogate == cfg.selection.surrogate
        assert got.ald.enabled == cfg.ald.enabled and got.atom.enabled == (role == "paper")
        assert (got.prompt.pool_size, got.prompt.length, got.prompt.top_k) == \
            (cfg.prompt.pool_size, cfg.prompt.length, cfg.prompt.top_k)
    paper = space.params_of(preset("paper", method))
    assert paper["atom.form"] == "ramp" and paper["atom.inflect"] == 1.0
    assert paper["atom.r"] == {"l2p": 8, "dualprompt": 6}[method]


def test_shipped_spaces_are_the_two_defaults():
    assert {p.stem for p in shipped_spaces()} >= {"l2p", "dualprompt"}


def test_sampling_gives_valid_configs_of_both_forms():
    space = SearchSpace.load("l2p")
    base = space.base_config()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    forms, hashes = set(), set()
    for _ in range(60):
        trial = study.ask()
        cfg = space.sample(trial, base)
        study.tell(trial, 0.0)
        assert 1 <= cfg.prompt.top_k <= cfg.prompt.pool_size
        assert len(cfg.merge_schedule) == 12
        if cfg.atom.enabled:
            forms.add(trial.params["atom.form"])
            if trial.params["atom.form"] == "per_layer":
                assert cfg.atom.merge == [trial.params[f"atom.merge_{i}"] for i in range(12)]
        else:
            assert cfg.atom.merge == [] and "atom.form" not in trial.params
        if not cfg.ald.enabled:
            assert "ald.theta_min" not in trial.params
        if cfg.selection.surrogate is None:
            assert cfg.selection.cache is False
        hashes.add(config_hash(cfg))
    assert forms == {"ramp", "per_layer"}
    assert len(hashes) == 60


def _write(tmp_path, text: str):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("body, field, found", [
    ("params:\n  prompt.length: {type: int, low: 5, high: 2}\n", "params.prompt.length.high", "2"),
    ("params:\n  prompt.lenght: {type: int, low: 1, high: 2}\n", "params.prompt.lenght", "prompt.lenght"),
    ("params:\n  ald.gamma: {type: float, low: 0, high: 0.1, log: true}\n", "params.ald.gamma.low", "0"),
    ("params:\n  prompt.length: {type: int, low: 1.5, high: 4}\n", "params.prompt.length.low", "1.5"),
    ("params:\n  selection.surrogate: {type: categorical, choices: []}\n", "params.selection.surrogate.choices", "[]"),
    ("params:\n  atom.form: {type: categorical, choices: [ramp, zigzag]}\n", "params.atom.form.choices", "zigzag"),
    ("params:\n  prompt.length: {type: int, low: 1, high: 4, bogus: 1}\n", "params.prompt.length.bogus", "bogus"),
    ("method: vit\nparams:\n  prompt.length: {type: int, low: 1, high: 4}\n", "method", "vit"),
    ("params: {}\n", "params", "{}"),
])
def test_space_errors_name_file_and_key(tmp_path, body, field, found):
    path = _write(tmp_path, "version: 1\n" + body)
    with pytest.raises(SchemaError) as e:
        SearchSpace.load(path)
    assert e.value.source == str(path)
    assert e.value.field == field
    assert found in str(e.value)


def test_params_of_outside_space_names_the_parameter(tmp_path):
    path = _write(tmp_path, "params:\n  prompt.pool_size: {type: int, low: 12, high: 20}\n")
    with pytest.raises(ValueError, match="prompt.pool_size"):
        SearchSpace.load(path).params_of(preset("paper"))


def test_parse_budget():
    assert parse_budget("0.6x", "latency_ms").relative and parse_budget("0.6x", "latency_ms").value == 0.6
    assert parse_budget("70%", "peak_memory_mb").value == pytest.approx(0.7)
    assert parse_budget("250ms", "latency_ms").value == 250 and not parse_budget("250", "latency_ms").relative
    assert parse_budget("0.5 s", "latency_ms").value == 500
    assert parse_budget("2GB", "peak_memory_mb").value == 2048
    for bad in ("fast", "-1x", "3 parsecs", "0"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad, "latency_ms")


def _cost(lat: float, mem: float, source: str = "predicted") -> Cost:
    return Cost(latency_ms=Figure(lat, "ms", source), peak_memory_mb=Figure(mem, "MB", source))


def test_resolve_relative_absolute_and_default():
    prof = DeviceProfile(name="dev", kind="cpu", budgets=Budgets(latency_ms=95.0, peak_memory_mb=45000.0))
    base = _cost(20.0, 40.0)
    b = resolve(prof, base, {"latency_ms": parse_budget("0.6x", "latency_ms"),
                             "peak_memory_mb": parse_budget("30", "peak_memory_mb")})
    assert b.budgets["latency_ms"].value == pytest.approx(12.0) and b.budgets["latency_ms"].relative == 0.6
    assert b.budgets["peak_memory_mb"].value == 30.0 and b.budgets["peak_memory_mb"].relative is None
    # no flags: the profile's absolute budgets bind as written, even when the baseline fits them (a note
    # says so); no fallback to relative budgets (issue 8: costs are priced on the deployment they were written for)
    d = resolve(prof, base)
    assert d.budgets["latency_ms"].value == 95.0
    assert d.budgets["peak_memory_mb"].value == 45000.0
    assert len(d.notes) == 2 and "fits it already" in d.notes[0]
    # a binding profile budget is kept as is
    k = resolve(prof, _cost(120.0, 40.0))
    assert k.budgets["latency_ms"].value == 95.0 and "profile" in k.budgets["latency_ms"].basis
    assert "energy_j" not in d.budgets
    assert violation(12.0, 10.0) == pytest.approx(0.2) and violation(8.0, 10.0) < 0


def _target(key: str, lat: float, mem: float) -> Target:
    t = Target(DeviceProfile(name=key, kind="cpu"), key, False)
    t.budgets = DeviceBudgets(key, 16, {"latency_ms": ResolvedBudget("latency_ms", lat, "test"),
                                        "peak_memory_mb": ResolvedBudget("peak_memory_mb", mem, "test")})
    return t


def test_prescreen_margin_and_several_devices():
    a, b = _target("a", 10.0, 100.0), _target("b", 20.0, 100.0)
    assert prescreen({"a": _cost(10.9, 50), "b": _cost(30, 50)}, [a, b], margin=0.1).train      # within margin on a
    out = prescreen({"a": _cost(11.5, 50), "b": _cost(30, 50)}, [a, b], margin=0.1)
    assert not out.train and any("on a" in r for r in out.reasons) and any("on b" in r for r in out.reasons)
    assert prescreen({"a": _cost(11.5, 50), "b": _cost(15, 50)}, [a, b], margin=0.1).train      # fits b
    assert not prescreen({"a": _cost(5, 150)}, [a], margin=0.1).train                            # memory


def test_task_percentile_pruner_compares_at_the_same_task():
    study = optuna.create_study(direction="maximize", pruner=TaskPercentilePruner(25.0, min_trials=4))
    for v in (90, 80, 70, 60):
        t = study.ask()
        t.report(v, 0)
        t.report(v - 10, 1)
        study.tell(t, v - 20)
    low, high = study.ask(), study.ask()
    low.report(10, 0)
    assert not low.should_prune()          # warm-up task 0 is never pruned
    low.report(20, 1)
    high.report(75, 1)
    assert low.should_prune() and not high.should_prune()
