"""The REP reference runtime's command line (argparse flags only; see REP_METHOD.md, last section).

Quirks respected here:
- boolean flags are declared ``type=bool``: ``bool("False")`` is True, only an empty string
  parses as False. So False is emitted as an empty argv token (``--flag ''`` once shell-quoted),
  True as ``--flag True``.
- layer-index flags (``nargs='+'``, ``type=int``) take one argv token per index; an empty list
  cannot be written, so an empty G/E layer list switches that prompt off (``--use_g_prompt ''``).
- the merge schedule is only ``--r`` / ``--scheduling_factor`` (ToMe's ``parse_r((r, inflect))``):
  a per-layer schedule that is not exactly such a ramp is refused (or, with ``allow_approx``,
  replaced by the closest ramp and reported in the warnings; never rounded silently).

Decisions (what cannot be said in the reference's flags):
- ``selection.surrogate: null`` (query from the update backbone itself): the reference has no
  "no surrogate" mode; it is exported as ``--selection_model`` = ``--model``: a frozen copy of
  the same pretrained backbone computes the query, as in base L2P/DualPrompt, and no projection
  is needed (equal widths). Same query, but the reference holds the backbone twice; reported as a
  warning, not an error.
- ``atom.protect_prompts: false`` (plain ToMe): the reference always protects prompts; refused
  even with ``allow_approx`` (it is another method: 70.2 vs 75.3 in REP's ablation). Use
  ``--format tome`` for plain ToMe.
- ``atom.prop_attn: true``: the reference has no flag; refused unless ``allow_approx`` (then
  exported without proportional attention, with a warning). We assume the reference trains
  without it, as ToMe advises for training.
- local checkpoints, non-pretrained surrogates, backbones timm cannot build (rep-tune's embedded
  ViTs), weight tags (timm 0.6.13 has none) and scenario datasets the reference lacks: refused
  unless ``allow_approx``.
- the reference always scales ``--lr`` by batch/256; ``lr_scale_by_batch: false`` is exported
  as ``--lr = lr * 256 / batch`` (a warning says so).
- ``clip_grad: null`` is ``--clip-grad inf`` (clip factor min(inf/norm, 1) = 1: no clipping).
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.export import ExportError, ExportOptions, ExportResult, register
from rep_tune.export.ramp_fit import INFLECTS, fit_ramp

# timm ViT sizes the reference runtime (timm 0.6.13) can build; pico/micro are rep-tune's own.
TIMM_SIZES = ("tiny", "small", "base", "large", "huge")
# rep-tune scenario dataset -> (reference --dataset, dataset-config prefix)
DATASETS = {"cifar100": ("Split-CIFAR100", "cifar100"), "imagenet-r": ("Split-Imagenet-R", "imr")}


def bool_token(value: bool) -> str:
    """Argv token for a ``type=bool`` flag: only the empty string parses as False."""
    return "True" if value else ""


def num_token(value: int | float) -> str:
    """Argv token for a number: ints as ints, floats by repr (exact round-trip through float())."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(float(value))


@dataclass
class _Issues:
    """What the flags cannot say: ``hard`` (never), ``approx`` (with allow_approx), ``notes``."""

    hard: list[str] = field(default_factory=list)
    approx: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ArgparseCommand:
    """The reference runtime's invocation: ``argv`` (after ``python <program>``) and the shell line."""

    program: str
    argv: list[str]
    warnings: list[str]

    @property
    def command(self) -> str:
        return shlex.join(["python", self.program, *self.argv])


def _timm_name(name: str, field_name: str, issues: _Issues) -> str:
    """The name the reference's timm can create; tags and non-timm sizes are reported."""
    base, _, tag = name.partition(".")
    m = re.match(r"^vit_([a-z]+)_", base)
    if not m or m.group(1) not in TIMM_SIZES:
        issues.approx.append(f"{field_name} {name!r} is not a timm model the reference runtime can create "
                             f"(timm sizes: {', '.join(TIMM_SIZES)}); it would be passed as {base!r}, which the reference must register")
    elif tag:
        issues.approx.append(f"{field_name} {name!r}: the weights tag '.{tag}' cannot be passed (timm 0.6.13 has "
                             f"no tags); it would be passed as {base!r}, with the reference's default pretrained weights")
    return base


