"""Exporters: rep-argparse through a parser declared like the reference's, tome, yaml/json, CLI."""
from __future__ import annotations

import argparse
import ast
import json
import shlex

import pytest
import yaml

from rep_tune.cli import export as cli_export
from rep_tune.config import RepConfig, preset
from rep_tune.data.scenario import Scenario
from rep_tune.export import ExportError, export, formats
from rep_tune.export.ramp_fit import fit_ramp
from rep_tune.schedule import keep_probabilities, ramp

BASE = "vit_base_patch16_224"
NON_RAMP = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 30]


def reference_parser() -> argparse.ArgumentParser:
    """Flags declared as the REP/L2P/DualPrompt reference declares them (type=bool quirk included)."""
    parser = argparse.ArgumentParser("main.py")
    sub = parser.add_subparsers(dest="subparser_name")
    for name in ("cifar100_l2p", "cifar100_dualprompt", "imr_l2p", "imr_dualprompt"):
        p = sub.add_parser(name)
        p.add_argument("--model", type=str)
        p.add_argument("--selection_model", default="vit_tiny_patch16_224", type=str)
        p.add_argument("--input-size", default=224, type=int)
        p.add_argument("--pretrained", default=True)          # no type: the string passes through
        p.add_argument("--batch-size", default=16, type=int)
        p.add_argument("--epochs", default=6, type=int)
        p.add_argument("--lr", default=0.03, type=float)
        p.add_argument("--opt", default="adam", type=str)
        p.add_argument("--clip-grad", default=1.0, type=float)
        p.add_argument("--seed", default=42, type=int)
        p.add_argument("--budget_per_task", default=None, type=int)
        p.add_argument("--dataset", default="Split-CIFAR100", type=str)
        p.add_argument("--data-path", default="/local_datasets/", type=str)
        p.add_argument("--num_tasks", default=10, type=int)
        p.add_argument("--train_mask", default=True, type=bool)
        p.add_argument("--task_inc", default=False, type=bool)
        p.add_argument("--size", default=10, type=int)
        p.add_argument("--length", default=5, type=int)
        p.add_argument("--top_k", default=5, type=int)
        p.add_argument("--batchwise_prompt", default=True, type=bool)
        p.add_argument("--embedding_key", default="cls", type=str)
        p.add_argument("--prompt_key_init", default="uniform", type=str)
        p.add_argument("--head_type", default="prompt", type=str)
        p.add_argument("--pull_constraint_coeff", default=0.1, type=float)
        p.add_argument("--use_g_prompt", default=True, type=bool)
        p.add_argument("--g_prompt_length", default=5, type=int)
        p.add_argument("--g_prompt_layer_idx", default=[0, 1], type=int, nargs="+")
        p.add_argument("--use_prefix_tune_for_g_prompt", default=True, type=bool)
        p.add_argument("--use_e_prompt", default=True, type=bool)
        p.add_argument("--e_prompt_layer_idx", default=[2, 3, 4], type=int, nargs="+")
        p.add_argument("--use_prefix_tune_for_e_prompt", default=True, type=bool)
        p.add_argument("--r", default=0, type=int)
        p.add_argument("--scheduling_factor", default=1.0, type=float)
        p.add_argument("--theta", default=0.5, type=float)
        p.add_argument("--gamma", default=0.001, type=float)
        p.add_argument("--tau", default=16, type=int)
        p.add_argument("--alpha", default=0.9, type=float)
    return parser


def parse(result) -> argparse.Namespace:
    """Parse the exported command line exactly as a shell + the reference's argparse would."""
    tokens = shlex.split(result.text.splitlines()[-1])
    assert tokens[:2] == ["python", "main.py"] and tokens[2:] == result.data["argv"]
    return reference_parser().parse_args(tokens[2:])


def test_type_bool_quirk_is_real():
    ns = reference_parser().parse_args(["cifar100_l2p", "--train_mask", "False", "--batchwise_prompt", ""])
    assert ns.train_mask is True and ns.batchwise_prompt is False


