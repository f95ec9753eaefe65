"""Read an ArchSpec off a timm model's modules, or the reason rep-tune cannot drive it.

One definition of "a ViT rep-tune can drive", used three ways: ``scripts/make_arch_table.py``
writes ``timm_archs.json`` from it, ``rep_tune.archs.arch_of`` falls back to it for names the
table lacks, and ``rep_tune.runtime.backbone.check_arch`` applies it to every loaded model.

rep-tune runs the blocks itself (``rep_tune.runtime.atom.block_forward``): pre-norm attention,
AToM merge, MLP, with LayerScale; the prefix tokens (CLS, distillation, registers) are never
merged, and it reads the CLS token. So it accepts a timm ``VisionTransformer`` whose tokens are a
plain square patch grid, with a class token, standard ``Block``/``Attention`` and a Mlp/GLU MLP,
and refuses what would break that contract, saying why. Imports torch and timm: never on the cost
model's path.
"""
from __future__ import annotations

from rep_tune.arch_spec import ArchSpec, UnsupportedArch

# Other timm ViT-like classes: why their blocks do not fit.
_CLASS_REASONS = {
    "VisionTransformerRelPos": "relative position bias in every block's attention (indexed by grid "
                               "position, which tokens merged by AToM no longer have)",
    "Beit": "relative position bias in every block's attention (indexed by grid position, which tokens "
            "merged by AToM no longer have)",
    "VisionTransformerSAM": "windowed attention with relative position bias (SAM image encoder) and no class token",
    "NaFlexVit": "NaFlex variable-resolution patch embedding: no fixed patch grid",
    "Eva": "EVA blocks (EvaAttention with separate q/k/v biases; its _pos_embed also returns rotary "
           "embeddings), not the timm VisionTransformer blocks rep-tune drives",
}
_BLOCK_REASONS = {
    "ResPostBlock": "post-norm residual blocks (ResPostBlock): rep-tune merges between a pre-norm "
                    "block's attention and MLP",
    "ParallelScalingBlock": "parallel attention/MLP branches (ParallelScalingBlock): no point between "
                            "attention and MLP to merge tokens",
    "DiffParallelScalingBlock": "parallel differential attention/MLP branches (DiffParallelScalingBlock)",
    "ParallelThingsBlock": "parallel attention/MLP branches (ParallelThingsBlock)",
}


def refuse(name: str, reason: str) -> UnsupportedArch:
    return UnsupportedArch(f"timm model {name!r} cannot be a rep-tune backbone: {reason}")


def reason_against(model) -> str | None:
    """Why rep-tune cannot drive ``model`` (a built timm model), or None when it can."""
    from torch import nn
    from timm.layers import Attention, GluMlp, LayerScale, Mlp, PatchEmbed, SwiGLU
    from timm.models.vision_transformer import Block, VisionTransformer

    cls = type(model).__name__
    if not isinstance(model, VisionTransformer):
        if cls == "Eva" and getattr(model, "rope", None) is not None:
            return ("rotary position embeddings (RoPE) inside every block's attention: tokens merged by "
                    "AToM have no grid position to rotate by")
        return _CLASS_REASONS.get(cls, f"{cls} is not a timm VisionTransformer")
    pe = model.patch_embed
    if not isinstance(pe, PatchEmbed):
        if type(pe).__name__.startswith("HybridEmbed"):
            return "hybrid CNN stem (HybridEmbed): tokens come from a CNN feature map, not a plain patch grid"
        return f"patch embedding {type(pe).__name__} is not timm's PatchEmbed (plain patch grid)"
    ph, pw = pe.patch_size
    if ph != pw:
        return f"non-square patches {ph}x{pw}"
    if pe.img_size is None or pe.img_size[0] != pe.img_size[1]:
        return f"non-square input {pe.img_size} (rep-tune uses a square patch grid)"
    if tuple(pe.proj.kernel_size) != (ph, pw) or tuple(pe.proj.stride) != (ph, pw):
        return f"overlapping patch embedding (kernel {tuple(pe.proj.kernel_size)}, stride {tuple(pe.proj.stride)})"
    if not model.has_class_token:
        return (f"no class token (global_pool={model.global_pool!r}): rep-tune's selection query and "
                f"DualPrompt head read the CLS token")
    if model.attn_pool is not None:
        return f"attention-pool head (global_pool={model.global_pool!r}) instead of the CLS token"
    if not isinstance(model.fc_norm, nn.Identity):
        return (f"its final norm applies after average pooling (fc_norm, global_pool={model.global_pool!r}); "
                f"rep-tune reads the CLS token after backbone.norm")
    if not isinstance(model.patch_drop, nn.Identity):
        return "patch dropout is on (patch_drop_rate > 0)"
    first = model.blocks[0]
    for blk in model.blocks:
        bcls = type(blk).__name__
        if type(blk) is not Block:
            return _BLOCK_REASONS.get(bcls, f"block type {bcls} is not timm's pre-norm Block")
        if type(blk.attn) is not Attention:
            name = type(blk.attn).__name__
            return ("differential attention (DiffAttention)" if name == "DiffAttention"
                    else f"attention type {name} is not timm's Attention")
        if blk.attn.attn_dim != model.embed_dim:
            return f"attention width {blk.attn.attn_dim} differs from the embedding width {model.embed_dim}"
        if not isinstance(blk.mlp, (Mlp, GluMlp, SwiGLU)):
            return f"MLP type {type(blk.mlp).__name__} (expected timm Mlp, GluMlp or SwiGLU)"
        for ls in (blk.ls1, blk.ls2):
            if not isinstance(ls, (nn.Identity, LayerScale)):
                return f"layer scale type {type(ls).__name__}"
        if (blk.attn.num_heads, _mlp_shape(blk.mlp), type(blk.ls1)) != (
                first.attn.num_heads, _mlp_shape(first.mlp), type(first.ls1)):
            return "blocks differ in heads, MLP width or layer scale"
    return None


