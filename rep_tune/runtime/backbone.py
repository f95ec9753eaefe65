"""Backbones: timm ViTs by name, local checkpoints, and the embedded offline ViTs.

The embedded backbones are ordinary timm ``VisionTransformer`` models registered under
timm-style names, so ``timm.create_model("vit_micro_patch4_32.fmnist", pretrained=True)``
loads the committed Fashion-MNIST weights without a network. They have 12 blocks, like
ViT-Ti/B/L, so a per-layer AToM/ALD schedule means the same thing on them.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import timm
import torch
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

EMBEDDED = {
    # update backbone: 12 blocks, width 96, 3 heads, 32 px input, patch 4 -> 64 patches + CLS
    "vit_micro_patch4_32": dict(img_size=32, patch_size=4, embed_dim=96, depth=12, num_heads=3),
    # selection surrogate: 6 blocks, width 64, 2 heads (about 4x cheaper than the backbone)
    "vit_pico_patch4_32": dict(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=2),
}


def _cfg(name: str) -> dict:
    return {
        "file": str(WEIGHTS_DIR / f"{name}.fmnist.safetensors"),
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        "tag": "fmnist",
    }


default_cfgs = generate_default_cfgs({f"{n}.fmnist": _cfg(n) for n in EMBEDDED})


def _create(name: str, pretrained: bool, **kwargs) -> VisionTransformer:
    args = dict(EMBEDDED[name], **kwargs)
    return build_model_with_cfg(
        VisionTransformer, name, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **args
    )


@register_model
def vit_micro_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Embedded update backbone (1.35M parameters), pre-trained on Fashion-MNIST."""
    return _create("vit_micro_patch4_32", pretrained, **kwargs)


@register_model
def vit_pico_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Embedded selection surrogate (0.3M parameters), pre-trained on Fashion-MNIST."""
    return _create("vit_pico_patch4_32", pretrained, **kwargs)
