"""Exporters: rep-argparse through a parser declared like the reference's, tome, yaml/json, CLI."""
from __future__ import annotations

import argparse
import ast
import json
import shlex

import optuna
import pytest
import yaml

from rep_tune.cli import export as cli_export
from rep_tune.cli import search as cli_search
from rep_tune.config import RepConfig, preset
from rep_tune.data.scenario import Scenario
from rep_tune.export import ExportError, capabilities, export, export_targets, formats
from rep_tune.export.rep_argparse import CAPS, IGNORED_PREFIX, dataset_config
from rep_tune.export.tome import NOT_ATOM
from rep_tune.schedule import INTEGER_INFLECTS, fit_ramp, keep_probabilities, ramp
from rep_tune.search.space import SearchSpace
from rep_tune.search.targets import load_targets

optuna.logging.set_verbosity(optuna.logging.WARNING)

LARGE = "vit_large_patch16_224"        # the backbone the public reference copy registers for both methods
BASE = "vit_base_patch16_224"
NON_RAMP = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 30]


def _common_flags(p: argparse.ArgumentParser, *, length: int, top_k: int, pull: float, head: str) -> None:
    """The flags configs/cifar100_rep.py and configs/cifar100_rep_dual.py both declare, names and types as there."""
    p.add_argument("--batch-size", default=16, type=int)
    p.add_argument("--epochs", default=6, type=int)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--selection_model", default="vit_tiny_patch16_224", type=str)
    p.add_argument("--model", default="vit_large_patch16_224_adaptive_layer_drop", type=str)
    p.add_argument("--input-size", default=224, type=int)
    p.add_argument("--pretrained", default=True)          # no type: the string passes through
    p.add_argument("--opt", default="adam", type=str)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--data-path", default="/local_datasets/", type=str)
    p.add_argument("--dataset", default="Split-CIFAR100", type=str)
    p.add_argument("--seed", default=41, type=int)
    p.add_argument("--num_tasks", default=10, type=int)
    p.add_argument("--train_mask", default=True, type=bool)
    p.add_argument("--task_inc", default=False, type=bool)
    p.add_argument("--size", default=10, type=int)
    p.add_argument("--length", default=length, type=int)
    p.add_argument("--top_k", default=top_k, type=int)
    p.add_argument("--prompt_key_init", default="uniform", type=str)
    p.add_argument("--use_prompt_mask", default=False, type=bool)
    p.add_argument("--shared_prompt_pool", default=False, type=bool)
    p.add_argument("--shared_prompt_key", default=False, type=bool)
    p.add_argument("--batchwise_prompt", default=True, type=bool)
    p.add_argument("--embedding_key", default="cls", type=str)
    p.add_argument("--pull_constraint_coeff", default=pull, type=float)
    p.add_argument("--head_type", default=head, choices=["token", "gap", "prompt", "token+prompt"], type=str)
    p.add_argument("--budget_per_task", default=1875, type=int)
    p.add_argument("--r", default=8, type=int)
    p.add_argument("--scheduling_factor", default=1, type=int)
    p.add_argument("--theta", default=0.5, type=float)
    p.add_argument("--gamma", default=0.001, type=float)
    p.add_argument("--tau", default=16, type=int)
    p.add_argument("--alpha", default=0.9, type=float)


def _dual_flags(p: argparse.ArgumentParser) -> None:
    """configs/cifar100_rep_dual.py's G/E-prompt flags."""
    p.add_argument("--use_g_prompt", default=True, type=bool)
    p.add_argument("--g_prompt_length", default=5, type=int)
    p.add_argument("--g_prompt_layer_idx", default=[0, 1], type=int, nargs="+")
    p.add_argument("--use_prefix_tune_for_g_prompt", default=True, type=bool)
    p.add_argument("--use_e_prompt", default=True, type=bool)
    p.add_argument("--e_prompt_layer_idx", default=[2, 3, 4], type=int, nargs="+")
    p.add_argument("--use_prefix_tune_for_e_prompt", default=True, type=bool)


