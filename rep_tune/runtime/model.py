"""RepModel: the REP forward pass over a frozen timm VisionTransformer.

Drives the backbone's pieces itself (patch_embed, _pos_embed, a per-block loop with AToM,
ALD and prefix prompts, final norm) so that merged tokens really shrink later blocks and
dropped blocks are really skipped. Only prompts, keys and the new head train.
"""
from __future__ import annotations

import copy

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch
from torch import Tensor, nn

from rep_tune.config import RepConfig
from rep_tune.methods import get_method
from rep_tune.runtime.ald import LayerDropper
from rep_tune.runtime.atom import TokenState, block_forward
from rep_tune.runtime.backbone import load_backbone
from rep_tune.runtime.prompts import build_prompt_module
from rep_tune.runtime.selection import QueryCache, cls_feature, projection, surrogate_identity
from rep_tune.schedule import effective_merges, tokens_per_block


@dataclass
class RepOutput:
    """One forward: logits, the pull-constraint loss term to add, and what really ran.

    ``pull_loss`` is already ``-pull_coeff * reduce_sim``: the training loss is
    ``cross_entropy(logits, y) + pull_loss``. ``tokens[l]`` is the number of tokens entering
    block l (for a skipped block: the number that would have), ``ran[l]`` whether it ran.
    """

    logits: Tensor
    pull_loss: Tensor
    tokens: list[int] = field(default_factory=list)
    ran: list[bool] = field(default_factory=list)
    prompt_idx: Tensor | None = None