def _mlp_shape(mlp) -> tuple[str, int]:
    """(kind, hidden width entering fc2) of a timm Mlp / GluMlp / SwiGLU."""
    from timm.layers import Mlp
    return ("mlp" if isinstance(mlp, Mlp) else "glu"), int(mlp.fc2.in_features)


def spec_from_model(model, name: str) -> ArchSpec:
    """The ArchSpec of a built timm model (any device, 'meta' included); UnsupportedArch with the
    reason when rep-tune cannot drive it. ``name`` is the architecture name (no tag)."""
    from timm.layers import LayerScale
    reason = reason_against(model)
    if reason is not None:
        raise refuse(name, reason)
    blk, pe = model.blocks[0], model.patch_embed
    kind, hidden = _mlp_shape(blk.mlp)
    D = int(model.embed_dim)
    pos = model.pos_embed
    num_prefix = int(model.num_prefix_tokens)
    dist = hasattr(model, "dist_token") and model.dist_token is not None
    reg = int(getattr(model, "num_reg_tokens", 0) or 0)
    if num_prefix != 1 + int(dist) + reg:
        raise refuse(name, f"{num_prefix} prefix tokens, expected CLS + {int(dist)} distillation + {reg} registers")
    total = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    pos_prefix = int(pos.shape[1]) - int(pe.num_patches) if pos is not None else 0
    return ArchSpec(
        name=name, embed_dim=D, depth=len(model.blocks), num_heads=int(blk.attn.num_heads),
        patch_size=int(pe.patch_size[0]), img_size=int(pe.img_size[0]), mlp_ratio=hidden / D,
        in_chans=int(pe.proj.in_channels), class_token=True, reg_tokens=reg, dist_token=dist,
        mlp_hidden=hidden, mlp_kind=kind, layer_scale=isinstance(blk.ls1, LayerScale),
        pos_embed=pos is not None, pos_embed_prefix=pos_prefix,
        base_params=int(total - (pos.numel() if pos is not None else 0)))


def build_meta(name: str, **kwargs):
    """timm model ``name`` (tag or not) built on the 'meta' device: shapes only, no memory, no weights."""
    import torch
    import timm
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


_REFUSED: dict[str, UnsupportedArch] = {}


def probe(name: str) -> ArchSpec:
    """ArchSpec of timm architecture ``name`` (no tag), built on 'meta'; refusals are remembered."""
    import timm
    if name in _REFUSED:
        raise _REFUSED[name]
    if not timm.is_model(name):
        err = UnsupportedArch(f"unknown ViT architecture {name!r}: timm {timm.__version__} has no such model "
                              f"(a timm ViT name like vit_tiny_patch16_224)")
    else:
        try:
            return spec_from_model(build_meta(name), name)
        except UnsupportedArch as e:
            err = e
    _REFUSED[name] = err
    raise err