def reference_parse(argv: list[str]) -> argparse.Namespace:
    """Parse as the reference's run_rep.py does: the first positional picks the config, whose
    get_args_parser declares the flags on a subparser of that name (unknown names raise).

    The public copy's run_rep.py dispatches cifar100_rep / imr_rep; its DualPrompt configs
    (configs/*_rep_dual.py) are dispatched here the same way.
    """
    parser = argparse.ArgumentParser("L2P training and evaluation configs")
    config = parser.parse_known_args(argv)[-1][0]
    sub = parser.add_subparsers(dest="subparser_name")
    if config in ("cifar100_rep", "imr_rep"):
        _common_flags(sub.add_parser(config), length=5, top_k=5, pull=0.1, head="prompt")
    elif config in ("cifar100_rep_dual", "imr_rep_dual"):
        p = sub.add_parser(config)
        _common_flags(p, length=20, top_k=1, pull=1.0, head="token")
        _dual_flags(p)
    else:
        raise NotImplementedError(config)
    return parser.parse_args(argv)


def parse(result) -> argparse.Namespace:
    """Parse the exported command line exactly as a shell + the reference's argparse would."""
    tokens = shlex.split(result.text.splitlines()[-1])
    assert tokens[:2] == ["python", "run_rep.py"] and tokens[2:] == result.data["argv"]
    return reference_parse(tokens[2:])


def test_type_bool_quirk_is_real():
    ns = reference_parse(["cifar100_rep", "--train_mask", "False", "--batchwise_prompt", ""])
    assert ns.train_mask is True and ns.batchwise_prompt is False


def test_reference_parser_refuses_float_scheduling_factor():
    """The failure the issue reported: a float token for an int flag."""
    with pytest.raises(SystemExit):
        reference_parse(["cifar100_rep", "--scheduling_factor", "1.0"])


def test_l2p_round_trips_through_reference_parser():
    cfg = preset("paper", "l2p", LARGE).replace(**{
        "training.train_mask": False, "prompt.batchwise": False, "backbone.pretrained": False,
        "training.iters_per_task": 250, "training.epochs": 5, "training.seed": 7, "training.optimizer": "adamw",
        "prompt.pull_coeff": 0.25, "prompt.pool_size": 12, "prompt.top_k": 4, "prompt.length": 6})
    r = export(cfg, "rep-argparse")
    assert "--train_mask ''" in r.text and "--batchwise_prompt ''" in r.text
    assert "--scheduling_factor 1 " in r.text and "training.epochs/iters_per_task" in r.text
    ns = parse(r)
    assert ns.subparser_name == "cifar100_rep"
    assert (ns.train_mask, ns.batchwise_prompt, bool(ns.pretrained), ns.task_inc) == (False, False, False, False)
    assert (ns.model, ns.selection_model, ns.input_size) == \
        ("vit_large_patch16_224_adaptive_layer_drop", "vit_tiny_patch16_224", 224)
    assert (ns.batch_size, ns.epochs, ns.lr, ns.opt, ns.clip_grad, ns.seed, ns.budget_per_task) == \
        (16, 5, 0.03, "adamw", 1.0, 7, 250)
    assert (ns.size, ns.length, ns.top_k, ns.pull_constraint_coeff, ns.head_type) == (12, 6, 4, 0.25, "prompt")
    assert (ns.use_prompt_mask, ns.shared_prompt_pool) == (False, False)
    assert (ns.r, ns.scheduling_factor, ns.theta, ns.gamma, ns.tau, ns.alpha) == (8, 1, 0.5, 0.001, 16, 0.9)
    # vit_large with the L2P suffix is registered: nothing to say but what the public copy does whatever the flags say
    assert r.warnings == list(CAPS.runtime_warnings)


IGNORED = ["--r", "--scheduling_factor", "--tau", "--alpha"]      # REP_METHOD.md: "What the public reference copy actually does"


