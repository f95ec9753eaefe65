"""Counts of one REP training iteration of a config (pure arithmetic, no torch).

Everything about tokens comes from the config's token layout (``config.layout()``,
``rep_tune.layout``): prefix tokens (CLS, registers), prompt tokens, patches, the protected
tokens, the key/value prefix of each block, the blocks ALD never drops, the first block a
gradient flows through, the trainable elements and the selection's multiply-adds. Merge counts
and keep probabilities come from ``rep_tune.schedule``. The work of each block comes from
``rep_tune.cost.work`` (the one place FLOPs, bytes, launches and saved bytes are written).

An iteration = patch embedding and prompt assembly ("other"), the selection query (a surrogate
or backbone forward, skipped when the per-sample cache hits), the blocks ALD runs (each block
weighted by its keep probability; a skipped block merges nothing, so later blocks see more
tokens), the head, loss, gradient clipping and the optimizer step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache

from rep_tune import schedule
from rep_tune.archs import ArchSpec, arch_of
from rep_tune.cost.work import (DTYPE_BYTES, ZERO, BlockShape, Numerics, Work, block_backward, block_forward,
                                block_saved_bytes, block_workspace_bytes, merge_work)

DEFAULT_ITERS_PER_TASK = 1000   # task length for ALD averaging when nothing else says
DEFAULT_NUM_CLASSES = 100       # head width when the scenario is unknown (CIFAR-100)

# Launches outside the blocks, per iteration (counted with torch.profiler on RepModel): pooling,
# final norm, head, loss, the backward's start and their backward (embedding: ``embedding``);
# prompt selection and assembly, forward and backward (the method's ``PromptGeometry.launches``);
# optimizer step + gradient clipping per trainable tensor (single-tensor loops on CPU): the head's
# and the method's (``PromptGeometry.param_tensors``).
LAUNCHES_ITERATION = 64
LAUNCHES_PARAM = 10
PARAM_TENSORS_HEAD = 2
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1}


@dataclass(frozen=True)
class BlockCount:
    """One block of the update backbone in one training iteration (batch included)."""

    index: int
    tokens: float            # expected tokens entering the block when it runs (attention runs over these)
    tokens_mlp: float        # after AToM's merges (MLP runs over these)
    kv_len: float            # attention key length (tokens + prefix)
    merges: int              # pairs merged in this block
    keep: float              # probability that ALD runs this block
    grad: bool               # gradient flows through this block (a prompt is at or before it)
    fwd: Work
    bwd: Work                # ZERO when grad is False
    match: Work              # AToM matching + merge (with its backward when grad)
    saved_bytes: float       # activations kept for backward when the block runs (all merges made)
    eligible: float = 0.0    # tokens the merge matches (the mergeable ones entering the block)

    @property
    def work(self) -> Work:
        """Work of the block when it runs."""
        return self.fwd + self.bwd + self.match


@dataclass
class Counts:
    """Everything the latency and memory models need for one config at one batch size.

    ``blocks_work`` is the expected work of the blocks under ALD (each weighted by its keep
    probability); ``query`` the selection query in steady state (ZERO on a cache hit) and
    ``query_first_epoch`` with the query computed; ``other`` the rest of the iteration.
    """

    batch: int
    numerics: Numerics
    blocks: list[BlockCount]                 # per-block view (empty unless detail=True)
    blocks_work: Work
    fwd: Work                                # expected forward work of the blocks
    bwd: Work                                # expected backward work of the blocks
    match: Work                              # expected AToM work
    query: Work
    query_first_epoch: Work
    other: Work
    saved_worst: float                       # activation bytes, every droppable block running
    saved_expected: float                    # keep-weighted activation bytes
    workspace_bytes: float                   # transient at the peak (backward starting in the last block)
    params: float                            # frozen backbone + surrogate parameters and buffers (elements)
    trainable: float                         # prompts + keys + head (elements)
    optimizer_state: float                   # elements (Adam: 2 per trainable)
    input_bytes: float
    width: int = 0                           # the blocks' embedding width
    query_shape: tuple[int, int, float] = (0, 0, 0.0)   # (width, batch, tokens) of the model computing the query
    extras: dict[str, float] = field(default_factory=dict)

    def iteration_work(self, first_epoch: bool = False) -> Work:
        """Expected work of one iteration, steady state or in the first epoch (query not cached)."""
        return self.blocks_work + self.other + (self.query_first_epoch if first_epoch else self.query)


@lru_cache(maxsize=256)
def _arch(name: str, img_size: int | None) -> ArchSpec:
    """ArchSpec of a timm name at an input size (as BackboneConfig.arch), memoised."""
    a = arch_of(name)
    return dataclasses.replace(a, img_size=img_size) if img_size else a


def _mlp(arch: ArchSpec) -> tuple[int, int]:
    """(fc1 output width, fc2 input width): equal for a plain MLP, 2:1 for a gated one."""
    hidden = getattr(arch, "mlp_hidden", 0) or int(arch.embed_dim * arch.mlp_ratio)
    return getattr(arch, "mlp_fc1_out", hidden), hidden


def _prefix_tokens(arch: ArchSpec) -> int:
    return int(getattr(arch, "num_prefix_tokens", 1))


def plain_forward(arch: ArchSpec, batch: int, numerics: Numerics) -> Work:
    """No-grad forward of a whole plain ViT at its input size (the selection query)."""
    N = _prefix_tokens(arch) + arch.num_patches()
    f, h = _mlp(arch)
    blk = block_forward(BlockShape(batch, N, N, N, arch.embed_dim, arch.num_heads, f, h), numerics, atom_metric=False)
    return arch.depth * blk + embedding(arch, batch, numerics) + Work(
        0.0, 0.0, numerics.stream_bytes * batch * N * arch.embed_dim * 2, 4)


def embedding(arch: ArchSpec, batch: int, numerics: Numerics) -> Work:
    """Patch embedding (a strided convolution = a matmul) and the position-embedding add."""
    P, D = arch.num_patches(), arch.embed_dim
    mm = 2.0 * batch * P * arch.in_chans * arch.patch_size ** 2 * D
    ew = numerics.stream_bytes * batch * (_prefix_tokens(arch) + P) * D * 3
    return Work(mm, 0.0, ew, 6)


def keep_probs(config, *, t: int | None = None, iters: int = DEFAULT_ITERS_PER_TASK) -> list[float]:
    """ALD keep probability per block: at iteration t, or averaged over a task of ``iters``."""
    lay = config.layout()
    merge = tuple(config.atom.schedule(lay.depth))
    return list(_schedule(merge, lay.mergeable, lay.n_protected, _ald_key(config.ald), t, iters,
                          tuple(lay.prompt_blocks))[2])


def _ald_key(d) -> tuple | None:
    return (d.theta_min, d.gamma, d.tau, d.alpha, d.schedule, d.horizon) if d.enabled else None


@lru_cache(maxsize=4096)
def _schedule(merge: tuple, mergeable: int, n_prot: int, ald: tuple | None, t: int | None, iters: int,
              protected: tuple) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """(effective merges, tokens entering each block, keep probabilities), from rep_tune.schedule."""
    eff = schedule.effective_merges(merge, mergeable)
    toks = schedule.tokens_per_block(n_prot, mergeable, merge)
    if ald is None:
        keep = [1.0] * len(merge)
    elif t is not None:
        keep = schedule.keep_probabilities(t, merge, mergeable, *ald[:4], protected, kind=ald[4],
                                           scale=schedule.horizon_scale(ald[5], iters))
    else:
        keep = schedule.mean_keep_probabilities(iters, merge, mergeable, *ald[:4], protected, kind=ald[4],
                                                scale=schedule.horizon_scale(ald[5], iters))
    return tuple(eff), tuple(toks), tuple(keep)


@dataclass(frozen=True)
class _Blocks:
    fwd: Work
    bwd: Work
    match: Work
    saved_worst: float
    saved_expected: float
    workspace: float


def _walk(sched: tuple, n_prot: int, prefix: tuple, first_grad: int, B: int, D: int, H: int, mlp: tuple,
          numerics: Numerics):
    """Per block: (index, merges, keep, grad, prefix, shape when it runs, planned shape, eligible tokens).

    A block ALD skips merges nothing: the tokens it would have merged reach the next blocks
    (``unmerged``, in expectation). The planned shape (every block running) is what memory counts.
    """
    eff, toks, keep = sched
    f_out, hidden = mlp
    unmerged = 0.0
    for i, (r, k, n0, pre) in enumerate(zip(eff, keep, toks, prefix)):
        N = n0 + unmerged
        yield (i, r, k, i >= first_grad, pre, BlockShape(B, N, N - r, N + pre, D, H, f_out, hidden),
               BlockShape(B, n0, n0 - r, n0 + pre, D, H, f_out, hidden), N - n_prot, n0 - n_prot)
        unmerged += (1.0 - k) * r


@lru_cache(maxsize=4096)
def _blocks(sched: tuple, n_prot: int, prefix: tuple, first_grad: int, B: int, D: int, H: int, mlp: tuple,
            numerics: Numerics) -> _Blocks:
    """Keep-weighted work of the blocks of one schedule at one shape, and their activation bytes."""
    fwd, bwd, match = [], [], []
    saved_w = saved_e = workspace = 0.0
    for i, r, k, grad, pre, shape, planned, eligible, planned_eligible in _walk(
            sched, n_prot, prefix, first_grad, B, D, H, mlp, numerics):
        fwd.append((k, block_forward(shape, numerics)))
        if grad:
            bwd.append((k, block_backward(shape, numerics)))
            saved = block_saved_bytes(planned, numerics, pre, planned_eligible)
            saved_w += saved if k > 0 else 0.0
            saved_e += k * saved
            if k > 0:     # the peak: every activation saved, backward starting in the last block that runs
                workspace = block_workspace_bytes(planned, numerics)
        elif not bwd:     # no gradient anywhere (yet): the forward's largest temporary
            workspace = max(workspace, block_workspace_bytes(planned, numerics))
        if r:
            match.append((k, merge_work(shape, eligible, numerics, grad)))
    return _Blocks(Work.weighted(fwd), Work.weighted(bwd), Work.weighted(match), saved_w, saved_e, workspace)


@lru_cache(maxsize=1024)
def _view(*args) -> tuple[BlockCount, ...]:
    """The per-block view of ``_blocks``'s numbers (CLI table, tests, the residual-corrected latency)."""
    numerics = args[-1]
    out = []
    for i, r, k, grad, pre, shape, planned, eligible, planned_eligible in _walk(*args):
        out.append(BlockCount(i, shape.tokens, shape.tokens_mlp, shape.kv_len, r, k, grad,
                              block_forward(shape, numerics),
                              block_backward(shape, numerics) if grad else ZERO,
                              merge_work(shape, eligible, numerics, grad) if r else ZERO,
                              block_saved_bytes(planned, numerics, pre, planned_eligible) if grad else 0.0,
                              eligible))
    return tuple(out)


