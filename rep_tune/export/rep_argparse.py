"""The REP reference runtime's command line (argparse flags only; see REP_METHOD.md, last section).

Target: the public copy of the REP code (``run_rep.py``; flags declared in
``configs/cifar100_rep.py``, ``configs/imr_rep.py`` and, for DualPrompt, ``configs/*_rep_dual.py``).
What it declares, and so what is emitted:

- entry point ``run_rep.py``; first positional the dataset config: ``cifar100_rep`` / ``imr_rep``
  (L2P), ``cifar100_rep_dual`` / ``imr_rep_dual`` (DualPrompt). The copy's ``run_rep.py``
  dispatches only the two L2P names, so it cannot run DualPrompt: a DualPrompt config is refused
  (saying why), unless ``dataset_config`` (CLI ``--dataset-config``) names the config of a copy
  patched to dispatch it; then the flags are the copy's own ``configs/*_rep_dual.py`` ones;
- update models registered as ``<timm name>_adaptive_layer_drop`` (L2P) and
  ``<timm name>_adaptive_layer_drop_dual`` (DualPrompt); ``--selection_model`` a plain timm name;
- ``--r int``, ``--scheduling_factor int``, ``--theta/--gamma/--alpha float``, ``--tau int``,
  ``--budget_per_task int``, ``--epochs int``, ``--train_mask`` and the other booleans ``type=bool``.

Quirks respected here:
- ``type=bool`` flags: ``bool("False")`` is True, only an empty string parses as False. So False
  is emitted as an empty argv token (``--flag ''`` once shell-quoted), True as ``--flag True``.
- layer-index flags (``nargs='+'``, ``type=int``) take one argv token per index; an empty list
  cannot be written, so an empty G/E layer list switches that prompt off (``--use_g_prompt ''``).
- the merge schedule is only ``--r`` / ``--scheduling_factor`` (ToMe's ``parse_r((r, inflect))``
  with an *integer* inflection: 1, 0 or -1): a per-layer schedule that is no such ramp, or a ramp
  whose inflection is not an integer, is refused naming the closest integer ramp (or, with
  ``allow_approx``, replaced by it and reported in the warnings; never rounded silently). The
  ramp is found by ``rep_tune.schedule.fit_ramp``, the inversion the search space uses too.

What the reference can express is declared once, in :data:`CAPS` (``rep_tune.export.Capabilities``):
the refusals below read it, and ``rep-tune search --export-target rep-argparse`` restricts its
space with it (an integer ramp, fp32, ALD's own rule, no proportional attention, protected prompts,
L2P only), so the search's best exports with no ``allow_approx``.

What the public copy does whatever the flags say (REP_METHOD.md, "What the public reference copy
actually does"): it never reads ``--r``/``--scheduling_factor`` (no token merging), ignores
``--tau``/``--alpha``, and drops 3 blocks every iteration (constant shallow/deep drop counts), even
for an "ALD off" command. Every export says so, one warning each (:data:`IGNORED_FLAGS`,
:data:`FORCED`), in its warnings and as ``# WARNING:`` lines of the command file.

Decisions (what cannot be said in the reference's flags):
- prompt methods the reference has no entry point for (``PromptMethod.reference_name is None``,
  e.g. CODA-Prompt) are refused, even with ``allow_approx``: no flag set describes them.
- ``selection.surrogate: null`` (query from the update backbone itself): the reference has no
  "no surrogate" mode; it is exported as ``--selection_model`` = the backbone's timm name: a frozen
  copy of the same pretrained backbone computes the query, as in base L2P/DualPrompt. Same query,
  but the reference holds the backbone twice; reported as a warning, not an error.
- ``atom.protect_prompts: false`` (plain ToMe): the reference always protects prompts; refused
  even with ``allow_approx`` (it is another method: 70.2 vs 75.3 in REP's ablation). Use
  ``--format tome`` for plain ToMe.
- ``atom.prop_attn: true``, ``ald.schedule: pld``, ``training.precision`` other than fp32: the
  reference has no flag for them; refused unless ``allow_approx`` (then left out, with a warning).
- local checkpoints, non-pretrained surrogates, backbones the reference cannot build (rep-tune's
  embedded ViTs), weight tags (timm 0.6.13 has none) and scenario datasets the reference lacks:
  refused unless ``allow_approx``. A timm ViT the public copy does not register under the suffixed
  name is a warning (one ``@register_model`` function in its vision_transformer.py).
- the reference always scales ``--lr`` by batch/256; ``lr_scale_by_batch: false`` is exported
  as ``--lr = lr * 256 / batch`` (a warning says so).
- ``clip_grad: null`` is ``--clip-grad inf`` (clip factor min(inf/norm, 1) = 1: no clipping).
- ``--epochs`` and ``--budget_per_task`` are the config's ``training.epochs`` and
  ``training.iters_per_task``: a search's ``best_<device>.yaml`` carries the deployment's training
  settings (the search's reduced fidelity is recorded under its provenance), so exporting it gives
  the deployment's.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Callable

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.export import Capabilities, ExportError, ExportOptions, ExportResult, register
from rep_tune.methods import PromptSection, get_method, method_names
from rep_tune.schedule import INFLECTS, INTEGER_INFLECTS, fit_ramp

PROGRAM = "run_rep.py"
# timm ViT sizes the reference runtime (timm 0.6.13) can build; pico/micro are rep-tune's own.
TIMM_SIZES = ("tiny", "small", "base", "large", "huge")
# rep-tune scenario dataset -> (reference --dataset, dataset-config prefix)
DATASETS = {"cifar100": ("Split-CIFAR100", "cifar100"), "imagenet-r": ("Split-Imagenet-R", "imr")}
EPOCHS_NOTE = ("--epochs/--budget_per_task are this config's training.epochs/iters_per_task: a search's "
               "best_<device>.yaml holds the deployment's (its search fidelity is under provenance)")


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


# ---- the reference's prompt methods --------------------------------------------------------
def _l2p_flags(p: PromptSection) -> list[str]:
    return ["--size", num_token(p.pool_size), "--length", num_token(p.length), "--top_k", num_token(p.top_k),
            "--batchwise_prompt", bool_token(p.batchwise), "--pull_constraint_coeff", num_token(p.pull_coeff),
            "--embedding_key", "cls", "--prompt_key_init", "uniform", "--use_prompt_mask", bool_token(False),
            "--shared_prompt_pool", bool_token(False), "--head_type", "prompt"]


def _dualprompt_flags(p: PromptSection) -> list[str]:
    argv = ["--size", num_token(p.pool_size), "--length", num_token(p.length), "--top_k", num_token(p.top_k),
            "--batchwise_prompt", bool_token(False), "--pull_constraint_coeff", num_token(p.pull_coeff),
            "--embedding_key", "cls", "--prompt_key_init", "uniform",
            # training uses task t's E-prompt (task-id mask); carry-over = the reference's shared pool
            "--use_prompt_mask", bool_token(True), "--shared_prompt_pool", bool_token(p.carry_over),
            "--shared_prompt_key", bool_token(False), "--head_type", "token",
            "--g_prompt_length", num_token(p.g_length)]
    # nargs='+' needs at least one index: an empty layer list switches that prompt off instead
    for kind, layers in (("g", p.g_layers), ("e", p.e_layers)):
        argv += [f"--use_{kind}_prompt", bool_token(bool(layers))]
        if layers:
            argv += [f"--{kind}_prompt_layer_idx", *[num_token(i) for i in layers]]
        argv += [f"--use_prefix_tune_for_{kind}_prompt", bool_token(True)]
    return argv


@dataclass(frozen=True)
class ReferenceMethod:
    """How the reference names one prompt method (keyed by ``PromptMethod.reference_name``)."""

    config_suffix: str                 # dataset config = <dataset prefix>_rep<config_suffix>
    model_suffix: str                  # update model = <timm name><model_suffix>
    registered: tuple[str, ...]        # timm names the public copy registers with model_suffix
    flags: Callable[[PromptSection], list[str]]
    dispatched: bool                   # run_rep.py dispatches its dataset configs


REFERENCE: dict[str, ReferenceMethod] = {
    "l2p": ReferenceMethod("", "_adaptive_layer_drop", ("vit_large_patch16_224",), _l2p_flags, True),
    "dualprompt": ReferenceMethod("_dual", "_adaptive_layer_drop_dual",
                                  ("vit_base_patch16_224", "vit_large_patch16_224"), _dualprompt_flags, False),
}


def _ref_of(method: str) -> ReferenceMethod | None:
    name = get_method(method).reference_name
    return REFERENCE.get(name) if name else None


def reference_method(cfg: RepConfig) -> ReferenceMethod | None:
    return _ref_of(cfg.prompt.method)


def _why_not_runnable(method: str) -> str:
    """Why the public reference copy cannot run ``method`` (REP_METHOD.md)."""
    m, ref = get_method(method), _ref_of(method)
    if ref is None:
        flagged = " and ".join(get_method(n).title for n in method_names() if _ref_of(n) is not None)
        return (f"the REP reference runtime cannot run {m.title}: it has no {m.title} entry point, and its argparse "
                f"configs declare prompt flags for {flagged} only (nothing describes {m.title}'s prompts)")
    dispatched = "/".join(f"{p}_rep{r.config_suffix}" for r in REFERENCE.values() if r.dispatched
                          for _, p in DATASETS.values())
    return (f"the public REP reference copy cannot run {m.title}: its {PROGRAM} dispatches only the dataset configs "
            f"{dispatched}, so a {m.title} command (configs/*_rep{ref.config_suffix}.py, models "
            f"*{ref.model_suffix}) does not run in it without adding that dispatch")


# flags the public reference copy declares but does not act on, and what it does whatever the flags say
# (REP_METHOD.md, "What the public reference copy actually does"); every export repeats them
IGNORED_FLAGS: dict[str, str] = {
    "--r": "declared but never read (the copy has no token merging): the merge schedule has no effect there",
    "--scheduling_factor": "declared but never read (the copy has no token merging): the ramp's shape has no "
                           "effect there",
    "--tau": "has no effect there (no token term in its layer dropping)",
    "--alpha": "has no effect there (no token term in its layer dropping)",
}
FORCED: tuple[str, ...] = (
    "the public reference copy drops 3 blocks every iteration whatever the flags say (its shallow/deep drop "
    "counts are constants), even for the baseline: an ALD-off command (--theta 1.0 --alpha 1.0) still drops "
    "blocks there, so its time, memory and accuracy are not this config's",
)
IGNORED_PREFIX = "the public reference copy ignores "

# What the reference runtime can express: its refusals below and the search's --export-target restriction read this.
CAPS = Capabilities(
    methods=tuple(n for n in method_names() if _ref_of(n) is not None and _ref_of(n).dispatched),
    refused_methods={n: _why_not_runnable(n) for n in method_names()
                     if not (_ref_of(n) is not None and _ref_of(n).dispatched)},
    merge_forms=("ramp",),             # only --r/--scheduling_factor
    inflects=INTEGER_INFLECTS,         # --scheduling_factor is type=int
    precisions=("fp32",),              # no mixed-precision flag
    ald_schedules=("ald",),            # no flag choosing the layer-dropping rule
    prop_attn=(False,),                # no proportional-attention flag
    protect_prompts=(True,),           # prompt tokens never merge there
    runtime_warnings=tuple(f"{IGNORED_PREFIX}{flag}: {why}" for flag, why in IGNORED_FLAGS.items()) + FORCED,
)


# ---- flag groups -----------------------------------------------------------------------------
def is_reference_timm(name: str) -> bool:
    """Whether the reference's timm (0.6.13) knows the ViT ``name`` (without a weights tag)."""
    m = re.match(r"^vit_([a-z]+)_", name.partition(".")[0])
    return bool(m) and m.group(1) in TIMM_SIZES