@pytest.mark.parametrize("role", ["paper", "baseline"])
def test_every_export_names_the_flags_the_public_copy_ignores(role):
    r = export(preset(role, "l2p", LARGE), "rep-argparse")
    ignored = [w[len(IGNORED_PREFIX):].split(":")[0] for w in r.warnings if w.startswith(IGNORED_PREFIX)]
    assert ignored == IGNORED
    forced = [w for w in r.warnings if "drops 3 blocks every iteration" in w]
    assert len(forced) == 1 and "even for the baseline" in forced[0] and "--theta 1.0 --alpha 1.0" in forced[0]
    assert all("\n" not in w for w in r.warnings)                   # one line each on stderr
    for w in r.warnings:                                             # and a comment line each in the command file
        assert f"# WARNING: {w}\n" in r.text
    ns = parse(r)                                                    # the flags are still written, as declared
    if role == "baseline":
        assert (ns.r, ns.theta, ns.alpha) == (0, 1.0, 1.0)


def test_true_bools_parse_true():
    ns = parse(export(preset("paper", "l2p", LARGE), "rep-argparse"))
    assert (ns.train_mask, ns.batchwise_prompt, bool(ns.pretrained)) == (True, True, True)


def test_unregistered_timm_backbone_is_named_in_a_warning():
    r = export(preset("paper", "l2p", BASE), "rep-argparse")
    assert parse(r).model == "vit_base_patch16_224_adaptive_layer_drop"
    assert any("registers only vit_large_patch16_224_adaptive_layer_drop" in w for w in r.warnings)


def test_paper_preset_is_r8_linear_ramp():
    cfg = preset("paper", "l2p", BASE)
    ns = parse(export(cfg, "rep-argparse"))
    assert (ns.r, ns.scheduling_factor) == (8, 1)
    assert ramp(ns.r, 12, ns.scheduling_factor) == cfg.merge_schedule


def test_dualprompt_round_trips_through_reference_parser():
    """For a reference copy patched to dispatch cifar100_rep_dual (the public one cannot run DualPrompt)."""
    cfg = preset("paper", "dualprompt", LARGE).replace(**{"training.iters_per_task": 1875})
    r = export(cfg, "rep-argparse", dataset_config="cifar100_rep_dual")
    ns = parse(r)
    assert ns.subparser_name == "cifar100_rep_dual"
    assert (ns.model, ns.selection_model) == ("vit_large_patch16_224_adaptive_layer_drop_dual", "vit_tiny_patch16_224")
    assert (ns.g_prompt_layer_idx, ns.e_prompt_layer_idx, ns.g_prompt_length) == ([0, 1], [2, 3, 4], 5)
    assert (ns.use_g_prompt, ns.use_e_prompt, ns.use_prefix_tune_for_e_prompt) == (True, True, True)
    assert (ns.size, ns.length, ns.top_k, ns.pull_constraint_coeff, ns.head_type) == (10, 20, 1, 1.0, "token")
    assert (ns.batchwise_prompt, ns.use_prompt_mask, ns.shared_prompt_pool, ns.shared_prompt_key) == \
        (False, True, True, False)
    assert (ns.r, ns.scheduling_factor, ns.theta, ns.tau, ns.budget_per_task, ns.train_mask) == \
        (6, 1, 0.5, 12, 1875, True)
    assert ramp(ns.r, 24, ns.scheduling_factor) == cfg.merge_schedule
    # REP's DualPrompt configs train at --lr 0.005 (L2P's 0.03 would be 6x too high)
    assert ns.lr == pytest.approx(0.005) and parse(export(preset("paper", "l2p", LARGE), "rep-argparse")).lr == 0.03
    assert any("patched to dispatch it" in w and "cannot run DualPrompt" in w for w in r.warnings)
    ns = parse(export(cfg.replace(**{"prompt.g_layers": [], "prompt.e_layers": [1, 5],
                                     "prompt.carry_over": False}), "rep-argparse", dataset_config="cifar100_rep_dual"))
    assert (ns.use_g_prompt, ns.e_prompt_layer_idx, ns.shared_prompt_pool) == (False, [1, 5], False)


