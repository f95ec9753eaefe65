"""Analytic per-block counts of one REP training iteration (pure arithmetic, no torch).

Counts follow timm's ``Block`` (pre-norm attention + MLP, fused SDPA) with AToM merging
between attention and MLP, frozen weights (backward computes input gradients only) and ALD
keep probabilities. Token counts and keep probabilities come from ``rep_tune.schedule``.

FLOPs count a multiply-add as 2. "Elementwise" work is counted in bytes moved (it is
bandwidth-bound); matmul and attention work in FLOPs. ``ops`` counts kernel launches, which
dominate small blocks on CPU.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache

from rep_tune import schedule
from rep_tune.archs import ArchSpec, arch_of

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp64": 8}
DEFAULT_ITERS_PER_TASK = 1000   # task length for ALD averaging when the config has no cap
DEFAULT_NUM_CLASSES = 100       # head width when the scenario is unknown (CIFAR-100)

# Kernel launches (dispatches) per pass, counted from timm Block / ToMe merge code.
OPS_BLOCK_FWD = 15
OPS_BLOCK_BWD = 14
OPS_MERGE_FWD = 28
OPS_MERGE_BWD = 10
OPS_ITERATION = 60              # embed, selection, head, loss, backward start, optimizer step
SDPA_BWD_FACTOR = 2.5           # backward attention matmuls / forward (dQ, dK, dV, dP + recompute)

# Elements saved for backward per kept block with gradient flowing (measured with
# saved_tensors_hooks on timm 1.0 Block, frozen weights): block input (N*D), qkv (3*N*D),
# SDPA output (N*D), logsumexp (H*N), post-merge residual (N'*D), fc1 output (N'*M),
# LayerNorm mean/rstd (2*N + 2*N'); merge adds index/size tensors (~2*N').
SAVED_PER_ND = 5.0
SAVED_PER_NPD = 1.0
SAVED_PER_NPM = 1.0


@dataclass
class BlockCount:
    """One block of the update backbone in one training iteration (batch included)."""

    index: int
    tokens: float            # expected tokens entering the block when it runs (attention runs over these)
    tokens_mlp: float        # after AToM's merges (MLP runs over these)
    kv_len: float            # attention key length (tokens + DualPrompt prefix)
    merges: int              # pairs merged in this block
    keep: float              # probability that ALD runs this block
    grad: bool               # gradient flows through this block (a prompt is at or before it)
    fwd: tuple[float, float, float]     # (matmul FLOPs, attention FLOPs, elementwise bytes)
    bwd: tuple[float, float, float]     # same for backward (zeros when grad is False)
    match: tuple[float, float, float]   # AToM matching + merge, forward and backward
    ops: float               # kernel launches when the block runs
    saved_bytes: float       # activations kept for backward when the block runs (all merges made)


@dataclass
class Counts:
    """Everything the latency and memory models need for one config at one batch size.

    Work tuples are (matmul FLOPs, attention FLOPs, elementwise bytes). ``work``/``ops`` are the
    expected totals of one iteration under ALD (each block weighted by its keep probability),
    without the selection query, which is in ``query`` (steady state) and ``query_first_epoch``.
    """

    batch: int
    dtype_bytes: int
    blocks: list[BlockCount]
    work: tuple[float, float, float]
    ops: float
    fwd: tuple[float, float, float]          # expected forward work of the blocks
    bwd: tuple[float, float, float]          # expected backward work of the blocks
    match: tuple[float, float, float]        # expected AToM work
    query: tuple[float, float, float]
    query_first_epoch: tuple[float, float, float]
    query_ops: float
    query_ops_first_epoch: float
    other: tuple[float, float, float]        # patch embedding, selection, head, optimizer
    other_ops: float
    saved_worst: float                       # activation bytes, every droppable block running
    saved_expected: float                    # keep-weighted activation bytes
    params: float                            # frozen backbone + surrogate parameters (elements)
    trainable: float                         # prompts + keys + head (elements)
    optimizer_state: float                   # elements (Adam: 2 per trainable)
    input_bytes: float
    transient_elems: float                   # largest per-op workspace (elements)
    extras: dict[str, float] = field(default_factory=dict)


def block_flops(B: int, N: int, Np: int, K: int, D: int, H: int, M: int, s: int
                ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(forward, backward-to-input) of one timm Block: N tokens in attention, Np in the MLP, K keys.

    Returns (matmul FLOPs, attention FLOPs, elementwise bytes) for each direction.
    """
    mm = 2.0 * B * (N * 4 * D * D + Np * 2 * D * M)             # qkv (3DD) + proj (DD); fc1 + fc2
    att = 4.0 * B * N * K * D + 5.0 * B * H * N * K              # QK^T, AV; softmax
    ew = s * B * (N * D * 7 + Np * D * 5 + Np * M * 2)            # LN1, add, head transpose; LN2, add; GELU
    fwd = (mm, att, ew)
    bwd = (mm, SDPA_BWD_FACTOR * att, s * B * (N * D * 10 + Np * D * 8 + Np * M * 3))
    return fwd, bwd


