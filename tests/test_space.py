"""Search spaces, budgets and pre-screening: fast, no training."""
from __future__ import annotations

import optuna
import pytest

from rep_tune.config import EMBEDDED_BACKBONE, paper_surrogate, preset
from rep_tune.methods import method_names
from rep_tune.schedule import ramp
from rep_tune.device import Budgets, DeviceProfile
from rep_tune.figures import Cost, Figure
from rep_tune.schema import SchemaError
from rep_tune.search.budgets import DeviceBudgets, ResolvedBudget, parse_budget, resolve, violation
from rep_tune.search.objective import prescreen
from rep_tune.search.strategies import TaskPercentilePruner
from rep_tune.search.space import SearchSpace, config_hash, restrict_to_export, shipped_spaces
from rep_tune.search.targets import Target

optuna.logging.set_verbosity(optuna.logging.WARNING)


NEW_BACKBONE = "vit_micro_patch2_28.fmnist"     # the coming default: its surrogate is vit_pico_patch2_28.fmnist


@pytest.mark.parametrize("backbone", [EMBEDDED_BACKBONE, NEW_BACKBONE, "vit_base_patch16_224"])
@pytest.mark.parametrize("method", ["l2p", "dualprompt", "coda"])
def test_shipped_space_contains_paper_and_baseline(method, backbone):
    space = SearchSpace.load(method)
    assert space.method == method
    base = space.base_config(backbone)
    for role in ("paper", "baseline"):
        cfg = preset(role, method, backbone)
        params = space.params_of(cfg)
        got = space.sample(optuna.trial.FixedTrial(params), base)
        if not cfg.ald.enabled:      # the baseline's ALD section holds defaults that ALD off never reads
            got = got.replace(**{f"ald.{k}": v for k, v in cfg.to_dict()["ald"].items()})
        assert config_hash(got) == config_hash(cfg)          # the very same training
        assert params["selection.surrogate"] == ("paper" if role == "paper" else None)
    paper = space.params_of(preset("paper", method, backbone))
    assert paper["atom.form"] == "ramp" and paper["atom.inflect"] == 1.0
    assert paper["atom.r"] == {"l2p": 8, "dualprompt": 6, "coda": 6}[method]
    assert space.sample(optuna.trial.FixedTrial(paper), base).selection.surrogate == paper_surrogate(backbone)


def test_presets_prompt_settings_are_points_of_their_spaces():
    """DualPrompt's REP preset (E-length 20) and CODA's official 100 x 8 (90 x 8 on the width-96 embedded
    backbone: at most its width of orthogonal keys) lie inside the shipped ranges."""
    assert SearchSpace.load("dualprompt").params_of(preset("paper", "dualprompt"))["prompt.length"] == 20
    coda = SearchSpace.load("coda").params_of(preset("paper", "coda"))
    assert (coda["prompt.pool_size"], coda["prompt.length"], coda["prompt.ortho_mu"]) == (90, 8, 0.0)


def test_shipped_spaces_are_the_defaults():
    assert {p.stem for p in shipped_spaces()} >= {"l2p", "dualprompt", "coda"}
    assert {p.stem for p in shipped_spaces()} >= set(method_names())