@lru_cache(maxsize=1024)
def _query(backbone: str, img_size: int | None, surrogate: str | None, cache: bool, B: int,
           num: Numerics, separate: bool = False) -> tuple[Work, Work, float]:
    """(query work in steady state, in the first epoch, frozen parameters incl. the surrogate's).

    The selection query is a surrogate's forward (skipped on a cache hit; the input is resized to
    the surrogate's size, and a projection maps its width), or the backbone's own plain forward:
    through the backbone itself, or through a second frozen copy of it (``separate``: the same
    work, its weights held twice).
    """
    arch = _arch(backbone, img_size)
    if not surrogate:
        q = plain_forward(arch, B, num)
        return q, q, float(arch.params) * (2 if separate else 1)
    sarch = _arch(surrogate, None)
    q_first = plain_forward(sarch, B, num)
    if sarch.img_size != arch.img_size:
        q_first = q_first + Work(0.0, 0.0, num.stream_bytes * B * arch.in_chans
                                 * (arch.img_size ** 2 + sarch.img_size ** 2), 1)
    projection = sarch.embed_dim * arch.embed_dim if sarch.embed_dim != arch.embed_dim else 0
    return (ZERO if cache else q_first), q_first, float(arch.params + sarch.params + projection)


@lru_cache(maxsize=4096)
def _other(backbone: str, img_size: int | None, B: int, num: Numerics, select_macs: int, prompt_launches: int,
           n_prompt: int, n_tokens: int, n_last: int, num_classes: int, trainable: int, states: int,
           param_tensors: int) -> Work:
    """The iteration outside the blocks and the query: embedding, prompt selection and assembly,
    final norm, head and loss, gradient clipping and the optimizer step (fp32 parameters)."""
    arch = _arch(backbone, img_size)
    D, s = arch.embed_dim, num.stream_bytes
    return (embedding(arch, B, num)
            + Work(2.0 * B * select_macs * 2,                                           # selection, fwd + bwd
                   0.0, s * B * (n_prompt + (2 * n_tokens if n_prompt else 0)) * D,     # prompt gather + concat
                   prompt_launches)
            + Work(2.0 * B * D * num_classes * 3,                                       # head fwd, bwd input + weight
                   0.0, s * B * n_last * D * 4, LAUNCHES_ITERATION)                     # final norm fwd + bwd
            + Work(0.0, 0.0, 4.0 * (6 + 5 * states) * trainable,                       # clip + optimizer (fp32)
                   LAUNCHES_PARAM * param_tensors))