def _full_precision(x: Tensor):
    """Autocast off for the block (trainable parts stay fp32 under ``training.precision``)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class RepModel(nn.Module):
    """REP on a frozen timm ViT: any registered prompt method, swift selection, AToM, ALD.

    The token layout (prefix tokens, prompt tokens, patches, protected tokens, prefix lengths,
    blocks that never drop) is ``rep_tune.layout.token_layout(config)``, the same function the
    cost model counts with; the constructor checks the built backbone and prompt module against it.
    """

    def __init__(self, config: RepConfig, num_classes: int) -> None:
        super().__init__()
        self.config = config
        b, s, p = config.backbone, config.selection, config.prompt
        # frozen, shared per process: registered as submodules so .to(device) moves them, never copied
        self.backbone = load_backbone(b.name, pretrained=b.pretrained, checkpoint=b.checkpoint, img_size=b.img_size,
                                      section="backbone")
        D, H = self.backbone.embed_dim, self.backbone.blocks[0].attn.num_heads
        self.depth = len(self.backbone.blocks)
        self.surrogate = (load_backbone(s.surrogate, pretrained=s.pretrained, checkpoint=s.checkpoint, section="selection")
                          if s.surrogate else None)
        if self.surrogate is None and s.query_model == "separate":
            # the reference code's `original_model`: a second frozen copy computing the query
            # (same weights, same query; its memory is the point: the base method holds them twice)
            self.surrogate = copy.deepcopy(self.backbone).requires_grad_(False)
        # the query's identity: the model computing it, its weights, and the precision it runs at
        prec = config.training.precision
        self.surrogate_key: Hashable = (
            surrogate_identity("surrogate", s.surrogate, s.pretrained, s.checkpoint, prec) if s.surrogate
            else surrogate_identity("backbone", b.name, b.pretrained, b.checkpoint, b.img_size, prec))
        d = self.surrogate.embed_dim if self.surrogate is not None else D
        self.register_buffer("projection", projection(d, D, s.projection_seed) if d != D else None, persistent=False)

        self.unseen: Tensor | None = None       # classes the head does not score in eval (set_seen_classes)
        self.layout = layout = config.layout()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.training.seed)
            g = torch.Generator().manual_seed(config.training.seed)
            self.prompt = build_prompt_module(p, dim=D, num_heads=H, depth=self.depth,
                                              vote_size=config.training.batch_size, generator=g)
            self.head = nn.Linear(D, num_classes)
            # as timm/L2P: small head init, zero bias, so classes of future tasks do not win argmax
            nn.init.trunc_normal_(self.head.weight, std=0.02, generator=g)
            nn.init.zeros_(self.head.bias)
        if (self.backbone.num_prefix_tokens, self.backbone.patch_embed.num_patches) != (layout.n_prefix, layout.n_patches):
            raise ValueError(f"backbone {b.name!r} has {self.backbone.num_prefix_tokens} prefix tokens and "
                             f"{self.backbone.patch_embed.num_patches} patches, the layout says {layout.n_prefix} and "
                             f"{layout.n_patches} (rep_tune.archs disagrees with timm)")

        # token layout: [prefix (CLS, registers), prompts, patches]; the first n_protected never merge
        self.n_prefix, self.n_prompt = layout.n_prefix, layout.n_prompt
        self.protect_prompts = layout.protect_prompts
        self.n_protected, self.mergeable = layout.n_protected, layout.mergeable
        self.merges = effective_merges(config.merge_schedule, self.mergeable)
        self.planned_tokens = tokens_per_block(self.n_protected, self.mergeable, config.merge_schedule)
        self.dropper = LayerDropper(config.ald, config.merge_schedule, self.mergeable,
                                    layout.prompt_blocks, seed=config.training.seed)

    def begin_task(self, task_id: int, n_tasks: int) -> None:
        """Before training task ``task_id``: the prompt method's carry-over / freezing."""
        self.prompt.begin_task(task_id, n_tasks)

    # ---- frozen parts stay in eval mode ---------------------------------------------------
    def train(self, mode: bool = True) -> "RepModel":
        super().train(mode)
        self.backbone.eval()
        if self.surrogate is not None:
            self.surrogate.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Prompts, keys and head: everything the optimiser may touch."""
        return list(self.prompt.parameters()) + list(self.head.parameters())

    def set_seen_classes(self, classes: Sequence[int]) -> None:
        """The classes of the tasks seen so far. Where the method scores only those at evaluation
        (``PromptMethod.eval_seen_classes``: CODA-Prompt), the other logits are -inf in eval mode."""
        if not get_method(self.config.prompt.method).eval_seen_classes:
            return
        unseen = torch.ones(self.head.out_features, dtype=torch.bool, device=self.head.weight.device)
        unseen[list(classes)] = False
        self.unseen = unseen

    def param_groups(self) -> list[dict]:
        """``trainable_parameters`` as optimizer groups: the prompt module's without weight decay
        where it holds frozen parts (``PromptModule.decays``), the head's with the optimizer's default."""
        prompt: dict = {"params": list(self.prompt.parameters())}
        if not self.prompt.decays:
            prompt["weight_decay"] = 0.0
        return [prompt, {"params": list(self.head.parameters())}]

    # ---- selection query ------------------------------------------------------------------
    @torch.no_grad()
    def surrogate_features(self, x: Tensor) -> Tensor:
        """(B, d) raw, cacheable query part: surrogate CLS, or the backbone's own CLS (baseline)."""
        return cls_feature(self.surrogate if self.surrogate is not None else self.backbone, x)

    @torch.no_grad()
    def query(self, x: Tensor, *, ids: Sequence[int] | Tensor | None = None, dataset_key: Hashable = None,
              cache: QueryCache | None = None) -> Tensor:
        """(B, D) selection query. ``cache=None`` bypasses caching (required for random augmentation);
        with a cache, ``ids`` and ``dataset_key`` name the samples (deterministic pipeline only)."""
        if cache is None:
            feats = self.surrogate_features(x)
        else:
            if ids is None or dataset_key is None:
                raise ValueError("RepModel.query: a cache needs the batch's sample ids and a dataset_key")
            feats = cache.features(self.surrogate_key, dataset_key, ids, x, self.surrogate_features)
        return feats @ self.projection if self.projection is not None else feats

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x: Tensor, query: Tensor | None = None, *, task_id: int | None = None,
                iteration: int = 0) -> RepOutput:
        """Prompted, merged, layer-dropped forward; ALD only in training mode."""
        if query is None:
            query = self.query(x)
        bb = self.backbone
        h = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
        B = h.shape[0]
        with _full_precision(x):   # prompt matching and assembly in fp32, whatever the autocast
            sel = self.prompt.select(query.float(), task_id)
            prompts = self.prompt.tokens(sel)
            prefixes = self.prompt.prefixes(sel, B)
        state = TokenState()
        if prompts is not None:
            h = torch.cat([h[:, :self.n_prefix], prompts.to(h.dtype), h[:, self.n_prefix:]], dim=1)
            if not self.protect_prompts:
                n_patch = h.shape[1] - self.n_prefix - self.n_prompt
                state.mass = torch.cat([h.new_ones(B, self.n_prompt, 1), h.new_zeros(B, n_patch, 1)], dim=1)

        ran = self.dropper.sample(iteration) if self.training else [True] * self.depth
        tokens = []
        for l, blk in enumerate(bb.blocks):
            tokens.append(h.shape[1])
            if not ran[l]:
                continue   # skipped block: identity, nothing computed or kept for backward
            h, state = block_forward(blk, h, r=min(self.merges[l], (h.shape[1] - self.n_protected) // 2),
                                     n_protected=self.n_protected, state=state,
                                     prop_attn=self.config.atom.prop_attn, prefix=prefixes.get(l),
                                     eager=self.config.backbone.attention == "eager")
        h = bb.norm(h)
        with _full_precision(x):   # the pooled feature and the head in fp32 (the head's parameters are fp32)
            logits = self.head(self._pool(h, state).float())
        if not self.training and self.unseen is not None:
            logits = logits.masked_fill(self.unseen, float("-inf"))
        return RepOutput(logits, sel.loss, tokens, ran, sel.idx)

    def _pool(self, h: Tensor, state: TokenState) -> Tensor:
        """What the head reads (the layout's ``pooling``): the prompt tokens' mean (L2P's head_type
        'prompt') or CLS (DualPrompt, CODA-Prompt)."""
        if self.layout.pooling == "cls":
            return h[:, 0]
        if state.mass is None:
            return h[:, self.n_prefix:self.n_prefix + self.n_prompt].mean(dim=1)
        body = h[:, self.n_prefix:]                      # unprotected prompts may have merged
        return (body * state.mass).sum(dim=1) / state.mass.sum(dim=1)