@pytest.mark.parametrize("method", ["l2p", "dualprompt", "coda"])
def test_params_of_reads_back_what_sample_wrote(method):
    """One table read both ways: every sampled config is a point of its space that rebuilds it."""
    space = SearchSpace.load(method)
    base = space.base_config()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(25):
        trial = study.ask()
        cfg = space.sample(trial, base)
        study.tell(trial, 0.0)
        again = space.sample(optuna.trial.FixedTrial(space.params_of(cfg)), base)
        assert config_hash(again) == config_hash(cfg)
        if method == "coda":
            assert cfg.prompt.length % 2 == 0 and cfg.prompt.pool_size % 10 == 0


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
        else:     # AToM off, or on with no merge anywhere (normalised to off: the same training)
            assert cfg.atom.merge == []
            tp = trial.params
            assert not tp["atom.enabled"] or not any(
                ramp(tp["atom.r"], 12, tp["atom.inflect"]) if tp["atom.form"] == "ramp"
                else [tp[f"atom.merge_{i}"] for i in range(12)])
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
    # issue 12: wrongly accepted before
    ("params:\n  training.batch_size: {type: int, low: 0, high: 32}\n", "params.training.batch_size.low", "0"),
    ("params:\n  training.batch_size: {type: int, low: 1, high: .inf}\n", "params.training.batch_size.high", "inf"),
    ("params:\n  ald.gamma: {type: float, low: 0.001, high: .inf}\n", "params.ald.gamma.high", "inf"),
    ("params:\n  training.lr: {type: float, low: .nan, high: 0.1}\n", "params.training.lr.low", "nan"),
    ("params:\n  selection.surrogate: {type: categorical, choices: [paper, vit_nonexistent_patch16_224]}\n",
     "params.selection.surrogate.choices", "vit_nonexistent_patch16_224"),
    ("params:\n  selection.surrogate: {type: categorical, choices: [dualprompt]}\n",
     "params.selection.surrogate.choices", "dualprompt"),
    ("params:\n  prompt.method: {type: categorical, choices: [l2p, coda]}\n", "params.prompt.method", "prompt.method"),
    ("params:\n  training.precision: {type: categorical, choices: [fp32, fp8]}\n",
     "params.training.precision.choices", "fp8"),
    ("params:\n  ald.schedule: {type: categorical, choices: [ald, dropout]}\n", "params.ald.schedule.choices", "dropout"),
    ("params:\n  atom.enabled: {type: categorical, choices: [true, maybe]}\n", "params.atom.enabled.choices", "maybe"),
    ("params:\n  prompt.length: {type: float, low: 1, high: 4}\n", "params.prompt.length.low", "1.0"),
    ("params:\n  ald.theta_min: {type: float, low: 0.0, high: 1.0}\n", "params.ald.theta_min.low", "0.0"),
    ("params:\n  prompt.top_k: {type: int, low: 6, high: 8}\n  prompt.pool_size: {type: int, low: 4, high: 8}\n",
     "params.prompt.top_k.low", "6"),
    ("params:\n  atom.r: {type: int, low: -1, high: 8}\n", "params.atom.r.low", "-1"),
    ("params:\n  atom.inflect: {type: float, low: -2.0, high: 1.0}\n", "params.atom.inflect", "-2.0"),
    ("params:\n  atom: {type: int, low: 0, high: 1}\n", "params.atom", "atom"),
    ("method: coda\nparams:\n  prompt.length: {type: int, low: 2, high: 9}\n", "params.prompt.length.high", "9"),
    ("method: coda\nparams:\n  prompt.length: {type: int, low: 2, high: 10}\n", "params.prompt.length", "3"),
    ("method: coda\nparams:\n  prompt.top_k: {type: int, low: 1, high: 4}\n", "params.prompt.top_k", "prompt.top_k"),
    ("fixed: {training.batch_size: 0}\nparams:\n  prompt.length: {type: int, low: 1, high: 4}\n",
     "fixed.training.batch_size", "0"),
    ("params:\n  prompt.length: [1, 4]\n", "params.prompt.length", "[1, 4]"),
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
    t = Target(DeviceProfile(name=key, kind="cpu"), key)
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


def test_bad_choice_error_says_what_is_expected(tmp_path):
    path = _write(tmp_path, "params:\n  selection.surrogate: {type: categorical, choices: [paper, vit_nope]}\n")
    with pytest.raises(SchemaError) as e:
        SearchSpace.load(path)
    assert "'paper'" in e.value.expected and "vit_nope" in str(e.value) and str(path) in str(e.value)


