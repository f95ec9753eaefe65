"""Prompts: the L2P prompt pool and DualPrompt's G/E prefix prompts (all that trains, with the head).

Both follow the reference PyTorch ports of L2P and DualPrompt: uniform(-1, 1) init of prompts
and keys, cosine query-key matching, and the pull constraint ``reduce_sim`` (sum of the
similarities of the selected keys over the batch size), reported here already as the loss
term ``-pull_coeff * reduce_sim``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Selection:
    """What a prompt module picked for a batch."""

    idx: Tensor          # (B, k) prompt ids per sample
    reduce_sim: Tensor   # scalar: sum of cosine similarities of the selected keys / B
    pull_loss: Tensor    # scalar: -pull_coeff * reduce_sim


def cosine_to_keys(query: Tensor, keys: Tensor) -> Tensor:
    """(B, P) cosine similarity between queries (B, D) and keys (P, D)."""
    return F.normalize(query, dim=-1, eps=1e-6) @ F.normalize(keys, dim=-1, eps=1e-6).t()


def batchwise_vote(idx: Tensor, top_k: int) -> Tensor:
    """L2P's batch-wise prompt: the ``top_k`` ids chosen most often in the batch, used for every sample.

    Ties go to the smaller id (deterministic). Returns (B, top_k).
    """
    counts = torch.bincount(idx.flatten(), minlength=int(idx.max()) + 1 if idx.numel() else 1)
    # stable ordering: most frequent first, then smaller id
    order = torch.sort(-counts, stable=True).indices[:top_k]
    return order.unsqueeze(0).expand(idx.shape[0], -1)


def _pull(query: Tensor, keys: Tensor, idx: Tensor, coeff: float) -> tuple[Tensor, Tensor]:
    """reduce_sim of the selected keys and the pull loss -coeff * reduce_sim (gradient flows to keys)."""
    q = F.normalize(query, dim=-1, eps=1e-6)
    k = F.normalize(keys, dim=-1, eps=1e-6)[idx]                 # (B, k, D)
    reduce_sim = (k * q.unsqueeze(1)).sum() / query.shape[0]
    return reduce_sim, -coeff * reduce_sim


class L2PPool(nn.Module):
    """L2P prompt pool: ``pool_size`` prompts of ``length`` tokens, one learnable key each."""

    def __init__(self, pool_size: int, length: int, dim: int, top_k: int, batchwise: bool = True,
                 pull_coeff: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.top_k, self.length, self.batchwise, self.pull_coeff = top_k, length, batchwise, pull_coeff
        self.prompts = nn.Parameter(torch.empty(pool_size, length, dim))
        self.keys = nn.Parameter(torch.empty(pool_size, dim))
        nn.init.uniform_(self.prompts, -1.0, 1.0, generator=generator)
        nn.init.uniform_(self.keys, -1.0, 1.0, generator=generator)

    @property
    def num_tokens(self) -> int:
        """Prompt tokens added to the sequence: top_k * length."""
        return self.top_k * self.length

    def select(self, query: Tensor) -> Selection:
        """Top-k keys by cosine similarity to the query; with ``batchwise`` the batch's majority vote.

        As in L2P the vote applies in training and evaluation alike.
        """
        with torch.no_grad():
            idx = cosine_to_keys(query, self.keys).topk(self.top_k, dim=1).indices
            if self.batchwise:
                idx = batchwise_vote(idx, self.top_k)
        sim, loss = _pull(query, self.keys, idx, self.pull_coeff)
        return Selection(idx, sim, loss)

    def tokens(self, idx: Tensor) -> Tensor:
        """(B, top_k * length, D) prompt tokens of the selected ids."""
        p = self.prompts[idx]                                      # (B, k, L, D)
        return p.reshape(p.shape[0], -1, p.shape[-1])


class DualPromptPrefixes(nn.Module):
    """DualPrompt: a shared G-prompt at ``g_layers`` and an E-prompt pool at ``e_layers``, as prefixes.

    Prefix tuning: each layer's prompt is split into a key prefix and a value prefix of
    ``length`` tokens per head, prepended to that layer's attention keys and values.
    Shapes: G (n_g, 2, g_length, H, hd); E (n_e, 2, pool, length, H, hd); keys (pool, D).
    """

    def __init__(self, dim: int, num_heads: int, g_layers: list[int], g_length: int, e_layers: list[int],
                 pool_size: int, length: int, top_k: int = 1, pull_coeff: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        hd = dim // num_heads
        self.g_layers, self.e_layers = list(g_layers), list(e_layers)
        self.top_k, self.pull_coeff, self.pool_size = top_k, pull_coeff, pool_size
        self.g_prompts = nn.Parameter(torch.empty(len(self.g_layers), 2, g_length, num_heads, hd))
        self.e_prompts = nn.Parameter(torch.empty(len(self.e_layers), 2, pool_size, length, num_heads, hd))
        self.keys = nn.Parameter(torch.empty(pool_size, dim))
        for p in (self.g_prompts, self.e_prompts, self.keys):
            nn.init.uniform_(p, -1.0, 1.0, generator=generator)

    def select(self, query: Tensor, task_id: int | None = None) -> Selection:
        """E-prompt ids: the task's own while training (as DualPrompt), else top-k by query-key match."""
        B = query.shape[0]
        if self.training and task_id is not None and (task_id + 1) * self.top_k <= self.pool_size:
            start = task_id * self.top_k
            idx = torch.arange(start, start + self.top_k, device=query.device).expand(B, -1)
        else:
            with torch.no_grad():
                idx = cosine_to_keys(query, self.keys).topk(self.top_k, dim=1).indices
        sim, loss = _pull(query, self.keys, idx, self.pull_coeff)
        return Selection(idx, sim, loss)

    def prefixes(self, idx: Tensor, batch: int) -> dict[int, tuple[Tensor, Tensor]]:
        """Block index -> (key prefix, value prefix), each (B, H, length, hd)."""
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for i, layer in enumerate(self.g_layers):
            k, v = self.g_prompts[i].permute(0, 2, 1, 3).unbind(0)   # (H, Lg, hd) each
            out[layer] = (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
        for i, layer in enumerate(self.e_layers):
            e = self.e_prompts[i][:, idx]                              # (2, B, k, L, H, hd)
            e = e.flatten(2, 3).permute(0, 1, 3, 2, 4)                  # (2, B, H, k*L, hd)
            out[layer] = (e[0], e[1])
        return out