def test_coda_is_refused_naming_the_method():
    cfg = preset("paper", "coda", LARGE)
    for approx, config in ((False, None), (True, None), (False, "cifar100_rep")):
        with pytest.raises(ExportError) as e:
            export(cfg, "rep-argparse", allow_approx=approx, dataset_config=config)
        msg = str(e.value)
        assert "the REP reference runtime cannot run CODA-Prompt: it has no CODA-Prompt entry point" in msg
        assert "prompt flags for L2P and DualPrompt only" in msg
        assert "--format yaml" in msg and "--export-target rep-argparse" in msg


@pytest.mark.parametrize("scenario, config", [(None, "cifar100_rep_dual"),
                                              (Scenario(dataset="imagenet-r", n_tasks=10), "imr_rep_dual")])
def test_dualprompt_is_refused_saying_why(scenario, config):
    """REP_METHOD.md: the public copy's run_rep.py dispatches only the L2P configs."""
    cfg = preset("paper", "dualprompt", LARGE)
    for approx in (False, True):
        with pytest.raises(ExportError) as e:
            export(cfg, "rep-argparse", allow_approx=approx, scenario=scenario)
        msg = str(e.value)
        assert ("the public REP reference copy cannot run DualPrompt: its run_rep.py dispatches only the dataset "
                "configs cifar100_rep/imr_rep") in msg
        assert "without adding that dispatch" in msg and f"--dataset-config {config}" in msg
    assert e.value.issues == [f"prompt.method 'dualprompt' (DualPrompt): {CAPS.refused_methods['dualprompt']}"]
    assert dataset_config(cfg, scenario) == config


def test_constant_schedule_maps_to_inflect_zero():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": [5] * 12})
    ns = parse(export(cfg, "rep-argparse"))
    assert (ns.r, ns.scheduling_factor) == (5, 0)


def test_decreasing_ramp_maps_to_inflect_minus_one():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": ramp(4, 12, -1.0)})
    ns = parse(export(cfg, "rep-argparse"))
    assert (ns.r, ns.scheduling_factor) == (4, -1)


def test_non_integer_inflection_refused_naming_closest_integer_ramp():
    merge = ramp(6, 24, 0.5)                       # [3, 3, 3, 3, 3, 4, ...]: a ToMe ramp the flags cannot say
    cfg = preset("paper", "l2p", LARGE).replace(**{"atom.merge": merge})
    with pytest.raises(ExportError) as e:
        export(cfg, "rep-argparse")
    msg = str(e.value)
    best = fit_ramp(merge, INTEGER_INFLECTS)
    assert "inflect=0.5, whose inflection is not an integer" in msg
    assert f"--r {best.r} --scheduling_factor {int(best.inflect)}" in msg and "allow_approx" in msg
    ns = parse(export(cfg, "rep-argparse", allow_approx=True))
    assert (ns.r, ns.scheduling_factor) == (best.r, int(best.inflect))


def test_non_ramp_raises_naming_closest_ramp():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": NON_RAMP})
    with pytest.raises(ExportError) as e:
        export(cfg, "rep-argparse")
    msg = str(e.value)
    assert str(NON_RAMP) in msg and "--r 6 --scheduling_factor 1 " in msg
    assert "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 18]" in msg and "allow_approx" in msg


def test_allow_approx_exports_closest_ramp_with_warning():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": NON_RAMP})
    r = export(cfg, "rep-argparse", allow_approx=True)
    ns = parse(r)
    assert (ns.r, ns.scheduling_factor) == (6, 1)
    approx = [w for w in r.warnings if w.startswith("approximation:")]
    assert len(approx) == 1 and "per-layer difference" in approx[0] and "85 vs 67" in approx[0]
    assert "# WARNING: approximation:" in r.text