def match_flops(B: int, N: int, Np: int, Ne: int, D: int, s: int) -> tuple[float, float, float]:
    """AToM bipartite soft matching of Ne eligible tokens (N -> Np), forward and backward."""
    if N == Np:
        return (0.0, 0.0, 0.0)
    na, nb = (Ne + 1) // 2, Ne // 2
    mm = 2.0 * B * na * nb * D                                  # cosine scores A x B
    ew = s * B * (3 * N * D + 2 * na * nb + 6 * N * D + 4 * Np * D)   # metric, max/argsort, weighted merge, bwd
    return (mm, 0.0, ew)


def plain_forward(arch: ArchSpec, B: int, N: int, s: int) -> tuple[tuple[float, float, float], float]:
    """No-grad forward of a whole plain ViT (the selection query): work and launches."""
    fwd, _ = block_flops(B, N, N, N, arch.embed_dim, arch.num_heads, int(arch.embed_dim * arch.mlp_ratio), s)
    emb = 2.0 * B * (N - 1) * arch.in_chans * arch.patch_size ** 2 * arch.embed_dim
    L = arch.depth
    return (L * fwd[0] + emb, L * fwd[1], L * fwd[2] + s * B * N * arch.embed_dim * 3), L * OPS_BLOCK_FWD + 8


def head_params(D: int, num_classes: int) -> int:
    return D * num_classes + num_classes


@lru_cache(maxsize=256)
def _arch(name: str, img_size: int | None) -> ArchSpec:
    """ArchSpec of a timm name at an input size (as BackboneConfig.arch), memoised."""
    a = arch_of(name)
    return dataclasses.replace(a, img_size=img_size) if img_size else a


def keep_probs(config, merge: list[int], mergeable: int, *, t: int | None, iters: int) -> list[float]:
    """ALD keep probability per block: at iteration t, or averaged over a task of ``iters``."""
    d = config.ald
    return list(_schedule(tuple(merge), mergeable, 0, _ald_key(d), t, iters,
                          tuple(config.layout().prompt_blocks))[2])


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