def _timm_name(name: str, field_name: str, issues: _Issues) -> str:
    """The name the reference's timm can create; tags and non-timm sizes are reported."""
    base, _, tag = name.partition(".")
    if not is_reference_timm(base):
        issues.approx.append(f"{field_name} {name!r} is not a timm model the reference runtime can create "
                             f"(timm sizes: {', '.join(TIMM_SIZES)}); it would be passed as {base!r}, which the reference must register")
    elif tag:
        issues.approx.append(f"{field_name} {name!r}: the weights tag '.{tag}' cannot be passed (timm 0.6.13 has "
                             f"no tags); it would be passed as {base!r}, with the reference's default pretrained weights")
    return base


def _models(cfg: RepConfig, ref: ReferenceMethod, issues: _Issues) -> list[str]:
    b, s = cfg.backbone, cfg.selection
    timm_name = _timm_name(b.name, "backbone.name", issues)
    model = timm_name + ref.model_suffix
    if timm_name not in ref.registered and is_reference_timm(timm_name):
        issues.notes.append(f"--model {model}: the public reference copy registers only "
                            f"{', '.join(n + ref.model_suffix for n in ref.registered)} (vision_transformer.py); "
                            f"register {model} the same way (one @register_model function)")
    if b.checkpoint:
        issues.approx.append(f"backbone.checkpoint {b.checkpoint!r}: the reference has no checkpoint flag; "
                             "--pretrained loads hub weights instead")
    if s.surrogate is None:
        selection = timm_name
        issues.notes.append(f"selection.surrogate is null (query from the update backbone), but the reference runtime "
                            f"has no 'no surrogate' mode: exported as --selection_model {timm_name} (a frozen copy of the "
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
    if t.precision not in CAPS.precisions:
        issues.approx.append(f"training.precision is {t.precision!r}: the reference has no mixed-precision flag; "
                             "it would train in fp32")
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


def closest_integer_ramp(schedule: list[int]) -> str:
    """Why ``schedule`` is no ``--r/--scheduling_factor`` pair, and the closest pair (for messages)."""
    fit = fit_ramp(schedule, CAPS.inflects)
    exact = fit_ramp(schedule, INFLECTS)
    what = (f"is ToMe's ramp r={exact.r}, inflect={exact.inflect:g}, whose inflection is not an integer "
            "(the reference declares --scheduling_factor type=int)" if exact.exact else
            f"is not a ToMe ramp parse_r((r, inflect)) for any integer r and inflect in {list(CAPS.inflects)}")
    return (f"atom.merge {schedule} {what}; closest integer ramp: --r {fit.r} --scheduling_factor {int(fit.inflect)} "
            f"({fit.describe()}), per-layer difference (config - ramp) {list(fit.diff)}, "
            f"total merges {sum(schedule)} vs {sum(fit.ramp)}")


def _rep(cfg: RepConfig, issues: _Issues) -> list[str]:
    a, d = cfg.atom, cfg.ald
    # prefix prompts (DualPrompt) are not tokens: no merging rule applies to them
    if cfg.layout().n_prompt and a.protect_prompts not in CAPS.protect_prompts:
        issues.hard.append("atom.protect_prompts is false (plain ToMe, prompts may merge): the reference runtime "
                           "always protects prompt tokens; use --format tome for plain ToMe")
    if a.enabled and a.prop_attn not in CAPS.prop_attn:
        issues.approx.append("atom.prop_attn is true: the reference runtime has no proportional-attention flag; "
                             "it would run without it")
    schedule = cfg.merge_schedule               # zeros when AToM is off -> --r 0
    fit = fit_ramp(schedule, CAPS.inflects)     # CAPS.merge_forms: a ramp only, so anything else is approximate
    if not fit.exact:
        issues.approx.append(closest_integer_ramp(schedule))
    if d.enabled:
        theta, gamma, tau, alpha = d.theta_min, d.gamma, d.tau, d.alpha
        if d.schedule not in CAPS.ald_schedules:
            issues.approx.append(f"ald.schedule is {d.schedule!r}: the reference has no flag choosing the layer-"
                                 "dropping rule; it would run its own with these --theta/--gamma/--tau/--alpha")
    else:
        # ALD off = keep every block. keep(t, l) = alpha(l) * ((1 - theta_min) exp(-gamma t) + theta_min):
        # theta_min = 1 makes the bracket exactly 1, but alpha(l) = alpha still applies to blocks past
        # tau merged tokens, so alpha = 1 as well gives keep probability 1 everywhere.
        theta, gamma, tau, alpha = 1.0, d.gamma, d.tau, 1.0
    return ["--r", num_token(fit.r), "--scheduling_factor", num_token(int(fit.inflect)),
            "--theta", num_token(float(theta)), "--gamma", num_token(float(gamma)),
            "--tau", num_token(int(tau)), "--alpha", num_token(float(alpha))]


def dataset_config(cfg: RepConfig, scenario: Scenario | None) -> str:
    """The reference's first positional (its dataset config), e.g. ``cifar100_rep`` or ``imr_rep_dual``."""
    prefix = DATASETS.get(scenario.dataset if scenario else "cifar100", DATASETS["cifar100"])[1]
    ref = reference_method(cfg)
    return f"{prefix}_rep{ref.config_suffix if ref else ''}"


def to_command(cfg: RepConfig, options: ExportOptions = ExportOptions()) -> ArgparseCommand:
    """The reference runtime's argv for ``cfg``; raises ExportError when it cannot be expressed."""
    issues = _Issues()
    ref = reference_method(cfg)
    m = get_method(cfg.prompt.method)
    why = CAPS.why_not(cfg.prompt.method)
    config_name = options.dataset_config or dataset_config(cfg, options.scenario)
    if why and (ref is None or not options.dataset_config):
        runnable = "/".join(CAPS.methods or ())
        hint = (f"export it with --format yaml (rep-tune's own runtime trains it), or search with "
                f"--export-target rep-argparse (a {runnable} space) for a config the reference runs")
        if ref is not None:
            hint = (f"for a copy of the reference patched to dispatch {config_name} (configs/{config_name}.py), pass "
                    f"--dataset-config {config_name} (ExportOptions.dataset_config); otherwise " + hint)
        raise ExportError("rep-argparse", [f"prompt.method {cfg.prompt.method!r} ({m.title}): {why}"], hint)
    if why:
        issues.notes.append(f"{config_name}: exported for a reference copy patched to dispatch it; {why}")
    argv = [config_name]
    argv += _models(cfg, ref, issues) + _training(cfg, issues) + _continual(cfg, options.scenario, issues)
    argv += ref.flags(cfg.prompt) + _rep(cfg, issues)
    if issues.hard or (issues.approx and not options.allow_approx):
        hint = ("pass allow_approx=True (CLI: --allow-approx) to export the closest expressible config "
                "with these differences as warnings") if issues.approx and not issues.hard else ""
        raise ExportError("rep-argparse", issues.hard + issues.approx, hint)
    warnings = [f"approximation: {m}" for m in issues.approx] + issues.notes + list(CAPS.runtime_warnings)
    return ArgparseCommand(options.program, argv, warnings)


@register("rep-argparse", CAPS)
def export_rep_argparse(cfg: RepConfig, options: ExportOptions) -> ExportResult:
    cmd = to_command(cfg, options)
    lines = [f"# REP reference runtime command for rep-tune config {cfg.name!r}", f"# {EPOCHS_NOTE}"]
    lines += [f"# WARNING: {w}" for w in cmd.warnings]
    text = "\n".join(lines + [cmd.command]) + "\n"
    return ExportResult("rep-argparse", text, data={"program": cmd.program, "argv": cmd.argv}, warnings=cmd.warnings)
