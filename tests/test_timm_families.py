"""timm ViT families as backbone and surrogate: the shape table against timm, refusals with reasons,
block_forward against timm's own blocks, and a real RepModel forward+backward plus the cost model
on each family with random weights at a tiny image size."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import timm
import torch
from timm.layers import SwiGLUPacked
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models.vision_transformer import VisionTransformer

from rep_tune.arch_probe import build_meta, reason_against, spec_from_model
from rep_tune.archs import ArchSpec, UnsupportedArch, _table, arch_of, table_names
from rep_tune.config import preset
from rep_tune.cost import predict
from rep_tune.device import Budgets, DeviceProfile, Spec
from rep_tune.runtime.atom import TokenState, block_forward
from rep_tune.runtime.backbone import EMBEDDED, check_arch, load_backbone
from rep_tune.runtime.model import RepModel

# name -> expected (prefix tokens, patch size, layer scale, mlp kind): one per accepted family
FAMILIES = {
    "vit_tiny_patch16_224": (1, 16, False, "mlp"),
    "deit_tiny_patch16_224": (1, 16, False, "mlp"),
    "deit_tiny_distilled_patch16_224": (2, 16, False, "mlp"),      # CLS + distillation token
    "deit3_small_patch16_224": (1, 16, True, "mlp"),               # LayerScale, no_embed_class
    "vit_small_patch14_dinov2": (1, 14, True, "mlp"),
    "vit_small_patch14_reg4_dinov2": (5, 14, True, "mlp"),         # CLS + 4 registers
    "vit_xsmall_patch16_clip_224": (1, 16, False, "mlp"),          # pre-norm (CLIP)
    "vit_giant_patch14_dinov2": (1, 14, True, "glu"),              # SwiGLU (too big to run here: shape only)
}
# name -> a word of the reason it is refused
REFUSED = {
    "eva02_tiny_patch14_224": "rotary",
    "eva02_base_patch14_448": "rotary",
    "eva_giant_patch14_224": "EVA blocks",
    "vit_base_patch16_siglip_224": "no class token",
    "vit_medium_patch16_reg4_gap_256": "no class token",
    "vit_base_r50_s16_224": "hybrid CNN stem",
    "beit_base_patch16_224": "relative position bias",
    "vit_relpos_base_patch16_224": "relative position bias",
    "samvit_base_patch16": "windowed attention",
    "vit_small_patch16_18x2_224": "parallel attention/MLP",
    "beit3_base_patch16_224": "fc_norm",
}


# ---- the generated table is timm's own configuration -------------------------------------------
@pytest.mark.parametrize("name", sorted(EMBEDDED) + list(FAMILIES) + list(REFUSED))
def test_table_matches_timm(name):
    row = _table()[name]
    model = build_meta(name)
    reason = reason_against(model)
    if "refused" in row:
        assert row["refused"] == reason
    else:
        assert reason is None and row == spec_from_model(model, name).to_dict()


def test_table_covers_every_embedded_model_and_every_family():
    names = set(table_names())
    assert set(EMBEDDED) <= names and set(FAMILIES) <= names and set(REFUSED) <= names


@pytest.mark.parametrize("name", list(FAMILIES))
def test_arch_of_families(name):
    prefix, patch, ls, kind = FAMILIES[name]
    a = arch_of(name + ".some_tag")          # the tag does not change the shape
    assert (a.num_prefix_tokens, a.patch_size, a.layer_scale, a.mlp_kind) == (prefix, patch, ls, kind)
    assert a.name == name and a.class_token
    assert a.num_tokens(2 * patch) == prefix + 4                  # a 2x2 grid


def test_arch_of_dinov2_values():
    a = arch_of("vit_small_patch14_reg4_dinov2.lvd142m")
    assert (a.embed_dim, a.depth, a.num_heads, a.img_size, a.reg_tokens, a.mlp_hidden) == (384, 12, 6, 518, 4, 1536)
    assert a.num_patches() == 37 * 37 and a.num_patches(56) == 16
    g = arch_of("vit_giant_patch14_dinov2")
    assert (g.mlp_kind, g.mlp_hidden, g.mlp_fc1_out, g.depth) == ("glu", 4096, 8192, 40)
    assert int(g.embed_dim * g.mlp_ratio) == g.mlp_hidden


def test_params_are_timms_count_at_any_image_size():
    for name, img in (("deit3_small_patch16_224", 32), ("vit_small_patch14_reg4_dinov2", 56),
                      ("deit_tiny_distilled_patch16_224", 64), ("vit_pico_patch4_32", 32)):
        m = build_meta(name, img_size=img)
        count = sum(p.numel() for p in m.parameters())
        assert dataclasses.replace(arch_of(name), img_size=img).params == count, name


def test_hand_written_spec_counts_a_plain_vit():
    table = arch_of("vit_micro_patch4_32")
    hand = ArchSpec("vit_micro_patch4_32", 96, 12, 3, 4, 32)
    assert hand.base_params == 0 and hand.params == table.params == 1347072 + 65 * 96


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_with_the_reason(name):
    with pytest.raises(UnsupportedArch, match=REFUSED[name]) as e:
        arch_of(name)
    assert name in str(e.value) and isinstance(e.value, KeyError) and isinstance(e.value, ValueError)


def test_refused_names_fail_at_config_validation():
    from rep_tune.schema import SchemaError
    with pytest.raises(SchemaError, match="backbone.name"):
        preset("baseline", "l2p", "vit_micro_patch4_32").replace(**{"backbone.name": "eva02_tiny_patch14_224"}).validate()


def test_arch_of_is_torch_free_and_memoised():
    code = ("import sys\nfrom rep_tune.archs import arch_of, table_names, UnsupportedArch\n"
            "n = 0\nfor name in table_names():\n"
            "    try:\n        arch_of(name); n += 1\n    except UnsupportedArch:\n        pass\n"
            "assert arch_of('vit_tiny_patch16_224.augreg_in21k') is arch_of('vit_tiny_patch16_224.augreg_in21k')\n"
            "assert n > 50, n\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ---- names off the table resolve through timm --------------------------------------------------
@register_model
def rep_test_swiglu_reg2_patch8_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Test-only ViT off the table: SwiGLU MLP, LayerScale, 2 registers, qk-norm."""
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, mlp_ratio=8 / 3, init_values=1e-2,
                reg_tokens=2, no_embed_class=True, qk_norm=True, mlp_layer=SwiGLUPacked, act_layer="silu")
    return build_model_with_cfg(VisionTransformer, "rep_test_swiglu_reg2_patch8_32", pretrained, **dict(args, **kwargs))