@lru_cache(maxsize=4096)
def _token_sums(sched: tuple, n_prot: int, prefix: tuple, first_grad: int) -> tuple[float, ...]:
    """Keep-weighted token sums of one schedule: the work of every block is linear in them.

    (sN, sNp, sNK, gN, gNp, gNK, mN, mNp, mAB, ops, worst n0, worst m0, worst prefix-kv,
     expected n0, expected m0, expected prefix-kv); g* over blocks with gradient, m* over merging
    blocks; n0/m0 are the all-blocks-run token counts that memory uses.
    """
    eff, toks, keep = sched
    u = 0.0               # expected tokens not merged because ALD skipped the block that merges them
    sN = skr = sNK = gN = gkr = gNK = mN = mkr = mAB = ops_t = 0.0
    wn = wr = wp = en = ekr = ep = 0.0
    fwd_ops, bwd_ops = OPS_BLOCK_FWD, OPS_BLOCK_BWD
    merge_fwd, merge_bwd = OPS_MERGE_FWD, OPS_MERGE_BWD
    for i, (r, k, n0, pre) in enumerate(zip(eff, keep, toks, prefix)):
        N = n0 + u                        # expected tokens entering block i (a skipped block merges nothing)
        kN = k * N
        kNK = kN * (N + pre)
        sN += kN
        sNK += kNK
        kr = k * r
        ops = fwd_ops
        if r:
            skr += kr
            ne = N - n_prot
            mN += kN
            mkr += kr
            mAB += k * ((ne + 1) // 2) * (ne // 2)
            ops += merge_fwd
            u += r - kr
        if i >= first_grad:
            gN += kN
            gkr += kr
            gNK += kNK
            ops += bwd_ops + (merge_bwd if r else 0)
            pk = n0 + pre if pre else 0
            if k > 0:
                wn += n0
                wr += r
                wp += pk
            en += k * n0
            ekr += kr
            ep += k * pk
        ops_t += k * ops
    return sN, sN - skr, sNK, gN, gN - gkr, gNK, mN, mN - mkr, mAB, ops_t, wn, wn - wr, wp, en, en - ekr, ep


def count(config, *, batch: int | None = None, dtype: str = "fp32", t: int | None = None,
          iters_per_task: int | None = None, num_classes: int = DEFAULT_NUM_CLASSES, detail: bool = True) -> Counts:
    """Counts of one training iteration of ``config`` at ``batch`` (default: its batch size).

    ``detail`` keeps the per-block BlockCount list (the prediction hot path does without it).
    """
    B = batch or config.training.batch_size
    s = DTYPE_BYTES.get(dtype, 4)
    arch = _arch(config.backbone.name, config.backbone.img_size)
    D, H, L = arch.embed_dim, arch.num_heads, arch.depth
    M = int(D * arch.mlp_ratio)
    lay = config.layout()
    patches = arch.num_patches()
    n_prot, mergeable = lay.n_protected, lay.mergeable
    merge = tuple(config.atom.schedule(L))
    iters = iters_per_task or config.training.iters_per_task or DEFAULT_ITERS_PER_TASK
    sched = _schedule(merge, mergeable, n_prot, _ald_key(config.ald), t, iters, tuple(lay.prompt_blocks))
    eff, toks, keep = sched
    prefix, first_grad = list(lay.prefix), lay.first_grad

    zero = (0.0, 0.0, 0.0)
    (sN, sNp, sNK, gN, gNp, gNK, mN, mNp, mAB, ops_t, wn, wm, wp, en, em, ep) = _token_sums(
        sched, n_prot, tuple(prefix), first_grad)
    per_n0, per_m0, per_kv = s * B * (SAVED_PER_ND * D + H + 2), s * B * (SAVED_PER_NPD * D + SAVED_PER_NPM * M + 4), s * B * 2 * D
    sw = per_n0 * wn + per_m0 * wm + per_kv * wp
    se = per_n0 * en + per_m0 * em + per_kv * ep
    blocks: list[BlockCount] = []
    if detail:                            # per-block view of the same numbers (CLI table, tests)
        unmerged = 0.0
        for i in range(L):
            r, k, n0, pre = eff[i], keep[i], toks[i], prefix[i]
            N = n0 + unmerged
            grad = i >= first_grad
            fwd, bwd = block_flops(B, N, N - r, N + pre, D, H, M, s)
            mt = match_flops(B, N, N - r, N - n_prot, D, s)
            ops = OPS_BLOCK_FWD + (OPS_MERGE_FWD if r else 0) + (OPS_BLOCK_BWD + (OPS_MERGE_BWD if r else 0)) * grad
            saved = (per_n0 * n0 + per_m0 * (n0 - r) + (per_kv * (n0 + pre) if pre else 0)) if grad else 0.0
            blocks.append(BlockCount(i, N, N - r, N + pre, r, k, grad, fwd, bwd if grad else zero, mt, ops, saved))
            unmerged += (1.0 - k) * r
    a_mm, a_mlp, a_att = 8.0 * B * D * D, 4.0 * B * D * M, 4.0 * B * D + 5.0 * B * H
    fwd_t = (a_mm * sN + a_mlp * sNp, a_att * sNK, s * B * (7 * D * sN + (5 * D + 2 * M) * sNp))
    bwd_t = (a_mm * gN + a_mlp * gNp, SDPA_BWD_FACTOR * a_att * gNK, s * B * (10 * D * gN + (8 * D + 3 * M) * gNp))
    match_t = (2.0 * B * D * mAB, 0.0, s * B * (9 * D * mN + 2 * mAB + 4 * D * mNp))
    fm, fa, fe = fwd_t
    bm, ba, be = bwd_t
    mm_, me = match_t[0], match_t[2]
    work = (fm + bm + mm_, fa + ba, fe + be + me)

    # selection query: surrogate forward (cacheable), or the backbone's own plain forward (baseline)
    sel = config.selection
    if sel.surrogate:
        sarch = _arch(sel.surrogate, None)
        q_first, q_ops_first = plain_forward(sarch, B, 1 + sarch.num_patches(), s)
        q, q_ops = (zero, 0.0) if sel.cache else (q_first, q_ops_first)
        s_params = sarch.params
    else:
        q_first, q_ops_first = plain_forward(arch, B, 1 + patches, s)
        q, q_ops = q_first, q_ops_first
        s_params = 0

    emb = 2.0 * B * patches * arch.in_chans * arch.patch_size ** 2 * D
    trainable = lay.trainable(num_classes)
    other_mm = emb + 2.0 * B * D * num_classes * 3 + 2.0 * B * lay.geometry.select_macs * 2
    other_ew = s * (B * toks[0] * D * 4 + 16 * trainable)        # embed+pos+concat; Adam step
    n_max = toks[0]
    transient = B * max(n_max * M, H * n_max * (n_max + max(prefix)), 3 * n_max * D) * 2

    counts = Counts(
        batch=B, dtype_bytes=s, blocks=blocks, work=work, ops=ops_t, fwd=(fm, fa, fe), bwd=(bm, ba, be),
        match=(mm_, 0.0, me), saved_worst=sw, saved_expected=se, query=q, query_first_epoch=q_first, query_ops=q_ops,
        query_ops_first_epoch=q_ops_first, other=(other_mm, 0.0, other_ew), other_ops=OPS_ITERATION,
        params=arch.params + s_params, trainable=trainable,
        optimizer_state=(1 if config.training.optimizer == "sgd" else 2) * trainable,
        input_bytes=4.0 * B * arch.in_chans * arch.img_size ** 2, transient_elems=transient)
    counts.extras.update(tokens_first=float(toks[0]), tokens_last=float(toks[-1]),
                         blocks_expected=float(sum(keep)), merges_total=float(sum(eff)),
                         iters_per_task=float(iters))
    return counts