def test_fit_ramp_exact_and_closest():
    f = fit_ramp(ramp(4, 12, 0.5))
    assert f.exact and (f.r, f.inflect) == (4, 0.5)
    assert (fit_ramp([0] * 12).r, fit_ramp([0] * 12).inflect) == (0, 1.0)
    # ramp(1, 12, 0.5) == ramp(1, 12, 1.0): the preference order names the integer inflection
    assert ramp(1, 12, 0.5) == ramp(1, 12, 1.0) and (fit_ramp(ramp(1, 12, 0.5)).inflect) == 1.0
    f = fit_ramp(NON_RAMP)
    assert not f.exact and list(f.ramp) == ramp(6, 12, 1.0) and list(f.diff) == [0] * 11 + [18]
    # a fractional inflection a search sampled: exact only with a continuous span, and the same counts
    odd = ramp(12, 12, 0.37)
    assert not fit_ramp(odd).exact
    f = fit_ramp(odd, span=(-1.0, 1.0))
    assert f.exact and ramp(f.r, 12, f.inflect) == odd and -1.0 <= f.inflect <= 1.0
    assert not fit_ramp(odd, span=(0.5, 1.0)).exact


@pytest.mark.parametrize("merge", [ramp(8, 12), ramp(5, 12, 0.0), ramp(3, 12, -1.0), ramp(1, 12, 0.5),
                                   ramp(1, 12, -0.5), [0] * 11 + [1], ramp(2, 12, 1.0)])
def test_search_space_and_export_name_the_same_ramp(merge):
    """One inversion: the space's (atom.r, atom.inflect) and the exported (--r, --scheduling_factor) agree."""
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": merge})
    params = SearchSpace.load("l2p").params_of(cfg)
    if not any(merge):
        assert params["atom.enabled"] is False
        return
    fit = fit_ramp(merge, INTEGER_INFLECTS)
    if not fit.exact:            # a ramp only a fractional inflection gives: the space says it, export refuses
        assert params["atom.form"] == "per_layer" or params["atom.inflect"] not in INTEGER_INFLECTS
        return
    ns = parse(export(cfg, "rep-argparse"))
    assert (params["atom.form"], params["atom.r"], params["atom.inflect"]) == ("ramp", ns.r, ns.scheduling_factor)


def test_atom_and_ald_disabled_keep_every_block():
    cfg = preset("baseline", "l2p", BASE)
    ns = parse(export(cfg, "rep-argparse"))
    assert ns.r == 0 and (ns.theta, ns.alpha) == (1.0, 1.0)
    # theta_min = 1 alone would still leave alpha on blocks past tau; with alpha = 1 every block is kept
    assert keep_probabilities(0, [50] * 12, 196, ns.theta, ns.gamma, 0, ns.alpha) == [1.0] * 12
    assert keep_probabilities(0, [50] * 12, 196, 1.0, 0.001, 0, 0.9)[-1] == pytest.approx(0.9)


def test_no_surrogate_maps_to_same_model_with_warning():
    r = export(preset("baseline", "l2p", LARGE), "rep-argparse")
    ns = parse(r)
    assert (ns.model, ns.selection_model) == ("vit_large_patch16_224_adaptive_layer_drop", LARGE)
    assert any("no 'no surrogate' mode" in w for w in r.warnings)


def test_protect_prompts_false_refused_even_with_allow_approx():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.protect_prompts": False})
    with pytest.raises(ExportError, match="protect_prompts"):
        export(cfg, "rep-argparse", allow_approx=True)
    # DualPrompt's prompts are prefixes, not tokens: no merging rule applies, the flags say the same training
    dual = preset("paper", "dualprompt", LARGE)
    ns = parse(export(dual.replace(**{"atom.protect_prompts": False}), "rep-argparse", dataset_config="cifar100_rep_dual"))
    assert ns == parse(export(dual, "rep-argparse", dataset_config="cifar100_rep_dual"))


@pytest.mark.parametrize("change, word", [({"atom.prop_attn": True}, "prop_attn"),
                                          ({"training.precision": "bf16"}, "mixed-precision"),
                                          ({"ald.schedule": "pld"}, "ald.schedule")])
def test_unflagged_settings_need_allow_approx(change, word):
    cfg = preset("paper", "l2p", BASE).replace(**change)
    with pytest.raises(ExportError, match=word):
        export(cfg, "rep-argparse")
    assert any(word in w for w in export(cfg, "rep-argparse", allow_approx=True).warnings)


