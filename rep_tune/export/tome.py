"""ToMe (facebookresearch/ToMe) settings for the config's backbone: a Python snippet or JSON.

ToMe protects only the CLS (and distillation) token: prompt tokens would be merged like patches.
So this is plain ToMe on the backbone, NOT AToM; prompts, the surrogate and ALD are not part of it.
"""
from __future__ import annotations

import json

from rep_tune.config import RepConfig
from rep_tune.export import ExportOptions, ExportResult, register
from rep_tune.export.rep_argparse import TIMM_SIZES

NOT_ATOM = ("ToMe does not protect prompt tokens (only CLS): with prompts in the sequence it merges them "
            "like patches, so this is NOT equivalent to REP's AToM (plain ToMe: 70.2 vs 75.3 accuracy in "
            "REP's ablation)")


def tome_settings(cfg: RepConfig) -> tuple[dict, list[str]]:
    """``{"model", "pretrained", "prop_attn", "r"}`` for ToMe, and the warnings that go with it."""
    warnings = [NOT_ATOM]
    if not cfg.atom.enabled:
        warnings.append("atom.enabled is false: r is all zeros (no merging)")
    if cfg.ald.enabled:
        warnings.append("ALD (adaptive layer dropping) has no ToMe equivalent and is left out")
    if cfg.prompt.method == "dualprompt":
        warnings.append("DualPrompt prompts are prefixes; ToMe's patch knows nothing of them")
    if cfg.backbone.name.split("_")[1:2] not in [[s] for s in TIMM_SIZES]:
        warnings.append(f"{cfg.backbone.name!r} is rep-tune's embedded ViT, not a timm model: build it with "
                        "rep_tune.runtime.backbone instead of timm.create_model")
    if cfg.backbone.checkpoint:
        warnings.append(f"backbone.checkpoint {cfg.backbone.checkpoint!r}: load it into the model yourself")
    data = {"model": cfg.backbone.name, "pretrained": cfg.backbone.pretrained,
            "prop_attn": cfg.atom.prop_attn, "r": list(cfg.merge_schedule)}
    return data, warnings


def snippet(data: dict, warnings: list[str], name: str) -> str:
    """Python that builds the timm model and applies ToMe with the per-layer merge counts."""
    lines = [f"# ToMe settings exported by rep-tune from config {name!r}"]
    lines += [f"# WARNING: {w}" for w in warnings]
    lines += ["import timm", "import tome", "",
              f"model = timm.create_model({data['model']!r}, pretrained={data['pretrained']!r})",
              f"tome.patch.timm(model, prop_attn={data['prop_attn']!r})",
              f"model.r = {data['r']!r}  # merges per block (ToMe caps each at half the tokens)", ""]
    return "\n".join(lines)


@register("tome")
def export_tome(cfg: RepConfig, options: ExportOptions) -> ExportResult:
    data, warnings = tome_settings(cfg)
    return ExportResult("tome", snippet(data, warnings, cfg.name), data=data, warnings=warnings)


@register("tome-json")
def export_tome_json(cfg: RepConfig, options: ExportOptions) -> ExportResult:
    data, warnings = tome_settings(cfg)
    text = json.dumps({**data, "warnings": warnings}, indent=2) + "\n"
    return ExportResult("tome-json", text, data=data, warnings=warnings)
