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
# prompt selection and assembly, forward and backward, when the method's geometry does not say
# (``PromptGeometry.launches``); optimizer step + gradient clipping per trainable tensor (single-
# tensor loops on CPU), the method's tensors from ``PromptGeometry.param_tensors`` when it says.
LAUNCHES_ITERATION = 64
LAUNCHES_PROMPT = 30
LAUNCHES_PARAM = 10
PARAM_TENSORS_HEAD = 2
PARAM_TENSORS_PROMPT = 2
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
    workspace_bytes: float                   # largest per-op transient
    params: float                            # frozen backbone + surrogate parameters and buffers (elements)
    trainable: float                         # prompts + keys + head (elements)
    optimizer_state: float                   # elements (Adam: 2 per trainable)
    input_bytes: float
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
    return (d.theta_min, d.gamma, d.tau, d.alpha, d.schedule) if d.enabled else None


@lru_cache(maxsize=4096)
def _schedule(merge: tuple, mergeable: int, n_prot: int, ald: tuple | None, t: int | None, iters: int,
              protected: tuple) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """(effective merges, tokens entering each block, keep probabilities), from rep_tune.schedule."""
    eff = schedule.effective_merges(merge, mergeable)
    toks = schedule.tokens_per_block(n_prot, mergeable, merge)
    if ald is None:
        keep = [1.0] * len(merge)
    elif t is not None:
        keep = schedule.keep_probabilities(t, merge, mergeable, *ald[:4], protected, kind=ald[4])
    else:
        keep = schedule.mean_keep_probabilities(iters, merge, mergeable, *ald[:4], protected, kind=ald[4])
    return tuple(eff), tuple(toks), tuple(keep)


@dataclass(frozen=True)
class _Blocks:
    fwd: Work
    bwd: Work
    match: Work
    saved_worst: float
    saved_expected: float
    workspace: float


@lru_cache(maxsize=4096)
def _blocks(sched: tuple, n_prot: int, prefix: tuple, first_grad: int, B: int, D: int, H: int, mlp: tuple,
            numerics: Numerics) -> tuple[_Blocks, tuple[BlockCount, ...]]:
    """Keep-weighted block work of one schedule at one shape, and the per-block view.

    A block ALD skips merges nothing: the tokens it would have merged reach the next blocks
    (``unmerged``, in expectation). Memory counts the scheduled tokens (every block running).
    """
    eff, toks, keep = sched
    f_out, hidden = mlp
    fwd = bwd = match = ZERO
    saved_w = saved_e = workspace = 0.0
    unmerged = 0.0
    view = []
    for i, (r, k, n0, pre) in enumerate(zip(eff, keep, toks, prefix)):
        N = n0 + unmerged
        grad = i >= first_grad
        shape = BlockShape(B, N, N - r, N + pre, D, H, f_out, hidden)
        bf = block_forward(shape, numerics)
        bb = block_backward(shape, numerics) if grad else ZERO
        bm = merge_work(shape, N - n_prot, numerics, grad)
        fwd, bwd, match = fwd + k * bf, bwd + k * bb, match + k * bm
        planned = BlockShape(B, n0, n0 - r, n0 + pre, D, H, f_out, hidden)
        saved = block_saved_bytes(planned, numerics, pre, n0 - n_prot) if grad else 0.0
        if k > 0:
            saved_w += saved
        saved_e += k * saved
        workspace = max(workspace, block_workspace_bytes(planned, numerics))
        view.append(BlockCount(i, N, N - r, N + pre, r, k, grad, bf, bb, bm, saved))
        unmerged += (1.0 - k) * r
    return _Blocks(fwd, bwd, match, saved_w, saved_e, workspace), tuple(view)