def test_embedded_backbone_needs_allow_approx():
    with pytest.raises(ExportError, match="vit_micro_patch2_28"):
        export(preset("paper"), "rep-argparse")
    ns = parse(export(preset("paper"), "rep-argparse", allow_approx=True))
    assert ns.model == "vit_micro_patch2_28_adaptive_layer_drop"


def test_lr_unscaled_and_no_clipping():
    cfg = preset("paper", "l2p", BASE).replace(**{"training.lr_scale_by_batch": False, "training.lr": 0.001,
                                                   "training.clip_grad": None, "training.batch_size": 24})
    ns = parse(export(cfg, "rep-argparse"))
    assert ns.lr * ns.batch_size / 256 == pytest.approx(0.001, rel=1e-12)   # what the reference runs
    assert ns.clip_grad == float("inf")


def test_scenario_sets_tasks_and_dataset():
    sc = Scenario(dataset="imagenet-r", n_tasks=10, data_path="/data")
    ns = parse(export(preset("paper", "dualprompt", BASE), "rep-argparse", scenario=sc, dataset_config="imr_rep_dual"))
    assert (ns.subparser_name, ns.num_tasks, ns.dataset, ns.data_path) == \
        ("imr_rep_dual", 10, "Split-Imagenet-R", "/data")
    ns = parse(export(preset("paper", "l2p", BASE), "rep-argparse", scenario=sc))
    assert ns.subparser_name == "imr_rep"


@pytest.mark.parametrize("fmt,load", [("yaml", yaml.safe_load), ("json", json.loads)])
def test_yaml_json_round_trip(fmt, load):
    cfg = preset("paper", "dualprompt", BASE).replace(**{"atom.merge": NON_RAMP, "training.clip_grad": None,
                                                         "ald.gamma": 0.0012345678901234})
    assert RepConfig.from_dict(load(export(cfg, fmt).text)) == cfg


def test_tome_per_layer_list_equals_schedule():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": NON_RAMP, "atom.prop_attn": True})
    r = export(cfg, "tome")
    assert r.data["r"] == NON_RAMP == cfg.merge_schedule
    assigned = {ast.unparse(n.targets[0]): n.value for n in ast.parse(r.text).body if isinstance(n, ast.Assign)}
    assert ast.literal_eval(assigned["model.r"]) == NON_RAMP
    assert "tome.patch.timm(model, prop_attn=True)" in r.text
    assert "NOT equivalent" in r.warnings[0] and "# WARNING: ToMe does not protect prompt tokens" in r.text
    j = json.loads(export(cfg, "tome-json").text)
    assert j["r"] == NON_RAMP and j["prop_attn"] is True and "NOT equivalent" in j["warnings"][0]


@pytest.mark.parametrize("method, title", [("dualprompt", "DualPrompt"), ("coda", "CODA-Prompt")])
def test_tome_prefix_methods_merge_what_atom_merges(method, title):
    """Prefix prompts are not tokens: ToMe's schedule is AToM's, but the prompts are not in the snippet."""
    cfg = preset("paper", method, BASE).replace(**{"backbone.img_size": 160})
    r = export(cfg, "tome")
    assert r.data["r"] == cfg.merge_schedule and not any("NOT equivalent" in w for w in r.warnings)
    assert any(w.startswith(f"{title} prompts are key/value prefixes") for w in r.warnings)
    assert f"timm.create_model({BASE!r}, pretrained=True, img_size=160)" in r.text


def test_tome_plain_tome_config_is_said_to_be_plain_tome():
    r = export(preset("paper", "l2p", BASE).replace(**{"atom.protect_prompts": False}), "tome")
    assert not any("NOT equivalent" in w for w in r.warnings) and "the config itself is plain ToMe" in r.warnings[0]


def _cli(argv):
    p = argparse.ArgumentParser()
    cli_export.add_arguments(p)
    return cli_export.run(p.parse_args(argv))