def count(config, *, batch: int | None = None, t: int | None = None, iters_per_task: int | None = None,
          num_classes: int = DEFAULT_NUM_CLASSES, precision: str | None = None, detail: bool = True,
          keep: tuple[float, ...] | None = None) -> Counts:
    """Counts of one training iteration of ``config`` at ``batch`` (default: its batch size).

    ``precision`` overrides ``training.precision`` (fp32 | bf16 | fp16). ALD keep probabilities
    at iteration ``t``, or averaged over a task of ``iters_per_task`` iterations (default: the
    config's cap, else 1000); ``keep`` replaces them (one per block; 0/1 = a drop pattern, as a
    benchmark that fixes the runtime's draws prices it). ``detail`` keeps the per-block list.
    """
    B = batch or config.training.batch_size
    num = Numerics.of(precision or config.training.precision, config.backbone.attention)
    arch = _arch(config.backbone.name, config.backbone.img_size)
    D, H, L = arch.embed_dim, arch.num_heads, arch.depth
    lay = config.layout()
    geom = lay.geometry
    merge = tuple(config.atom.schedule(L))
    iters = iters_per_task or config.training.iters_per_task or DEFAULT_ITERS_PER_TASK
    sched = _schedule(merge, lay.mergeable, lay.n_protected, _ald_key(config.ald), t, iters, tuple(lay.prompt_blocks))
    if keep is not None:
        if len(keep) != L:
            raise ValueError(f"count: keep: expected {L} probabilities (one per block), found {len(keep)}")
        sched = (sched[0], sched[1], tuple(float(k) for k in keep))
    eff, toks, keep = sched
    key = (sched, lay.n_protected, tuple(lay.prefix), lay.first_grad, B, D, H, _mlp(arch), num)
    blocks = _blocks(*key)

    sel = config.selection
    q, q_first, params = _query(config.backbone.name, config.backbone.img_size, sel.surrogate, sel.cache, B, num,
                                sel.query_model == "separate")
    trainable = lay.trainable(num_classes)
    states = OPTIMIZER_STATES.get(config.training.optimizer, 2)
    param_tensors = PARAM_TENSORS_HEAD + geom.param_tensors
    other = _other(config.backbone.name, config.backbone.img_size, B, num, geom.select_macs,
                   geom.launches, lay.n_prompt, lay.n_tokens, toks[-1], num_classes,
                   trainable, states, param_tensors)

    qarch = _arch(sel.surrogate, None) if sel.surrogate else arch
    counts = Counts(
        batch=B, numerics=num, blocks=list(_view(*key)) if detail else [], blocks_work=blocks.fwd + blocks.bwd + blocks.match,
        fwd=blocks.fwd, bwd=blocks.bwd, match=blocks.match, query=q, query_first_epoch=q_first, other=other,
        saved_worst=blocks.saved_worst, saved_expected=blocks.saved_expected, workspace_bytes=blocks.workspace,
        params=params, trainable=trainable, optimizer_state=states * trainable,
        input_bytes=4.0 * B * arch.in_chans * arch.img_size ** 2, width=D,
        query_shape=(qarch.embed_dim, B, float(_prefix_tokens(qarch) + qarch.num_patches())))
    counts.extras.update(tokens_first=float(toks[0]), tokens_last=float(toks[-1]),
                         blocks_expected=float(sum(keep)), merges_total=float(sum(eff)),
                         iters_per_task=float(iters))
    return counts


__all__ = ["BlockCount", "Counts", "DEFAULT_ITERS_PER_TASK", "DEFAULT_NUM_CLASSES", "DTYPE_BYTES", "count",
           "embedding", "keep_probs", "plain_forward"]