def test_l2p_round_trips_through_quirky_parser():
    cfg = preset("paper", "l2p", BASE).replace(**{
        "training.train_mask": False, "prompt.batchwise": False, "backbone.pretrained": False,
        "training.iters_per_task": 250, "training.seed": 7, "training.optimizer": "adamw",
        "prompt.pull_coeff": 0.25, "prompt.pool_size": 12, "prompt.top_k": 4, "prompt.length": 6})
    r = export(cfg, "rep-argparse")
    assert "--train_mask ''" in r.text and "--batchwise_prompt ''" in r.text
    ns = parse(r)
    assert ns.subparser_name == "cifar100_l2p"
    assert (ns.train_mask, ns.batchwise_prompt, bool(ns.pretrained), ns.task_inc) == (False, False, False, False)
    assert (ns.model, ns.selection_model, ns.input_size) == (BASE, "vit_tiny_patch16_224", 224)
    assert (ns.batch_size, ns.epochs, ns.lr, ns.opt, ns.clip_grad, ns.seed, ns.budget_per_task) == \
        (16, 3, 0.03, "adamw", 1.0, 7, 250)
    assert (ns.size, ns.length, ns.top_k, ns.pull_constraint_coeff, ns.head_type) == (12, 6, 4, 0.25, "prompt")
    assert (ns.theta, ns.gamma, ns.tau, ns.alpha) == (0.5, 0.001, 16, 0.9)


def test_true_bools_parse_true():
    ns = parse(export(preset("paper", "l2p", BASE), "rep-argparse"))
    assert (ns.train_mask, ns.batchwise_prompt, bool(ns.pretrained)) == (True, True, True)


def test_paper_preset_is_r8_linear_ramp():
    cfg = preset("paper", "l2p", BASE)
    ns = parse(export(cfg, "rep-argparse"))
    assert (ns.r, ns.scheduling_factor) == (8, 1.0)
    assert ramp(ns.r, 12, ns.scheduling_factor) == cfg.merge_schedule


def test_dualprompt_layer_flags_and_empty_g_layers():
    cfg = preset("paper", "dualprompt", "vit_large_patch16_224")
    ns = parse(export(cfg, "rep-argparse"))
    assert (ns.g_prompt_layer_idx, ns.e_prompt_layer_idx) == ([0, 1], [2, 3, 4])
    assert (ns.use_g_prompt, ns.use_e_prompt, ns.use_prefix_tune_for_e_prompt) == (True, True, True)
    assert (ns.r, ns.scheduling_factor, ns.tau, ns.top_k, ns.batchwise_prompt) == (6, 1.0, 12, 1, False)
    assert ramp(ns.r, 24, ns.scheduling_factor) == cfg.merge_schedule
    ns = parse(export(cfg.replace(**{"prompt.g_layers": [], "prompt.e_layers": [1, 5]}), "rep-argparse"))
    assert (ns.use_g_prompt, ns.e_prompt_layer_idx) == (False, [1, 5])


def test_constant_schedule_maps_to_inflect_zero():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": [5] * 12})
    ns = parse(export(cfg, "rep-argparse"))
    assert (ns.r, ns.scheduling_factor) == (5, 0.0)


def test_non_ramp_raises_naming_closest_ramp():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": NON_RAMP})
    with pytest.raises(ExportError) as e:
        export(cfg, "rep-argparse")
    msg = str(e.value)
    assert str(NON_RAMP) in msg and "--r 6 --scheduling_factor 1.0" in msg
    assert "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 18]" in msg and "allow_approx" in msg