@register_model
def rep_test_gap_patch8_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Test-only ViT off the table without a class token."""
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, class_token=False, global_pool="avg")
    return build_model_with_cfg(VisionTransformer, "rep_test_gap_patch8_32", pretrained, **dict(args, **kwargs))


def test_names_off_the_table_resolve_through_timm():
    assert "rep_test_swiglu_reg2_patch8_32" not in _table()
    a = arch_of("rep_test_swiglu_reg2_patch8_32")
    assert (a.num_prefix_tokens, a.reg_tokens, a.mlp_kind, a.mlp_fc1_out, a.mlp_hidden, a.layer_scale, a.pos_embed_prefix) == \
        (3, 2, "glu", 170, 85, True, 0)
    with pytest.raises(UnsupportedArch, match="no class token"):
        arch_of("rep_test_gap_patch8_32")
    with pytest.raises(UnsupportedArch, match="unknown ViT architecture 'vit_nonexistent_patch16_224'"):
        arch_of("vit_nonexistent_patch16_224")


def test_check_arch_applies_the_contract_to_the_built_model():
    bad = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                            class_token=False, global_pool="avg")
    with pytest.raises(UnsupportedArch, match="no class token"):
        check_arch(bad, "vit_tiny_patch16_224", 32)
    with pytest.raises(UnsupportedArch, match="rotary"):
        load_backbone("eva02_tiny_patch14_224", pretrained=False)    # refused before building
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, reg_tokens=2)
    with pytest.raises(ValueError, match="reg_tokens: expected 0, found 2"):
        check_arch(other, "vit_tiny_patch16_224", 32)


# ---- the blocks rep-tune drives agree with timm's --------------------------------------------
@pytest.mark.parametrize("name,img", [("deit3_small_patch16_224", 32), ("vit_small_patch14_reg4_dinov2", 28),
                                      ("vit_xsmall_patch16_clip_224", 32), ("rep_test_swiglu_reg2_patch8_32", 32)])
def test_block_forward_is_timms_block_and_keeps_prefix_tokens(name, img):
    torch.manual_seed(0)
    vit = timm.create_model(name, pretrained=False, num_classes=0, img_size=img).eval()
    for blk in vit.blocks:          # non-trivial layer scale, so a skipped ls1/ls2 would show
        for ls in (blk.ls1, blk.ls2):
            if hasattr(ls, "gamma"):
                torch.nn.init.uniform_(ls.gamma, 0.5, 1.5)
    n = vit.num_prefix_tokens
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(torch.randn(2, 3, img, img))))
    x = torch.cat([x, torch.randn(2, 6, vit.embed_dim)], dim=1)    # more tokens to merge
    with torch.no_grad():
        for blk in vit.blocks:
            ref = blk(x)
            out, _ = block_forward(blk, x, r=0, n_protected=n, state=TokenState())
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            merged, state = block_forward(blk, x, r=2, n_protected=n, state=TokenState())
            assert merged.shape[1] == x.shape[1] - 2 and state.size.sum(dim=1).flatten().tolist() == \
                [x.shape[1] - n] * 2
            torch.testing.assert_close(merged[:, :n], ref[:, :n], rtol=1e-5, atol=1e-5)  # prefix untouched
            x = ref


# ---- a real RepModel forward+backward, and the cost model, per family -------------------------
RUN = [("vit_tiny_patch16_224", 64), ("deit_tiny_patch16_224", 32), ("deit_tiny_distilled_patch16_224", 64),
       ("deit3_small_patch16_224", 32), ("vit_small_patch14_dinov2", 28), ("vit_small_patch14_reg4_dinov2", 56),
       ("vit_xsmall_patch16_clip_224", 32), ("rep_test_swiglu_reg2_patch8_32", 32)]


def _profile() -> DeviceProfile:
    return DeviceProfile(name="unit-cpu", kind="cpu", dtype="fp32", budgets=Budgets(),
                         spec=Spec(peak_tflops={"fp32": 0.1}, memory_bandwidth_gbs=20.0, power_w=50.0))


@pytest.mark.parametrize("name,img", RUN)
def test_rep_model_forward_backward_and_cost(name, img):
    arch = arch_of(name)
    cfg = preset("paper", "l2p", name, **{
        "backbone.pretrained": False, "backbone.img_size": img, "selection.surrogate": "vit_pico_patch4_32",
        "selection.pretrained": False, "ald.enabled": False, "prompt.pool_size": 4, "prompt.length": 2,
        "prompt.top_k": 2, "atom.merge": [2] * arch.depth})
    model = RepModel(cfg, 5).train()
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(0))
    out = model(x)
    n_prefix, n_prompt, patches = arch.num_prefix_tokens, 4, arch.num_patches(img)
    assert model.n_prefix == n_prefix and model.n_protected == n_prefix + n_prompt
    assert out.tokens[0] == n_prefix + n_prompt + patches
    assert out.tokens[1] == out.tokens[0] - 2                       # AToM merged patches, not prefix/prompts
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 3])) + out.pull_loss
    loss.backward()
    grad = model.prompt.prompts.grad
    assert torch.isfinite(out.logits).all() and grad is not None and grad.abs().sum() > 0
    assert not any(p.grad is not None for p in model.backbone.parameters())

    cost = predict(cfg, _profile())
    assert cost.latency_ms.value > 0 and cost.peak_memory_mb.value > 0
    backbone = sum(p.numel() for p in model.backbone.parameters())
    surrogate = sum(p.numel() for p in model.surrogate.parameters())
    projection = model.projection.numel() if model.projection is not None else 0   # a resident buffer
    assert cost.extras["params"] - cost.extras["trainable_params"] == backbone + surrogate + projection


@pytest.mark.parametrize("name,img", [("vit_small_patch14_reg4_dinov2", 56), ("deit_tiny_distilled_patch16_224", 32)])
def test_cost_model_counts_every_prefix_token(name, img):
    arch = arch_of(name)
    cfg = preset("baseline", "l2p", name, **{"backbone.pretrained": False, "backbone.img_size": img})
    layout = cfg.layout()
    assert layout.n_prefix == arch.num_prefix_tokens > 1
    assert predict(cfg, _profile()).extras["tokens_first"] == arch.num_prefix_tokens + layout.n_prompt + \
        arch.num_patches(img)


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_family_models_as_surrogate(name):
    cfg = preset("paper", "l2p", "vit_micro_patch4_32", **{
        "backbone.pretrained": False, "selection.surrogate": name, "selection.pretrained": False,
        "ald.enabled": False})
    if name.endswith("dinov2"):     # the surrogate runs at its own input size (518 px): price it only
        assert predict(cfg, _profile()).extras["query_ms_first_epoch"] > 0
        return
    model = RepModel(cfg, 5).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    q = model.query(x)
    assert q.shape == (2, 96) and torch.isfinite(q).all()           # 192-wide CLS, projected to the backbone's 96
    assert predict(cfg, _profile()).extras["query_ms_first_epoch"] > 0


# ---- normalization comes from timm's pretrained_cfg ------------------------------------------
def test_backbone_normalization_from_pretrained_cfg():
    from timm.data import IMAGENET_DEFAULT_MEAN, OPENAI_CLIP_MEAN
    from rep_tune.runtime.backbone import backbone_normalization
    for name in EMBEDDED:
        assert backbone_normalization(name) == ((0.5,) * 3, (0.5,) * 3)
    assert backbone_normalization("vit_base_patch16_clip_224.openai")[0] == tuple(OPENAI_CLIP_MEAN)
    assert backbone_normalization("vit_small_patch14_reg4_dinov2")[0] == tuple(IMAGENET_DEFAULT_MEAN)
    assert backbone_normalization("vit_base_patch16_224.orig_in21k") == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="vit_base_patch16_224.bogus"):
        backbone_normalization("vit_base_patch16_224.bogus")