def _models(cfg: RepConfig, issues: _Issues) -> list[str]:
    b, s = cfg.backbone, cfg.selection
    model = _timm_name(b.name, "backbone.name", issues)
    if b.checkpoint:
        issues.approx.append(f"backbone.checkpoint {b.checkpoint!r}: the reference has no checkpoint flag; "
                             "--pretrained loads hub weights instead")
    if s.surrogate is None:
        selection = model
        issues.notes.append(f"selection.surrogate is null (query from the update backbone), but the reference runtime "
                            f"has no 'no surrogate' mode: exported as --selection_model {model} (a frozen copy of the "
                            "same backbone computes the same query; memory holds the backbone twice)")
    else:
        selection = _timm_name(s.surrogate, "selection.surrogate", issues)
        if s.checkpoint:
            issues.approx.append(f"selection.checkpoint {s.checkpoint!r}: the reference has no checkpoint flag "
                                 "for the surrogate; it loads hub weights")
        if not s.pretrained:
            issues.approx.append("selection.pretrained is false: the reference always loads a pretrained surrogate")
    return ["--model", model, "--selection_model", selection,
            "--input-size", num_token(b.img_size or b.arch.img_size),
            "--pretrained", bool_token(b.pretrained)]


def _training(cfg: RepConfig, issues: _Issues) -> list[str]:
    t = cfg.training
    lr = t.lr
    if not t.lr_scale_by_batch:
        # the reference always runs lr * batch / 256: pre-divide so the effective lr is t.lr
        lr = t.lr * 256 / t.batch_size
        issues.notes.append(f"training.lr_scale_by_batch is false: the reference always scales lr by batch/256, "
                            f"so --lr {num_token(lr)} gives the effective lr {t.lr!r}")
    argv = ["--batch-size", num_token(t.batch_size), "--epochs", num_token(t.epochs), "--lr", num_token(lr),
            "--opt", t.optimizer,
            # clip_grad null: clip_grad_norm_(max_norm=inf) scales by min(inf/norm, 1) = 1, i.e. no clipping
            "--clip-grad", num_token(t.clip_grad if t.clip_grad is not None else float("inf")),
            "--seed", num_token(t.seed)]
    if t.iters_per_task is not None:
        argv += ["--budget_per_task", num_token(t.iters_per_task)]
    else:
        issues.notes.append("training.iters_per_task is null: --budget_per_task omitted (the reference's default applies)")
    return argv


def _continual(cfg: RepConfig, scenario: Scenario | None, issues: _Issues) -> list[str]:
    argv = ["--train_mask", bool_token(cfg.training.train_mask), "--task_inc", bool_token(False)]
    if scenario is None:
        return argv
    argv += ["--num_tasks", num_token(scenario.n_tasks)]
    if scenario.dataset in DATASETS:
        argv += ["--dataset", DATASETS[scenario.dataset][0]]
    else:
        issues.approx.append(f"scenario dataset {scenario.dataset!r} is not one of the reference's datasets "
                             f"({', '.join(DATASETS)}): --dataset would be omitted")
    if scenario.data_path:
        argv += ["--data-path", scenario.data_path]
    return argv


def _prompts(cfg: RepConfig) -> list[str]:
    p = cfg.prompt
    argv = ["--size", num_token(p.pool_size), "--length", num_token(p.length), "--top_k", num_token(p.top_k),
            "--batchwise_prompt", bool_token(getattr(p, "batchwise", False)), "--pull_constraint_coeff", num_token(p.pull_coeff),
            "--embedding_key", "cls", "--prompt_key_init", "uniform"]
    if p.method == "l2p":
        return argv + ["--head_type", "prompt"]
    argv += ["--head_type", "token", "--g_prompt_length", num_token(p.g_length)]
    # nargs='+' needs at least one index: an empty layer list switches that prompt off instead
    for kind, layers in (("g", p.g_layers), ("e", p.e_layers)):
        argv += [f"--use_{kind}_prompt", bool_token(bool(layers))]
        if layers:
            argv += [f"--{kind}_prompt_layer_idx", *[num_token(i) for i in layers]]
        argv += [f"--use_prefix_tune_for_{kind}_prompt", bool_token(True)]
    return argv