def test_allow_approx_exports_closest_ramp_with_warning():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.merge": NON_RAMP})
    r = export(cfg, "rep-argparse", allow_approx=True)
    ns = parse(r)
    assert (ns.r, ns.scheduling_factor) == (6, 1.0)
    approx = [w for w in r.warnings if w.startswith("approximation:")]
    assert len(approx) == 1 and "per-layer difference" in approx[0] and "85 vs 67" in approx[0]
    assert "# WARNING: approximation:" in r.text


def test_fit_ramp_exact_and_closest():
    assert fit_ramp(ramp(4, 12, 0.5)).exact and (fit_ramp(ramp(4, 12, 0.5)).r, fit_ramp(ramp(4, 12, 0.5)).inflect) == (4, 0.5)
    assert (fit_ramp([0] * 12).r, fit_ramp([0] * 12).inflect) == (0, 1.0)
    f = fit_ramp(NON_RAMP)
    assert not f.exact and f.ramp == ramp(6, 12, 1.0) and f.diff == [0] * 11 + [18]


def test_atom_and_ald_disabled_keep_every_block():
    cfg = preset("baseline", "l2p", BASE)
    ns = parse(export(cfg, "rep-argparse"))
    assert ns.r == 0 and (ns.theta, ns.alpha) == (1.0, 1.0)
    # theta_min = 1 alone would still leave alpha on blocks past tau; with alpha = 1 every block is kept
    assert keep_probabilities(0, [50] * 12, 196, ns.theta, ns.gamma, 0, ns.alpha) == [1.0] * 12
    assert keep_probabilities(0, [50] * 12, 196, 1.0, 0.001, 0, 0.9)[-1] == pytest.approx(0.9)


def test_no_surrogate_maps_to_same_model_with_warning():
    r = export(preset("baseline", "l2p", BASE), "rep-argparse")
    assert parse(r).selection_model == BASE
    assert any("no 'no surrogate' mode" in w for w in r.warnings)


def test_protect_prompts_false_refused_even_with_allow_approx():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.protect_prompts": False})
    with pytest.raises(ExportError, match="protect_prompts"):
        export(cfg, "rep-argparse", allow_approx=True)


def test_prop_attn_needs_allow_approx():
    cfg = preset("paper", "l2p", BASE).replace(**{"atom.prop_attn": True})
    with pytest.raises(ExportError, match="prop_attn"):
        export(cfg, "rep-argparse")
    assert any("prop_attn" in w for w in export(cfg, "rep-argparse", allow_approx=True).warnings)


def test_embedded_backbone_needs_allow_approx():
    with pytest.raises(ExportError, match="vit_micro_patch4_32"):
        export(preset("paper"), "rep-argparse")
    assert parse(export(preset("paper"), "rep-argparse", allow_approx=True)).model == "vit_micro_patch4_32"


def test_lr_unscaled_and_no_clipping():
    cfg = preset("paper", "l2p", BASE).replace(**{"training.lr_scale_by_batch": False, "training.lr": 0.001,
                                                   "training.clip_grad": None, "training.batch_size": 24})
    ns = parse(export(cfg, "rep-argparse"))
    assert ns.lr * ns.batch_size / 256 == pytest.approx(0.001, rel=1e-12)   # what the reference runs
    assert ns.clip_grad == float("inf")


def test_scenario_sets_tasks_and_dataset():
    sc = Scenario(dataset="imagenet-r", n_tasks=10, data_path="/data")
    ns = parse(export(preset("paper", "dualprompt", BASE), "rep-argparse", scenario=sc))
    assert (ns.subparser_name, ns.num_tasks, ns.dataset, ns.data_path) == \
        ("imr_dualprompt", 10, "Split-Imagenet-R", "/data")


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
    assert "--r 6 --scheduling_factor 1.0" in out.read_text() and "approximation" in capsys.readouterr().err
    assert _cli(["--config", str(src), "--format", "json", "--out", str(tmp_path / "c.json")]) == 0
    assert RepConfig.load(tmp_path / "c.json") == RepConfig.load(src)
    assert set(formats()) >= {"yaml", "json", "rep-argparse", "tome"}
