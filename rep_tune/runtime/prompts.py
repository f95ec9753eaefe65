"""Prompt modules: the trainable part of each prompt method (with the head), behind one interface.

Every method registered in ``rep_tune.methods`` has a ``PromptModule`` here, registered under the
same name with :func:`register_prompt_module`. ``RepModel`` only talks to the interface:

    sel = module.select(query, task_id)        # what to use for this batch (+ its loss term)
    module.tokens(sel)                         # (B, n, D) prompt tokens for the sequence, or None
    module.prefixes(sel, B)                    # {block: (key prefix, value prefix)}, each (B, H, len, hd)
    module.begin_task(task_id, n_tasks)        # carry-over, freezing of earlier tasks' parameters

Shapes must match the method's torch-free ``PromptGeometry`` (tests check it for every method).
L2P and DualPrompt follow their reference PyTorch ports (uniform(-1, 1) init, cosine query-key
matching, pull constraint ``reduce_sim``: the sum of the selected keys' similarities over the
batch size, reported as the loss term ``-pull_coeff * reduce_sim``); CODA-Prompt follows the
official GT-RIPL code (orthogonal init, attention-weighted components, earlier tasks frozen).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rep_tune.methods.coda import CodaConfig
from rep_tune.methods.dualprompt import DualPromptConfig
from rep_tune.methods.l2p import L2PConfig


@dataclass
class Selection:
    """What a prompt module picked for a batch, and the loss term it adds.

    ``idx``: (B, k) prompt ids (None for methods without ids); ``loss``: scalar added to the
    cross-entropy (``-pull_coeff * reduce_sim``, or CODA's orthogonality penalty); ``weights``: a
    method's per-sample mixing (CODA: one (B, M) tensor per prompted block).
    """

    idx: Tensor | None
    loss: Tensor
    reduce_sim: Tensor | None = None
    weights: dict[int, Tensor] | None = None

    @property
    def pull_loss(self) -> Tensor:      # the name RepOutput has always used
        return self.loss


class PromptModule(nn.Module):
    """Interface of a method's trainable prompts (see the module docstring).

    ``decays``: whether the optimizer's weight decay (AdamW) applies to the module's parameters;
    False where parameters hold frozen parts that must not move (CODA-Prompt's earlier components).
    """

    decays: bool = True

    def select(self, query: Tensor, task_id: int | None = None) -> Selection:
        raise NotImplementedError

    def tokens(self, sel: Selection) -> Tensor | None:
        return None

    def prefixes(self, sel: Selection, batch: int) -> dict[int, tuple[Tensor, Tensor]]:
        return {}

    def begin_task(self, task_id: int, n_tasks: int) -> None:
        """Called before training task ``task_id`` of ``n_tasks``."""


PROMPT_MODULES: dict[str, Callable[..., PromptModule]] = {}


def register_prompt_module(name: str) -> Callable[[type[PromptModule]], type[PromptModule]]:
    """Class decorator: the runtime side of the method ``name`` (see rep_tune.methods)."""
    def deco(cls: type[PromptModule]) -> type[PromptModule]:
        PROMPT_MODULES[name] = cls
        return cls
    return deco


def build_prompt_module(section, *, dim: int, num_heads: int, depth: int, vote_size: int,
                        generator: torch.Generator) -> PromptModule:
    """The registered module for ``section.method``, initialised from ``generator``."""
    try:
        cls = PROMPT_MODULES[section.method]
    except KeyError:
        raise ValueError(f"prompt method {section.method!r} has no runtime module "
                         f"(registered: {', '.join(PROMPT_MODULES)})") from None
    return cls(section, dim=dim, num_heads=num_heads, depth=depth, vote_size=vote_size, generator=generator)


# ---- shared pieces ----------------------------------------------------------------------------
def cosine_to_keys(query: Tensor, keys: Tensor) -> Tensor:
    """(B, P) cosine similarity between queries (B, D) and keys (P, D)."""
    return F.normalize(query, dim=-1, eps=1e-6) @ F.normalize(keys, dim=-1, eps=1e-6).t()


def batchwise_vote(idx: Tensor, top_k: int) -> Tensor:
    """L2P's batch-wise prompt: the ``top_k`` ids chosen most often in the batch, used for every sample.

    Ties go to the smaller id (deterministic). Returns (B, top_k).
    """
    counts = torch.bincount(idx.flatten(), minlength=int(idx.max()) + 1 if idx.numel() else 1)
    order = torch.sort(-counts, stable=True).indices[:top_k]      # most frequent first, then smaller id
    return order.unsqueeze(0).expand(idx.shape[0], -1)


def grouped_vote(idx: Tensor, top_k: int, group: int) -> Tensor:
    """``batchwise_vote`` over consecutive groups of ``group`` samples (the training batch size)."""
    if group <= 0 or idx.shape[0] <= group:
        return batchwise_vote(idx, top_k)
    return torch.cat([batchwise_vote(chunk, top_k) for chunk in idx.split(group)])


def pull(query: Tensor, keys: Tensor, idx: Tensor, coeff: float) -> tuple[Tensor, Tensor]:
    """reduce_sim of the selected keys and the pull loss -coeff * reduce_sim (gradient flows to keys)."""
    q = F.normalize(query, dim=-1, eps=1e-6)
    k = F.normalize(keys, dim=-1, eps=1e-6)[idx]                 # (B, k, D)
    reduce_sim = (k * q.unsqueeze(1)).sum() / query.shape[0]
    return reduce_sim, -coeff * reduce_sim


def _uniform(shape: tuple[int, ...], generator: torch.Generator) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape))
    nn.init.uniform_(p, -1.0, 1.0, generator=generator)
    return p


# ---- L2P ----------------------------------------------------------------------------------------
@register_prompt_module("l2p")
class L2PPool(PromptModule):
    """L2P prompt pool: ``pool_size`` prompts of ``length`` tokens, one learnable key each."""

    def __init__(self, cfg: L2PConfig, *, dim: int, num_heads: int, depth: int, vote_size: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.top_k, self.length, self.batchwise, self.pull_coeff = cfg.top_k, cfg.length, cfg.batchwise, cfg.pull_coeff
        self.vote_size = vote_size
        self.prompts = _uniform((cfg.pool_size, cfg.length, dim), generator)
        self.keys = _uniform((cfg.pool_size, dim), generator)

    @property
    def num_tokens(self) -> int:
        """Prompt tokens added to the sequence: top_k * length."""
        return self.top_k * self.length

    def select(self, query: Tensor, task_id: int | None = None) -> Selection:
        """Top-k keys by cosine similarity; with ``batchwise`` the majority vote over each group of
        ``vote_size`` samples (the training batch), in training and evaluation alike, as L2P."""
        with torch.no_grad():
            idx = cosine_to_keys(query, self.keys).topk(self.top_k, dim=1).indices
            if self.batchwise:
                idx = grouped_vote(idx, self.top_k, self.vote_size)
        sim, loss = pull(query, self.keys, idx, self.pull_coeff)
        return Selection(idx, loss, sim)

    def tokens(self, sel: Selection) -> Tensor:
        """(B, top_k * length, D) prompt tokens of the selected ids."""
        p = self.prompts[sel.idx]                                  # (B, k, L, D)
        return p.reshape(p.shape[0], -1, p.shape[-1])


# ---- DualPrompt ---------------------------------------------------------------------------------
@register_prompt_module("dualprompt")
class DualPromptPrefixes(PromptModule):
    """DualPrompt: a shared G-prompt at ``g_layers`` and an E-prompt pool at ``e_layers``, as prefixes.

    Prefix tuning: each layer's prompt is split into a key prefix and a value prefix of
    ``length`` tokens per head, prepended to that layer's attention keys and values.
    Shapes: G (n_g, 2, g_length, H, hd); E (n_e, 2, pool, length, H, hd); keys (pool, D).
    """

    def __init__(self, cfg: DualPromptConfig, *, dim: int, num_heads: int, depth: int, vote_size: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        hd = dim // num_heads
        self.g_layers, self.e_layers = list(cfg.g_layers), list(cfg.e_layers)
        self.top_k, self.pull_coeff, self.pool_size, self.carry_over = cfg.top_k, cfg.pull_coeff, cfg.pool_size, cfg.carry_over
        self.g_prompts = _uniform((len(self.g_layers), 2, cfg.g_length, num_heads, hd), generator)
        self.e_prompts = _uniform((len(self.e_layers), 2, cfg.pool_size, cfg.length, num_heads, hd), generator)
        self.keys = _uniform((cfg.pool_size, dim), generator)

    def _task_ids(self, task_id: int) -> slice | None:
        start = task_id * self.top_k
        return slice(start, start + self.top_k) if start + self.top_k <= self.pool_size else None

    def begin_task(self, task_id: int, n_tasks: int) -> None:
        """Carry-over: the new task's E-prompt starts as the previous task's (``shared_prompt_pool``)."""
        cur, prev = self._task_ids(task_id), self._task_ids(task_id - 1) if task_id > 0 else None
        if self.carry_over and cur is not None and prev is not None:
            with torch.no_grad():
                self.e_prompts[:, :, cur] = self.e_prompts[:, :, prev]

    def select(self, query: Tensor, task_id: int | None = None) -> Selection:
        """E-prompt ids: the task's own while training (as DualPrompt), else top-k by query-key match."""
        B = query.shape[0]
        own = self._task_ids(task_id) if (self.training and task_id is not None) else None
        if own is not None:
            idx = torch.arange(own.start, own.stop, device=query.device).expand(B, -1)
        else:
            with torch.no_grad():
                idx = cosine_to_keys(query, self.keys).topk(self.top_k, dim=1).indices
        sim, loss = pull(query, self.keys, idx, self.pull_coeff)
        return Selection(idx, loss, sim)

    def prefixes(self, sel: Selection, batch: int) -> dict[int, tuple[Tensor, Tensor]]:
        """Block index -> (key prefix, value prefix), each (B, H, length, hd)."""
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for i, layer in enumerate(self.g_layers):
            k, v = self.g_prompts[i].permute(0, 2, 1, 3).unbind(0)   # (H, Lg, hd) each
            out[layer] = (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
        for i, layer in enumerate(self.e_layers):
            e = self.e_prompts[i][:, sel.idx]                          # (2, B, k, L, H, hd)
            e = e.flatten(2, 3).permute(0, 1, 3, 2, 4)                  # (2, B, H, k*L, hd)
            out[layer] = (e[0], e[1])
        return out


# ---- CODA-Prompt --------------------------------------------------------------------------------
def gram_schmidt(earlier: Tensor, rows: int, generator: torch.Generator) -> Tensor:
    """``rows`` random unit rows orthogonal to ``earlier``'s rows and to each other (the official
    CODA-Prompt code's ``gram_schmidt``, done with QR).

    ``earlier``: (k, w) rows already in use (learned components of earlier tasks, any norm).
    Orthogonality is possible for at most ``w - rank(earlier)`` new rows: the rows beyond that
    (a pool larger than the width) are random unit rows, orthogonal to nothing in particular.
    """
    w = earlier.shape[1]
    g = torch.randn(rows, w, generator=generator, dtype=torch.float64)
    e = earlier.detach().to(torch.float64)
    if e.shape[0]:
        q, r = torch.linalg.qr(e.t())                                   # (w, k) basis of earlier's span
        q = q[:, r.diagonal().abs() > 1e-8 * max(1.0, float(r.diagonal().abs().max()))]
        g = g - (g @ q) @ q.t()
        room = w - q.shape[1]
    else:
        room = w
    n = max(0, min(rows, room))
    if n:
        qn, _ = torch.linalg.qr(g[:n].t())                              # orthonormal within the complement
        g[:n] = qn.t()
    g[n:] = F.normalize(g[n:], dim=-1)
    return g.to(earlier.dtype)


def _ortho_penalty(t: Tensor) -> Tensor:
    eye = torch.eye(t.shape[0], device=t.device, dtype=t.dtype)
    return ((t @ t.t() - eye) ** 2).mean()


@register_prompt_module("coda")
class CodaPrompt(PromptModule):
    """CODA-Prompt: per prompted block, M components P (M, L, D), keys K (M, D), attention A (M, D).

    weight_m = cos(q * A_m, K_m); prompt = sum_m weight_m P_m, its first L/2 tokens the key prefix
    and the last L/2 the value prefix. As in the official GT-RIPL code (``models/zoo.py``):
    components are split evenly across tasks; when task t begins, its components, keys and
    attention vectors are re-initialised orthogonal to those of tasks < t (``gram_schmidt``);
    while training task t only its components learn (earlier ones are detached, and the optimizer
    applies no weight decay to this module: ``decays = False``, the official code's Adam has
    none); evaluation uses the components of every task begun so far. Orthogonality penalty
    ``ortho_mu``: 0 in the official CIFAR-100 setting (``--prompt_param 100 8 0.0``).
    """

    decays = False

    def __init__(self, cfg: CodaConfig, *, dim: int, num_heads: int, depth: int, vote_size: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.layers, self.pool, self.length = list(cfg.layers), cfg.pool_size, cfg.length
        self.heads, self.hd, self.ortho_mu = num_heads, dim // num_heads, cfg.ortho_mu
        self.seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))   # per-task re-init draws
        self.p = nn.ParameterList()
        self.k = nn.ParameterList()
        self.a = nn.ParameterList()
        none = torch.zeros(0, dim)
        for _ in self.layers:
            p = gram_schmidt(torch.zeros(0, self.length * dim), self.pool, generator)
            self.p.append(nn.Parameter(p.view(self.pool, self.length, dim)))
            self.k.append(nn.Parameter(gram_schmidt(none, self.pool, generator)))
            self.a.append(nn.Parameter(gram_schmidt(none, self.pool, generator)))
        self.task, self.per_task = 0, self.pool

    def _span(self) -> tuple[int, int]:
        """Rows [s, f) of the pool that the current task trains."""
        return self.task * self.per_task, min(self.pool, (self.task + 1) * self.per_task)

    @torch.no_grad()
    def begin_task(self, task_id: int, n_tasks: int) -> None:
        """Task ``task_id``'s components, keys and attention vectors: fresh, orthogonal to the earlier
        tasks' (drawn from the module's seed and the task id, so a resumed run draws the same)."""
        self.task, self.per_task = task_id, max(1, self.pool // max(1, n_tasks))
        s, f = self._span()
        if f <= s:
            return
        g = torch.Generator().manual_seed(self.seed + 7919 * task_id)
        for i in range(len(self.layers)):
            for t in (self.p[i], self.k[i], self.a[i]):
                flat = t.view(self.pool, -1)
                flat[s:f] = gram_schmidt(flat[:s], f - s, g)

    def _active(self, t: Tensor) -> Tensor:
        """Components in use: earlier tasks' frozen (detached) and this task's learning in training."""
        s, f = self._span()
        if self.training:
            return torch.cat([t[:s].detach(), t[s:f]], dim=0)
        return t[:f]

    def select(self, query: Tensor, task_id: int | None = None) -> Selection:
        weights: dict[int, Tensor] = {}
        loss = query.new_zeros(())
        for i, layer in enumerate(self.layers):
            K, A = self._active(self.k[i]), self._active(self.a[i])
            aq = query.unsqueeze(1) * A.unsqueeze(0)                        # (B, M, D)
            weights[layer] = (F.normalize(aq, dim=2) * F.normalize(K, dim=1).unsqueeze(0)).sum(-1)   # (B, M)
            if self.training and self.ortho_mu > 0:
                P = self._active(self.p[i])
                loss = loss + self.ortho_mu * (_ortho_penalty(K) + _ortho_penalty(A) + _ortho_penalty(P.flatten(1)))
        return Selection(None, loss, None, weights)

    def prefixes(self, sel: Selection, batch: int) -> dict[int, tuple[Tensor, Tensor]]:
        out: dict[int, tuple[Tensor, Tensor]] = {}
        half = self.length // 2
        for i, layer in enumerate(self.layers):
            P = self._active(self.p[i])                                      # (M, L, D)
            prompt = torch.einsum("bm,mld->bld", sel.weights[layer], P)      # (B, L, D)
            prompt = prompt.view(batch, self.length, self.heads, self.hd).transpose(1, 2)   # (B, H, L, hd)
            out[layer] = (prompt[:, :, :half], prompt[:, :, half:])
        return out