def _rep(cfg: RepConfig, issues: _Issues) -> list[str]:
    a, d = cfg.atom, cfg.ald
    if not a.protect_prompts:
        issues.hard.append("atom.protect_prompts is false (plain ToMe, prompts may merge): the reference runtime "
                           "always protects prompt tokens; use --format tome for plain ToMe")
    if a.enabled and a.prop_attn:
        issues.approx.append("atom.prop_attn is true: the reference runtime has no proportional-attention flag; "
                             "it would run without it")
    schedule = cfg.merge_schedule               # zeros when AToM is off -> --r 0
    fit = fit_ramp(schedule)
    if not fit.exact:
        issues.approx.append(
            f"atom.merge {schedule} is not a ToMe ramp parse_r((r, inflect)) for any integer r and inflect in "
            f"{list(INFLECTS)}, so --r/--scheduling_factor cannot express it; closest: {fit.describe()}, "
            f"per-layer difference (config - ramp) {fit.diff}, total merges {sum(schedule)} vs {sum(fit.ramp)}")
    if d.enabled:
        theta, gamma, tau, alpha = d.theta_min, d.gamma, d.tau, d.alpha
    else:
        # ALD off = keep every block. keep(t, l) = alpha(l) * ((1 - theta_min) exp(-gamma t) + theta_min):
        # theta_min = 1 makes the bracket exactly 1, but alpha(l) = alpha still applies to blocks past
        # tau merged tokens, so alpha = 1 as well gives keep probability 1 everywhere.
        theta, gamma, tau, alpha = 1.0, d.gamma, d.tau, 1.0
    return ["--r", num_token(fit.r), "--scheduling_factor", num_token(fit.inflect),
            "--theta", num_token(theta), "--gamma", num_token(gamma),
            "--tau", num_token(tau), "--alpha", num_token(alpha)]


def dataset_config(cfg: RepConfig, scenario: Scenario | None) -> str:
    """The reference's first positional (its per-dataset config), e.g. ``cifar100_l2p``."""
    prefix = DATASETS.get(scenario.dataset if scenario else "cifar100", DATASETS["cifar100"])[1]
    return f"{prefix}_{cfg.prompt.method}"


def to_command(cfg: RepConfig, options: ExportOptions = ExportOptions()) -> ArgparseCommand:
    """The reference runtime's argv for ``cfg``; raises ExportError when it cannot be expressed."""
    issues = _Issues()
    argv = [options.dataset_config or dataset_config(cfg, options.scenario)]
    argv += _models(cfg, issues) + _training(cfg, issues) + _continual(cfg, options.scenario, issues)
    argv += _prompts(cfg) + _rep(cfg, issues)
    if issues.hard or (issues.approx and not options.allow_approx):
        hint = ("pass allow_approx=True (CLI: --allow-approx) to export the closest expressible config "
                "with these differences as warnings") if issues.approx and not issues.hard else ""
        raise ExportError("rep-argparse", issues.hard + issues.approx, hint)
    warnings = [f"approximation: {m}" for m in issues.approx] + issues.notes
    return ArgparseCommand(options.program, argv, warnings)


@register("rep-argparse")
def export_rep_argparse(cfg: RepConfig, options: ExportOptions) -> ExportResult:
    cmd = to_command(cfg, options)
    lines = [f"# REP reference runtime command for rep-tune config {cfg.name!r}"]
    lines += [f"# WARNING: {w}" for w in cmd.warnings]
    text = "\n".join(lines + [cmd.command]) + "\n"
    return ExportResult("rep-argparse", text, data={"program": cmd.program, "argv": cmd.argv}, warnings=cmd.warnings)