def test_precision_and_ald_schedule_are_categorical_parameters(tmp_path):
    """ald.schedule = pld hides tau and alpha (PLD has no token term); precision reaches the config."""
    path = _write(tmp_path, "method: l2p\nparams:\n"
                  "  training.precision: {type: categorical, choices: [fp32, bf16]}\n"
                  "  ald.schedule: {type: categorical, choices: [ald, pld]}\n"
                  "  ald.tau: {type: int, low: 0, high: 48}\n"
                  "  ald.alpha: {type: float, low: 0.5, high: 1.0}\n")
    space = SearchSpace.load(path)
    base = space.base_config()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(16):
        trial = study.ask()
        cfg = space.sample(trial, base)
        study.tell(trial, 0.0)
        seen.add((cfg.training.precision, cfg.ald.schedule))
        assert cfg.training.precision == trial.params["training.precision"]
        assert ("ald.tau" in trial.params) == (cfg.ald.schedule == "ald")
        assert space.params_of(cfg) == trial.params
    assert seen == {("fp32", "ald"), ("fp32", "pld"), ("bf16", "ald"), ("bf16", "pld")}
    pld = preset("paper").replace(**{"ald.schedule": "pld", "ald.tau": 99})
    assert "ald.tau" not in space.params_of(pld)        # hidden, so out-of-range tau does not matter


def test_paper_surrogate_choice_follows_the_backbone():
    space = SearchSpace.load("l2p")
    for backbone in (EMBEDDED_BACKBONE, NEW_BACKBONE, "vit_base_patch16_224"):
        cfg = space.sample(optuna.trial.FixedTrial({**space.params_of(preset("paper", "l2p", backbone))}),
                           space.base_config(backbone))
        assert cfg.selection.surrogate == paper_surrogate(backbone)
    assert paper_surrogate(NEW_BACKBONE) == "vit_pico_patch2_28.fmnist"
    # a literal surrogate that is not the paper's pairing is outside a [paper, null] space
    other = preset("paper", "l2p", NEW_BACKBONE).replace(**{"selection.surrogate": "vit_pico_patch4_32"})
    with pytest.raises(ValueError, match="selection.surrogate"):
        space.params_of(other)


def test_params_of_names_a_schedule_outside_the_space(tmp_path):
    path = _write(tmp_path, "params:\n  atom.r: {type: int, low: 0, high: 16}\n")   # ramp form, inflect 1 only
    space = SearchSpace.load(path)
    assert space.params_of(preset("paper")) == {"atom.r": 8}
    with pytest.raises(ValueError, match=r"atom.*not a point of the space.*closest ramp"):
        space.params_of(preset("paper").replace(**{"atom.merge": [5] * 12}))


# ---- --export-target: restrict_to_export reads the format's declaration -----------------------------------
def test_restriction_refuses_methods_the_target_cannot_run_saying_why():
    from rep_tune.export import capabilities
    for method, why in (("dualprompt", "its run_rep.py dispatches only the dataset configs cifar100_rep/imr_rep"),
                        ("coda", "it has no CODA-Prompt entry point")):
        with pytest.raises(ValueError) as e:
            restrict_to_export(SearchSpace.load(method), "rep-argparse")
        assert why in str(e.value) and capabilities("rep-argparse").refused_methods[method] in str(e.value)
        assert restrict_to_export(SearchSpace.load(method), "tome").method == method      # ToMe runs any
    with pytest.raises(ValueError, match="export format"):
        restrict_to_export(SearchSpace.load("l2p"), "nope")
    space = SearchSpace.load("l2p")
    assert restrict_to_export(space, None) is space


