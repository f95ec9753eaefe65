"""Backbones: timm ViTs by name, local checkpoints, and the embedded offline ViTs.

The embedded backbones are ordinary timm ``VisionTransformer`` models registered under
timm-style names, so ``timm.create_model("vit_micro_patch4_32.fmnist", pretrained=True)``
loads the committed Fashion-MNIST weights without a network. They have 12 blocks, like
ViT-Ti/B/L, so a per-layer AToM/ALD schedule means the same thing on them.
"""
from __future__ import annotations

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
    # update backbone with ViT/16@224's token layout: 12 blocks, 28 px, patch 2 -> 14x14 = 196 patches + CLS
    "vit_micro_patch2_28": dict(img_size=28, patch_size=2, embed_dim=96, depth=12, num_heads=3),
    # selection surrogate: 6 blocks, width 64, same 196-patch grid
    "vit_pico_patch2_28": dict(img_size=28, patch_size=2, embed_dim=64, depth=6, num_heads=2),
}


def _cfg(name: str) -> dict:
    return {
        "file": str(WEIGHTS_DIR / f"{name}.fmnist.safetensors"),
        "num_classes": 10,
        "input_size": (3, EMBEDDED[name]["img_size"], EMBEDDED[name]["img_size"]),
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


@register_model
def vit_micro_patch2_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Embedded update backbone with ViT/16@224's 196-patch layout, pre-trained on Fashion-MNIST."""
    return _create("vit_micro_patch2_28", pretrained, **kwargs)


@register_model
def vit_pico_patch2_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Embedded selection surrogate (6 blocks, width 64, 196 patches), pre-trained on Fashion-MNIST."""
    return _create("vit_pico_patch2_28", pretrained, **kwargs)


# ---- loading: once per process, frozen ----------------------------------------------------

_LOADED: dict[tuple, VisionTransformer] = {}


def embedded_weights(name: str) -> Path | None:
    """Committed weights file of an embedded backbone name (``vit_micro_patch4_32.fmnist``), else None."""
    base = name.split(".")[0]
    return WEIGHTS_DIR / f"{base}.fmnist.safetensors" if base in EMBEDDED else None


def load_backbone(name: str, *, pretrained: bool, checkpoint: str | Path | None = None,
                  img_size: int | None = None) -> VisionTransformer:
    """The frozen (eval, no grad) timm ViT ``name``, built once per process and shared.

    Weights: ``checkpoint`` (a local .safetensors/.pth/.pt state dict) wins; else ``pretrained``
    (hub weights, or the committed file for the embedded models); else a seeded random init.
    Every caller with the same arguments gets the same module: it is frozen, so sharing it
    costs nothing and saves loading (and memory) per trial.
    """
    ckpt = Path(checkpoint).expanduser().resolve() if checkpoint else None
    if ckpt is not None and not ckpt.is_file():
        raise FileNotFoundError(f"backbone checkpoint for {name!r} not found: {ckpt}")
    stamp = (ckpt.stat().st_mtime_ns, ckpt.stat().st_size) if ckpt else None
    key = (name, bool(pretrained) if ckpt is None else None, str(ckpt) if ckpt else None, stamp, img_size)
    model = _LOADED.get(key)
    if model is None:
        model = _build(name, pretrained=pretrained, checkpoint=ckpt, img_size=img_size)
        model.requires_grad_(False)
        model.eval()
        _LOADED[key] = model
    return model


def clear_backbone_cache() -> None:
    """Forget the loaded backbones (tests; freeing memory between unrelated studies)."""
    _LOADED.clear()


def _build(name: str, *, pretrained: bool, checkpoint: Path | None, img_size: int | None) -> VisionTransformer:
    kwargs = dict(num_classes=0)
    if img_size is not None:
        kwargs["img_size"] = img_size
    local = checkpoint
    if local is None and pretrained:
        local = embedded_weights(name)
        if local is not None and not local.is_file():
            raise FileNotFoundError(f"embedded weights of {name!r} are not available yet: {local} "
                                    f"(use pretrained=False, or give a checkpoint)")
    if local is None and pretrained:
        model = timm.create_model(name, pretrained=True, **kwargs)   # hub weights (needs network)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)                                        # random init is reproducible
            model = timm.create_model(name, pretrained=False, **kwargs)
        if local is not None:
            _load_local(model, local, name)
    check_arch(model, name, img_size)
    return model


def _load_local(model: VisionTransformer, path: Path, name: str) -> None:
    """Load a local state dict strictly (timm's reader and ViT filter); the classifier is dropped."""
    from timm.models import load_state_dict
    state = load_state_dict(str(path), use_ema=True)
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as e:  # a foreign layout the filter cannot adapt
        raise ValueError(f"checkpoint {path} does not fit {name!r}: {e}") from e
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not match the architecture of {name!r}: {e}") from e
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint {path} does not match {name!r}: missing keys {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected keys {result.unexpected_keys[:5]}")


def check_arch(model: VisionTransformer, name: str, img_size: int | None = None) -> None:
    """Raise ValueError unless ``model`` has the depth/width/heads/patch that ``arch_of(name)`` says.

    The cost model counts with ``arch_of``; a model that disagrees would be priced wrongly.
    """
    from rep_tune.archs import arch_of
    arch = arch_of(name)
    found = dict(depth=len(model.blocks), embed_dim=model.embed_dim, num_heads=model.blocks[0].attn.num_heads,
                 patch_size=model.patch_embed.patch_size[0], img_size=model.patch_embed.img_size[0])
    expected = dict(depth=arch.depth, embed_dim=arch.embed_dim, num_heads=arch.num_heads,
                    patch_size=arch.patch_size, img_size=img_size or arch.img_size)
    wrong = {k: (expected[k], found[k]) for k in expected if expected[k] != found[k]}
    if wrong:
        detail = ", ".join(f"{k}: expected {e}, found {f}" for k, (e, f) in wrong.items())
        raise ValueError(f"backbone {name!r} does not match rep_tune.archs.arch_of: {detail}")