def count(config, *, batch: int | None = None, t: int | None = None, iters_per_task: int | None = None,
          num_classes: int = DEFAULT_NUM_CLASSES, precision: str | None = None, detail: bool = True) -> Counts:
    """Counts of one training iteration of ``config`` at ``batch`` (default: its batch size).

    ``precision`` overrides ``training.precision`` (fp32 | bf16 | fp16). ALD keep probabilities
    at iteration ``t``, or averaged over a task of ``iters_per_task`` iterations (default: the
    config's cap, else 1000). ``detail`` keeps the per-block list (the CLI table and tests).
    """
    B = batch or config.training.batch_size
    num = Numerics.of(precision or config.training.precision)
    arch = _arch(config.backbone.name, config.backbone.img_size)
    D, H, L = arch.embed_dim, arch.num_heads, arch.depth
    lay = config.layout()
    geom = lay.geometry
    merge = tuple(config.atom.schedule(L))
    iters = iters_per_task or config.training.iters_per_task or DEFAULT_ITERS_PER_TASK
    sched = _schedule(merge, lay.mergeable, lay.n_protected, _ald_key(config.ald), t, iters, tuple(lay.prompt_blocks))
    eff, toks, keep = sched
    blocks, view = _blocks(sched, lay.n_protected, tuple(lay.prefix), lay.first_grad, B, D, H, _mlp(arch), num)

    # the selection query: a surrogate's forward (cacheable) or the backbone's own plain forward
    sel = config.selection
    if sel.surrogate:
        sarch = _arch(sel.surrogate, None)
        q_first = plain_forward(sarch, B, num)
        if sarch.img_size != arch.img_size:          # the input is resized to the surrogate's size
            q_first = q_first + Work(0.0, 0.0, num.stream_bytes * B * arch.in_chans
                                     * (arch.img_size ** 2 + sarch.img_size ** 2), 1)
        q = ZERO if sel.cache else q_first
        s_params = sarch.params + (sarch.embed_dim * D if sarch.embed_dim != D else 0)   # + projection
    else:
        q = q_first = plain_forward(arch, B, num)
        s_params = 0

    trainable = lay.trainable(num_classes)
    states = OPTIMIZER_STATES.get(config.training.optimizer, 2)
    param_tensors = PARAM_TENSORS_HEAD + getattr(geom, "param_tensors", PARAM_TENSORS_PROMPT)
    n_last = toks[-1]
    other = (embedding(arch, B, num)
             + Work(2.0 * B * geom.select_macs * 2,                                     # selection, fwd + bwd
                    0.0, num.stream_bytes * B * (lay.n_prompt + (2 * lay.n_tokens if lay.n_prompt else 0)) * D,
                    getattr(geom, "launches", LAUNCHES_PROMPT))                         # prompt gather + concat
             + Work(2.0 * B * D * num_classes * 3,                                      # head fwd, bwd input + weight
                    0.0, num.stream_bytes * B * n_last * D * 4, LAUNCHES_ITERATION)     # final norm fwd + bwd
             + Work(0.0, 0.0, 4.0 * (6 + 5 * states) * trainable,                      # clip + optimizer (fp32)
                    LAUNCHES_PARAM * param_tensors))

    counts = Counts(
        batch=B, numerics=num, blocks=list(view) if detail else [], blocks_work=blocks.fwd + blocks.bwd + blocks.match,
        fwd=blocks.fwd, bwd=blocks.bwd, match=blocks.match, query=q, query_first_epoch=q_first, other=other,
        saved_worst=blocks.saved_worst, saved_expected=blocks.saved_expected, workspace_bytes=blocks.workspace,
        params=arch.params + s_params, trainable=trainable, optimizer_state=states * trainable,
        input_bytes=4.0 * B * arch.in_chans * arch.img_size ** 2)
    counts.extras.update(tokens_first=float(toks[0]), tokens_last=float(n_last),
                         blocks_expected=float(sum(keep)), merges_total=float(sum(eff)),
                         iters_per_task=float(iters))
    return counts


__all__ = ["BlockCount", "Counts", "DEFAULT_ITERS_PER_TASK", "DEFAULT_NUM_CLASSES", "DTYPE_BYTES", "count",
           "embedding", "keep_probs", "plain_forward"]