def test_rep_argparse_restriction_keeps_integer_ramps_and_the_references():
    space = SearchSpace.load("l2p").for_export("rep-argparse")
    assert not {"atom.form", "atom.per_layer"} & set(space.params)
    inflect = space.params["atom.inflect"]
    assert (inflect.type, inflect.low, inflect.high, inflect.step) == ("float", -1.0, 1.0, 1.0)
    # the default space offers PLD; REP's reference runtime runs ALD only, so the restriction pins it
    assert space.fixed == {"ald.schedule": "ald"} and space.describe()["export_target"] == "rep-argparse"
    base = space.base_config("vit_base_patch16_224")
    for role in ("paper", "baseline"):          # the references are points of it, unchanged
        cfg = preset(role, "l2p", "vit_base_patch16_224")
        got = space.sample(optuna.trial.FixedTrial(space.params_of(cfg)), base)
        if not cfg.ald.enabled:
            got = got.replace(**{f"ald.{k}": v for k, v in cfg.to_dict()["ald"].items()})
        assert config_hash(got) == config_hash(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(30):
        trial = study.ask()
        cfg = space.sample(trial, base)
        study.tell(trial, 0.0)
        assert trial.params.get("atom.inflect", 1.0) in (-1.0, 0.0, 1.0)


def test_tome_restriction_fixes_ald_off_and_unprotected_token_prompts():
    space = SearchSpace.load("l2p").for_export("tome")
    assert space.fixed == {"atom.protect_prompts": False, "ald.enabled": False}
    assert not [k for k in space.params if k.startswith("ald.")]
    assert {"atom.form", "atom.per_layer", "atom.inflect"} <= set(space.params)        # ToMe takes any list
    paper = space.sample(optuna.trial.FixedTrial(space.params_of(preset("paper"))), space.base_config())
    assert paper.merge_schedule == preset("paper").merge_schedule
    assert (paper.ald.enabled, paper.atom.protect_prompts) == (False, False)
    # DualPrompt's prompts are prefixes: no protection rule to pin
    assert SearchSpace.load("dualprompt").for_export("tome").fixed == {"ald.enabled": False}


@pytest.mark.parametrize("params, fixed", [
    ("  training.precision: {type: categorical, choices: [fp32, bf16]}\n  ald.schedule: {type: categorical, choices: [pld, ald]}\n"
     "  atom.prop_attn: {type: categorical, choices: [true, false]}\n  atom.r: {type: int, low: 0, high: 8}\n",
     {"training.precision": "fp32", "ald.schedule": "ald", "atom.prop_attn": False}),
])
def test_restriction_fixes_single_choices(tmp_path, params, fixed):
    space = SearchSpace.load(_write(tmp_path, "params:\n" + params)).for_export("rep-argparse")
    assert space.fixed == fixed and set(space.params) == {"atom.r"}


@pytest.mark.parametrize("body, message", [
    ("params:\n  atom.per_layer: {type: int, low: 0, high: 8}\n", r"\['per_layer'\] merge schedules.*only \['ramp'\]"),
    ("params:\n  atom.r: {type: int, low: 0, high: 8}\n  atom.inflect: {type: float, low: 0.2, high: 0.8}\n",
     r"params.atom.inflect \[0.2, 0.8\].*only the inflections"),
    ("params:\n  training.precision: {type: categorical, choices: [bf16, fp16]}\n", r"params.training.precision.*\['fp32'\]"),
    ("fixed: {training.precision: bf16}\nparams:\n  atom.r: {type: int, low: 0, high: 8}\n",
     r"fixed training.precision='bf16'.*\['fp32'\]"),
])
def test_restriction_errors_name_what_the_target_cannot_express(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.load(_write(tmp_path, body)).for_export("rep-argparse")


def test_restriction_narrows_inflect_and_checks_overrides(tmp_path):
    space = SearchSpace.load(_write(tmp_path, "params:\n  atom.r: {type: int, low: 0, high: 8}\n"
                                              "  atom.inflect: {type: float, low: 0.0, high: 1.0}\n"))
    p = space.for_export("rep-argparse").params["atom.inflect"]
    assert (p.low, p.high, p.step) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"--set training.precision='bf16'"):
        SearchSpace.load("l2p").for_export("rep-argparse", {"training.precision": "bf16", "training.epochs": 1})
