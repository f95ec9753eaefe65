"""AToM: token counts, protected tokens, size-weighted merging, zero-merge identity, gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rep_tune.config import preset
from rep_tune.runtime.atom import TokenState, attention, block_forward, merge_tokens
from rep_tune.runtime.backbone import load_backbone
from rep_tune.runtime.model import RepModel
from rep_tune.schedule import tokens_per_block

MICRO = "vit_micro_patch2_28"     # the embedded default (28 px, 196 patches)
OFFLINE = {"backbone.pretrained": False, "selection.pretrained": False, "ald.enabled": False}




def _x(seed: int = 0, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method,protect,n_protected,mergeable", [
    ("l2p", True, 1 + 25, 196), ("l2p", False, 1, 196 + 25), ("dualprompt", True, 1, 196)])
def test_token_counts_follow_schedule(method, protect, n_protected, mergeable):
    cfg = preset("paper", method, **OFFLINE, **{"atom.protect_prompts": protect})
    model = RepModel(cfg, 10).eval()
    out = model(_x())
    expected = tokens_per_block(n_protected, mergeable, cfg.merge_schedule)
    assert out.tokens == expected
    assert expected[-1] < expected[0]           # later blocks really see fewer tokens


def test_large_merge_counts_are_capped_like_the_schedule():
    cfg = preset("paper", "l2p", **OFFLINE, **{"atom.merge": [40] * 12})
    out = RepModel(cfg, 10).eval()(_x())
    assert out.tokens == tokens_per_block(26, 196, [40] * 12)
    assert out.tokens[:5] == [222, 182, 142, 102, 64]      # block 4 merges 38 (< 40): the cap binds


def test_protected_tokens_bit_identical_after_merge():
    g = torch.Generator().manual_seed(1)
    x, metric = torch.randn(2, 30, 8, generator=g), torch.randn(2, 30, 4, generator=g)
    out, state = merge_tokens(x, metric, r=6, n_protected=6, state=TokenState())
    assert out.shape == (2, 24, 8)
    assert torch.equal(out[:, :6], x[:, :6])
    assert torch.equal(state.size.sum(dim=1), torch.full((2, 1), 24.0))   # sizes conserve tokens


def test_merged_token_is_size_weighted_mean_of_its_sources():
    # eligible tokens alternate A,B: a0 b0 a1 b1; a0 and b0 have identical keys, the rest are orthogonal
    e = torch.eye(4)
    metric = torch.stack([e[0], e[0], e[0], e[1], e[2]])[None]      # token 0 is protected (CLS)
    x = torch.arange(5 * 3, dtype=torch.float32).reshape(1, 5, 3)
    size = torch.tensor([[2.0], [3.0], [1.0], [1.0]])[None]
    out, state = merge_tokens(x, metric, r=1, n_protected=1, state=TokenState(size=size))
    a0, b0 = x[0, 1], x[0, 2]
    assert torch.equal(out[0, 0], x[0, 0])
    # output order: unmerged A (a1), then B (b0 merged with a0, b1)
    assert torch.allclose(out[0, 1], x[0, 3])
    assert torch.allclose(out[0, 2], (2 * a0 + 3 * b0) / 5)
    assert torch.allclose(out[0, 3], x[0, 4])
    assert state.size[0, :, 0].tolist() == [1.0, 5.0, 1.0]


@pytest.mark.parametrize("prop_attn", [False, True])
def test_zero_merges_equal_plain_timm(prop_attn):
    vit = load_backbone(MICRO, pretrained=False)
    x = _x(2)
    with torch.no_grad():
        ref = vit.forward_features(x)
        h = vit._pos_embed(vit.patch_embed(x))
        state = TokenState()
        for blk in vit.blocks:
            h, state = block_forward(blk, h, r=0, n_protected=1, state=state, prop_attn=prop_attn)
        h = vit.norm(h)
    assert torch.allclose(h, ref, atol=1e-6, rtol=0)


def test_proportional_attention_counts_a_merged_token_by_its_size():
    # [t0, t1, t1] attended plainly == [t0, t1] with t1 of size 2 and log-size bias
    blk = load_backbone(MICRO, pretrained=False).blocks[3]
    g = torch.Generator().manual_seed(3)
    t0, t1 = torch.randn(1, 1, 96, generator=g), torch.randn(1, 1, 96, generator=g)
    with torch.no_grad():
        dup, _ = attention(blk, torch.cat([t0, t1, t1], dim=1))
        merged, _ = attention(blk, torch.cat([t0, t1], dim=1), log_size=torch.tensor([[1.0, 2.0]]).log())
        plain, _ = attention(blk, torch.cat([t0, t1], dim=1))
    assert torch.allclose(dup[:, :2], merged, atol=1e-5)
    assert not torch.allclose(dup[:, 0], plain[:, 0], atol=1e-5)


@pytest.mark.parametrize("method,protect", [("l2p", True), ("l2p", False), ("dualprompt", True)])
def test_prompts_get_gradients_with_merging(method, protect):
    cfg = preset("paper", method, **OFFLINE, **{"atom.protect_prompts": protect})
    model = RepModel(cfg, 10).train()
    out = model(_x(4), task_id=0)
    assert out.tokens[-1] < out.tokens[0]
    (F.cross_entropy(out.logits, torch.tensor([1, 2])) + out.pull_loss).backward()
    grads = [p.grad for p in model.prompt.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.backbone.parameters())
