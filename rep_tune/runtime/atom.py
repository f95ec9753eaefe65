"""AToM: adaptive token merging inside a timm ViT block, between attention and MLP.

Layout convention: the first ``n_protected`` tokens of the sequence (the backbone's prefix
tokens: CLS, a DeiT distillation token, register tokens; then the L2P prompt tokens when they
are protected) never merge; they are cut off before matching and put back
untouched, so they stay bit-identical. The rest merge by ToMe's bipartite soft matching on
the attention keys (averaged over heads), size-weighted, with sizes tracked per token.
Per-block counts are ``rep_tune.schedule.effective_merges``, the numbers the cost model uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from timm.models.vision_transformer import Block


@dataclass
class TokenState:
    """Per-token bookkeeping of the mergeable part of the sequence.

    size: (B, Ne, 1) how many input tokens each token stands for (None = all ones).
    mass: (B, Ne, 1) how many prompt tokens each stands for (None = not tracked); used to pool
          the prompt outputs when unprotected prompts may merge.
    """

    size: Tensor | None = None
    mass: Tensor | None = None


def attention(blk: Block, x: Tensor, *, log_size: Tensor | None = None,
              prefix: tuple[Tensor, Tensor] | None = None, eager: bool = False) -> tuple[Tensor, Tensor]:
    """The block's attention on ``norm1(x)``, with its keys averaged over heads (B, N, hd).

    ``prefix`` (key, value), each (B, H, Lp, hd), is prepended inside attention (prefix tuning).
    ``log_size`` (B, N) adds ToMe's proportional-attention bias to the logits of each key.
    Without a bias this is the fused SDPA path, exactly timm's. ``eager``: softmax(q k^T / sqrt(d)) v
    written out (``backbone.attention: eager``), as timm's ``fused_attn = False`` path computes it.
    """
    attn = blk.attn
    h = blk.norm1(x)
    B, N, _ = h.shape
    gate = attn.gate(h).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    metric = k.mean(dim=1)
    if prefix is not None:
        k = torch.cat([prefix[0].to(k.dtype), k], dim=2)
        v = torch.cat([prefix[1].to(v.dtype), v], dim=2)
    bias = None
    if log_size is not None:
        pad = k.shape[2] - N                                  # prefix keys stand for one token each
        bias = F.pad(log_size, (pad, 0)).to(q.dtype)[:, None, None, :]
    drop = attn.attn_drop.p if attn.training else 0.0
    if eager:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        out = F.dropout(logits.softmax(dim=-1), drop, attn.training) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), metric


def bipartite_matching(metric: Tensor, r: int) -> Callable[[Tensor], Tensor]:
    """ToMe's bipartite soft matching on (B, N, c): a function summing tokens of A into their B match.

    Tokens alternate into A (even) and B (odd); each A token's best B partner is found by cosine
    similarity; the ``r`` A tokens with the highest best-similarity merge (sum) into that partner.
    The returned function maps (B, N, C) to (B, N - r, C): unmerged A tokens, then B tokens.
    """
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)       # (B, Na, Nb)
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        src, keep = order[:, :r], order[:, r:]
        dst = partner.gather(-1, src)

    def merge(t: Tensor) -> Tensor:
        C = t.shape[-1]
        a, b = t[:, ::2], t[:, 1::2]
        unmerged = a.gather(1, keep[..., None].expand(-1, -1, C))
        moved = a.gather(1, src[..., None].expand(-1, -1, C))
        b = b.scatter_add(1, dst[..., None].expand(-1, -1, C), moved)
        return torch.cat([unmerged, b], dim=1)

    return merge


def merge_tokens(x: Tensor, metric: Tensor, r: int, n_protected: int,
                 state: TokenState) -> tuple[Tensor, TokenState]:
    """Merge ``r`` pairs among tokens ``n_protected:`` of x (size-weighted mean); protected ones untouched."""
    if r <= 0:
        return x, state
    head, body = x[:, :n_protected], x[:, n_protected:]
    size = state.size if state.size is not None else body.new_ones(body.shape[0], body.shape[1], 1)
    merge = bipartite_matching(metric[:, n_protected:], r)
    new_size = merge(size)
    body = merge(body * size) / new_size
    mass = merge(state.mass) if state.mass is not None else None
    return torch.cat([head, body], dim=1), TokenState(new_size, mass)


def block_forward(blk: Block, x: Tensor, *, r: int, n_protected: int, state: TokenState,
                  prop_attn: bool = False, prefix: tuple[Tensor, Tensor] | None = None,
                  eager: bool = False) -> tuple[Tensor, TokenState]:
    """One timm ``Block`` with AToM: attention, merge ``r`` tokens, MLP; with r = 0 it is ``blk(x)``.

    Covers what ``rep_tune.arch_probe`` accepts: LayerScale (``ls1``/``ls2``), qk-norm, attention
    output norm and gate, any timm Mlp/GLU MLP; ``rep_tune.runtime.backbone.check_arch`` refuses
    other blocks at load.
    """
    log_size = None
    if prop_attn and state.size is not None:
        log_size = F.pad(state.size[..., 0].log(), (n_protected, 0))
    a, metric = attention(blk, x, log_size=log_size, prefix=prefix, eager=eager)
    x = x + blk.drop_path1(blk.ls1(a))
    x, state = merge_tokens(x, metric, r, n_protected, state)
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, state
