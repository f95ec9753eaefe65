"""ToMe (facebookresearch/ToMe) settings for the config's backbone: a Python snippet or JSON.

What ToMe can express of a REP config, by where the method puts its prompts (its
``PromptGeometry``):
- prompts as tokens in the sequence (L2P): ToMe protects only the CLS (and distillation) token,
  so it merges the prompt tokens like patches. That is plain ToMe, NOT AToM, unless the config
  itself is plain ToMe (``atom.protect_prompts: false``).
- prompts as key/value prefixes inside attention (DualPrompt, CODA-Prompt): prefixes are not
  tokens, so ToMe merges exactly what AToM merges (the patches; CLS protected) and ``model.r`` is
  the config's schedule. But ``tome.patch.timm`` swaps timm's attention for ToMe's, which takes no
  prefixes: the snippet builds the backbone without the prompts (and their selection); a prompted
  model must add its prefixes inside ToMe's attention.
Neither the surrogate, ALD nor the training settings are part of ToMe.

What ToMe expresses is declared once, in :data:`CAPS`: any per-layer merge schedule and
proportional attention; no layer dropping; prompt tokens in the sequence merge like patches. The
warnings below read it, and ``rep-tune search --export-target tome`` restricts its space with it
(ALD off; for L2P ``atom.protect_prompts: false``), so the search's best is what ToMe runs.
"""
from __future__ import annotations

import json

from rep_tune.config import RepConfig
from rep_tune.export import Capabilities, ExportOptions, ExportResult, register
from rep_tune.export.rep_argparse import is_reference_timm
from rep_tune.methods import get_method

NOT_ATOM = ("ToMe does not protect prompt tokens (only CLS): with prompts in the sequence it merges them "
            "like patches, so this is NOT equivalent to REP's AToM (plain ToMe: 70.2 vs 75.3 accuracy in "
            "REP's ablation)")
PLAIN_TOME = ("atom.protect_prompts is false: the config itself is plain ToMe (prompt tokens merge like "
              "patches), as here")
PREFIXES = ("{title} prompts are key/value prefixes inside attention, not tokens: ToMe merges exactly the "
            "tokens AToM merges (patches; CLS protected), so model.r is the config's schedule; but ToMe's patched "
            "attention takes no prefixes: this builds the backbone without the prompts (add them inside ToMe's "
            "attention for a prompted model)")


# ToMe: every per-layer schedule (model.r is a list) and prop_attn; no layer dropping; only CLS is protected.
CAPS = Capabilities(ald_schedules=(), protect_prompts=(False,))


def tome_settings(cfg: RepConfig) -> tuple[dict, list[str]]:
    """``{"model", "pretrained", "img_size", "prop_attn", "r"}`` for ToMe, and the warnings that go with it."""
    layout = cfg.layout()
    method = get_method(cfg.prompt.method)
    warnings = []
    if layout.n_prompt:
        warnings.append(PLAIN_TOME if cfg.atom.protect_prompts in CAPS.protect_prompts else NOT_ATOM)
    if any(layout.prefix):
        warnings.append(PREFIXES.format(title=method.title))
    if not cfg.atom.enabled:
        warnings.append("atom.enabled is false: r is all zeros (no merging)")
    if cfg.ald.enabled and cfg.ald.schedule not in CAPS.ald_schedules:
        warnings.append("ALD (adaptive layer dropping) has no ToMe equivalent and is left out")
    if not is_reference_timm(cfg.backbone.name):
        warnings.append(f"{cfg.backbone.name!r} is rep-tune's embedded ViT, not a timm model: build it with "
                        "rep_tune.runtime.backbone instead of timm.create_model")
    if cfg.backbone.checkpoint:
        warnings.append(f"backbone.checkpoint {cfg.backbone.checkpoint!r}: load it into the model yourself")
    data = {"model": cfg.backbone.name, "pretrained": cfg.backbone.pretrained, "img_size": cfg.backbone.img_size,
            "prop_attn": cfg.atom.prop_attn, "r": list(cfg.merge_schedule)}
    return data, warnings


def snippet(data: dict, warnings: list[str], name: str) -> str:
    """Python that builds the timm model and applies ToMe with the per-layer merge counts."""
    lines = [f"# ToMe settings exported by rep-tune from config {name!r}"]
    lines += [f"# WARNING: {w}" for w in warnings]
    size = f", img_size={data['img_size']!r}" if data.get("img_size") else ""
    lines += ["import timm", "import tome", "",
              f"model = timm.create_model({data['model']!r}, pretrained={data['pretrained']!r}{size})",
              f"tome.patch.timm(model, prop_attn={data['prop_attn']!r})",
              f"model.r = {data['r']!r}  # merges per block (ToMe caps each at half the tokens)", ""]
    return "\n".join(lines)


@register("tome", CAPS)
def export_tome(cfg: RepConfig, options: ExportOptions) -> ExportResult:
    data, warnings = tome_settings(cfg)
    return ExportResult("tome", snippet(data, warnings, cfg.name), data=data, warnings=warnings)


@register("tome-json", CAPS)
def export_tome_json(cfg: RepConfig, options: ExportOptions) -> ExportResult:
    data, warnings = tome_settings(cfg)
    text = json.dumps({**data, "warnings": warnings}, indent=2) + "\n"
    return ExportResult("tome-json", text, data=data, warnings=warnings)