def test_cli_exit_2_on_inexpressible_and_out_file(tmp_path, capsys):
    src = preset("paper", "l2p", BASE).replace(**{"atom.merge": NON_RAMP}).save(tmp_path / "best.yaml")
    assert _cli(["--config", str(src), "--format", "rep-argparse"]) == 2
    assert "closest" in capsys.readouterr().err
    out = tmp_path / "cmd.sh"
    assert _cli(["--config", str(src), "--format", "rep-argparse", "--allow-approx", "--out", str(out)]) == 0
    assert "--r 6 --scheduling_factor 1 " in out.read_text() and "approximation" in capsys.readouterr().err
    assert _cli(["--config", str(src), "--format", "json", "--out", str(tmp_path / "c.json")]) == 0
    assert RepConfig.load(tmp_path / "c.json") == RepConfig.load(src)
    assert set(formats()) >= {"yaml", "json", "rep-argparse", "tome"}


# ---- --export-target: the search's space restricted to what the format expresses ------------------------
def _samples(space: SearchSpace, backbone: str, n: int = 30, seed: int = 5) -> list[RepConfig]:
    """``n`` points of ``space`` drawn by its own sampling function with Optuna's RandomSampler."""
    base = space.base_config(backbone)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.sample(trial, base))
        study.tell(trial, 0.0)
    return out


def _refused(cfg: RepConfig, fmt: str = "rep-argparse") -> bool:
    try:
        export(cfg, fmt)
    except ExportError:
        return True
    return False


def test_restricted_space_every_sample_exports_exactly_to_rep_argparse():
    space = SearchSpace.load("l2p")
    # the unrestricted space's samples are refused (per-layer schedules, fractional inflections): the restriction matters
    assert sum(map(_refused, _samples(space, BASE))) >= 10
    restricted = space.for_export("rep-argparse")
    assert restricted.export_target == "rep-argparse"
    for cfg in _samples(restricted, BASE):
        r = export(cfg, "rep-argparse")                    # no ExportError, no --allow-approx
        assert not [w for w in r.warnings if w.startswith("approximation")]
        ns = parse(r)
        assert ramp(ns.r, 12, ns.scheduling_factor) == (cfg.merge_schedule or [0] * 12)
        assert (ns.size, ns.length, ns.top_k, ns.batchwise_prompt, ns.pull_constraint_coeff) == (
            cfg.prompt.pool_size, cfg.prompt.length, cfg.prompt.top_k, cfg.prompt.batchwise, cfg.prompt.pull_coeff)
        assert ns.selection_model == (cfg.selection.surrogate or BASE)
        assert cfg.training.precision == "fp32" and not cfg.atom.prop_attn and cfg.atom.protect_prompts
        if cfg.ald.enabled:
            assert cfg.ald.schedule == "ald"
            assert (ns.theta, ns.gamma, ns.tau, ns.alpha) == (cfg.ald.theta_min, cfg.ald.gamma, cfg.ald.tau, cfg.ald.alpha)
        else:
            assert (ns.theta, ns.alpha) == (1.0, 1.0)      # every block kept (as far as the flags go)
        assert (ns.batch_size, ns.lr, ns.seed) == (cfg.training.batch_size, cfg.training.lr, cfg.training.seed)


def test_restricted_space_every_sample_exports_exactly_to_tome():
    space = SearchSpace.load("l2p")
    left_out = lambda r: [w for w in r.warnings if w == NOT_ATOM or w.startswith("ALD")]    # noqa: E731
    assert any(left_out(export(c, "tome")) for c in _samples(space, BASE))
    for cfg in _samples(space.for_export("tome"), BASE):
        r = export(cfg, "tome")
        assert left_out(r) == []
        assert (r.data["r"], r.data["prop_attn"], r.data["model"]) == \
            ((cfg.merge_schedule or [0] * 12), cfg.atom.prop_attn, BASE)
        assert not cfg.ald.enabled and not cfg.atom.protect_prompts     # what ToMe runs: no ALD, prompt tokens merge


def test_search_best_on_an_fp16_device_stays_fp32_for_rep_argparse():
    """The best is written as deployed: the device's fp16 unless the export target cannot train at it."""
    cfg = preset("paper", "l2p", BASE)
    plain, = load_targets(["jetson_orin"])
    assert plain.deployed_config(cfg).training.precision == "fp16"
    with pytest.raises(ExportError, match="mixed-precision"):
        export(plain.deployed_config(cfg), "rep-argparse")
    target, = load_targets(["jetson_orin"], export_target="rep-argparse")
    deployed = target.deployed_config(cfg)
    assert deployed.training.precision == "fp32" and deployed.backbone.name == BASE
    assert parse(export(deployed, "rep-argparse")).model == "vit_base_patch16_224_adaptive_layer_drop"
    # priced at the precision it runs: fp32 is slower than fp16 on the same device
    assert target.predict(cfg).latency_ms.value > plain.predict(cfg).latency_ms.value
    tome, = load_targets(["jetson_orin"], export_target="tome")       # ToMe carries no training precision
    assert tome.deployed_config(cfg).training.precision == "fp16"


def test_search_cli_export_target_choices_come_from_the_registry():
    assert export_targets() == [f for f in formats() if capabilities(f).restricts]
    assert {"rep-argparse", "tome"} <= set(export_targets()) and "yaml" not in export_targets()
    p = argparse.ArgumentParser()
    cli_search.add_arguments(p)
    s = cli_search.settings_from_args(p.parse_args(["--device", "jetson_orin", "--export-target", "rep-argparse"]))
    assert s.export_target == "rep-argparse"
    assert cli_search.settings_from_args(p.parse_args(["--device", "jetson_orin"])).export_target is None
    with pytest.raises(SystemExit):
        p.parse_args(["--device", "jetson_orin", "--export-target", "yaml"])


def test_cli_prints_each_warning_on_one_stderr_line(tmp_path, capsys):
    src = preset("baseline", "l2p", LARGE).save(tmp_path / "best.yaml")
    out = tmp_path / "cmd.sh"
    assert _cli(["--config", str(src), "--format", "rep-argparse", "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [line.removeprefix("rep-tune export: warning: ") for line in err if line.startswith("rep-tune export: warning: ")]
    assert warned == export(RepConfig.load(src), "rep-argparse").warnings
    assert [w[len(IGNORED_PREFIX):].split(":")[0] for w in warned if w.startswith(IGNORED_PREFIX)] == IGNORED
    assert sum(line.startswith("# WARNING: ") for line in out.read_text().splitlines()) == len(warned)


def test_search_with_export_target_writes_a_best_that_exports_exactly(tmp_path):
    """End to end with the fake trainer (no network): the best on an fp16 Jetson exports with no --allow-approx."""
    import io
    import sys
    from pathlib import Path

    from rep_tune.search.run import SearchSettings, search
    sys.path.insert(0, str(Path(__file__).parent))
    from search_fakes import PROXY, FakeTrain, write_space

    settings = SearchSettings(confirm_seeds=0, devices=["jetson_orin"], space=write_space(tmp_path / "space.yaml"),
                              backbone=PROXY, scenario=Scenario(n_tasks=2), n_trials=4, timeout=None,
                              run_dir=str(tmp_path / "run"), progress=False, seed=0, sampler="random",
                              budgets={"latency_ms": "10s"}, export_target="rep-argparse")
    outcome = search(settings, train_fn=FakeTrain(0.0), out=io.StringIO())
    assert SearchSettings.resume(tmp_path / "run").export_target == "rep-argparse"      # kept in run.yaml
    assert outcome.study.user_attrs["space"]["export_target"] == "rep-argparse"
    best = RepConfig.load(outcome.files["best_jetson_orin"])
    assert (best.training.precision, best.backbone.name) == ("fp32", BASE)
    r = export(best, "rep-argparse")
    assert not [w for w in r.warnings if w.startswith("approximation")]
    ns = parse(r)
    assert ramp(ns.r, 12, ns.scheduling_factor) == (best.merge_schedule or [0] * 12)
    assert len(outcome.study.trials) <= 8
    for t in outcome.study.trials:        # every trial sampled an integer ramp
        assert t.params.get("atom.form", "ramp") == "ramp" and t.params.get("atom.inflect", 1.0) in (-1.0, 0.0, 1.0)
