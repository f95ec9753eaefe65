"""The arithmetic of a ViT training iteration, written once: the ``Work`` value type and the
per-block formulas that produce it (time and memory), used by ``counts`` (configs),
``calibrate`` (timed block runs) and ``benchmarks/bench_cost_model.py``.

``Work`` holds what a piece of computation costs in the units the latency model prices
(``rep_tune.cost.latency``): matmul FLOPs and attention FLOPs (a multiply-add counts 2), bytes
of elementwise traffic (bandwidth-bound ops: LayerNorm, adds, GELU, casts, merges), and kernel
launches (which dominate small blocks on CPUs and Jetsons). Works add and scale by a number, so
an iteration's expected work is ``sum(keep_l * block_l) + rest``.

Numerics (``training.precision``): fp32 runs everything in fp32. bf16/fp16 run under autocast
(the runtime's mixed precision): the frozen backbone's weights stay fp32 parameters and are cast
to the compute dtype per op, matmul/attention operands and outputs are in the compute dtype,
while the residual stream, LayerNorm and every trainable parameter (with its gradient and
optimizer state) stay fp32. With frozen weights, a linear layer saves for backward the weight it
multiplied by, so under autocast each block with a gradient keeps a compute-dtype copy of its
matmul weights until backward. A calibration run (``rep-tune profile``) runs a block converted
to its dtype as a whole (``Numerics.pure``), or an fp32 block under autocast when it records so.

Counts follow timm's ``Block`` (pre-norm attention + MLP, fused SDPA) and rep_tune's AToM
merge between attention and MLP; launches and saved tensors were counted on timm 1.0 blocks.
Pure Python, no torch: the search prices thousands of candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, NamedTuple

# Kernel launches (top-level aten dispatches, views included: each costs a dispatch) per pass of
# one block, counted with torch.profiler on timm 1.0's Block and rep_tune's block_forward.
LAUNCHES_BLOCK_FWD = 18
LAUNCHES_BLOCK_BWD = 28
LAUNCHES_METRIC = 1           # the runtime's AToM key metric (k.mean over heads), every block
LAUNCHES_MERGE_FWD = 43
LAUNCHES_MERGE_BWD = 16
LAUNCHES_PREFIX_FWD = 6       # key/value prefix cast and concatenation
LAUNCHES_PREFIX_BWD = 8
LAUNCHES_AUTOCAST_FWD = 5     # casts autocast inserts (CPU, timm 1.0 Block)
LAUNCHES_AUTOCAST_BWD = 0
LAUNCHES_EAGER_FWD = 3        # eager attention: scale, softmax, the second matmul apart from SDPA's one
LAUNCHES_EAGER_BWD = 4
SDPA_BWD_FACTOR = 2.5         # backward attention FLOPs / forward (dQ, dK, dV, dP + recompute)


class Work(NamedTuple):
    """Cost of a piece of computation in the latency model's units; adds, scales by a number.

    An immutable value (a NamedTuple: cheap to build, which the search's pre-screening needs).
    """

    matmul_flops: float = 0.0
    attention_flops: float = 0.0
    elementwise_bytes: float = 0.0
    launches: float = 0.0

    def __add__(self, other: "Work") -> "Work":           # type: ignore[override]
        return _new(Work, (self[0] + other[0], self[1] + other[1], self[2] + other[2], self[3] + other[3]))

    def __mul__(self, k: float) -> "Work":                # type: ignore[override]
        return _new(Work, (self[0] * k, self[1] * k, self[2] * k, self[3] * k))

    __rmul__ = __mul__

    @property
    def flops(self) -> float:
        """Matmul + attention FLOPs."""
        return self[0] + self[1]

    @staticmethod
    def total(works: Iterable["Work"]) -> "Work":
        """Sum of an iterable of Works (``Work()`` when empty)."""
        a = b = c = d = 0.0
        for w in works:
            a, b, c, d = a + w[0], b + w[1], c + w[2], d + w[3]
        return _new(Work, (a, b, c, d))

    @staticmethod
    def weighted(pairs: Iterable[tuple[float, "Work"]]) -> "Work":
        """sum(k * w) over (k, w) pairs, without intermediate Works (the hot path's sum over blocks)."""
        a = b = c = d = 0.0
        for k, w in pairs:
            a, b, c, d = a + k * w[0], b + k * w[1], c + k * w[2], d + k * w[3]
        return _new(Work, (a, b, c, d))


_new = tuple.__new__
ZERO = Work()

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp64": 8}


@dataclass(frozen=True, slots=True)
class Numerics:
    """How the runtime computes a block: bytes per element of one precision, compute (matmul
    operands/outputs) and stream (residual stream, LayerNorm, parameters); whether frozen fp32
    weights are cast per op (autocast); whether attention is written out (``eager``: the
    probabilities are materialised and kept for backward) or fused (SDPA: a logsumexp is kept)."""

    dtype: str
    compute_bytes: int
    stream_bytes: int
    autocast: bool
    eager: bool = False

    @staticmethod
    @lru_cache(maxsize=16)
    def of(precision: str, attention: str = "fused") -> "Numerics":
        """A training precision as the runtime runs it: fp32 plain, bf16/fp16 under autocast;
        ``attention`` = the config's ``backbone.attention``."""
        s = DTYPE_BYTES.get(precision, 4)
        return Numerics(precision, s, 4, s != 4, attention == "eager")

    @staticmethod
    def pure(dtype: str) -> "Numerics":
        """A model converted to ``dtype`` as a whole (the profiler's calibration runs)."""
        s = DTYPE_BYTES.get(dtype, 4)
        return Numerics(dtype, s, s, False)


class BlockShape(NamedTuple):
    """One block run over a batch: ``tokens`` in attention, ``tokens_mlp`` after merging, ``kv_len``
    attention keys (tokens + prefix), widths of the MLP (fc1 output ``mlp_out``; fc2 input
    ``mlp_hidden``: equal for a plain MLP, ``mlp_out = 2 * mlp_hidden`` for a gated one)."""

    batch: float
    tokens: float
    tokens_mlp: float
    kv_len: float
    dim: int
    heads: int
    mlp_out: int
    mlp_hidden: int

    @property
    def weight_elems(self) -> float:
        """Matmul weights of the block: qkv (3DD) + proj (DD) + fc1 (D x mlp_out) + fc2 (mlp_hidden x D)."""
        D = self.dim
        return 4.0 * D * D + D * (self.mlp_out + self.mlp_hidden)


def block_forward(s: BlockShape, n: Numerics, atom_metric: bool = True) -> Work:
    """Forward of one block (attention, merge excluded, MLP). ``atom_metric``: the runtime's block
    also averages the keys over heads (AToM's matching metric); timm's own Block does not."""
    B, N, Np, K, D, H = s.batch, s.tokens, s.tokens_mlp, s.kv_len, s.dim, s.heads
    mm = 2.0 * B * (N * 4 * D * D + Np * D * (s.mlp_out + s.mlp_hidden))   # qkv + proj; fc1 + fc2
    att = 4.0 * B * N * K * D + 5.0 * B * H * N * K                         # QK^T, AV; softmax
    # stream: LN1 (2ND), residual add (2ND); LN2, add (2N'D + 2N'D). compute: the add's attention
    # operand (ND), head transpose (2ND), metric (ND); the add's MLP operand (N'D), GELU (2N'h).
    ew = (n.stream_bytes * B * (4 * N * D + 4 * Np * D)
          + n.compute_bytes * B * ((3 + atom_metric) * N * D + Np * D + 2 * Np * s.mlp_hidden))
    launches = LAUNCHES_BLOCK_FWD + LAUNCHES_METRIC * atom_metric
    if n.eager:      # scaled q (2ND); logits written, read by softmax, probabilities written, read by AV
        ew += n.compute_bytes * B * (2 * N * D + 4 * H * N * K)
        launches += LAUNCHES_EAGER_FWD
    if K > N:        # prefix keys/values concatenated to the block's own
        ew += n.compute_bytes * B * 4 * K * D
        launches += LAUNCHES_PREFIX_FWD
    if n.autocast:   # LayerNorm outputs cast to the compute dtype, each weight cast per call
        ew += (n.stream_bytes + n.compute_bytes) * (B * (N + Np) * D + s.weight_elems)
        launches += LAUNCHES_AUTOCAST_FWD
    return Work(mm, att, ew, launches)


def block_backward(s: BlockShape, n: Numerics) -> Work:
    """Backward of one block to its input (frozen weights: one matmul per linear, no weight grads)."""
    B, N, Np, K, D, H = s.batch, s.tokens, s.tokens_mlp, s.kv_len, s.dim, s.heads
    mm = 2.0 * B * (N * 4 * D * D + Np * D * (s.mlp_out + s.mlp_hidden))
    att = SDPA_BWD_FACTOR * (4.0 * B * N * K * D + 5.0 * B * H * N * K)
    # stream: LayerNorm backward and residual gradients (7ND + 5N'D); compute: transpose, GELU (3ND + 3N'D + 3N'h)
    ew = (n.stream_bytes * B * (7 * N * D + 5 * Np * D)
          + n.compute_bytes * B * (3 * N * D + 3 * Np * D + 3 * Np * s.mlp_hidden))
    launches = LAUNCHES_BLOCK_BWD
    if n.eager:      # dP written and read, softmax backward reads P and dP, writes dS; scale (2ND)
        ew += n.compute_bytes * B * (2 * N * D + 5 * H * N * K)
        att = 4.0 * B * N * K * D + 5.0 * B * H * N * K      # two matmuls per product, no recompute
        launches += LAUNCHES_EAGER_BWD
    if K > N:        # gradient split back into prefix and block keys/values
        ew += n.compute_bytes * B * 2 * K * D
        launches += LAUNCHES_PREFIX_BWD
    if n.autocast:   # gradients cast between the compute dtype and the fp32 stream
        ew += (n.stream_bytes + n.compute_bytes) * B * (N + Np) * D
        launches += LAUNCHES_AUTOCAST_BWD
    return Work(mm, att, ew, launches)


def merge_work(s: BlockShape, eligible: float, n: Numerics, backward: bool) -> Work:
    """AToM's bipartite matching of ``eligible`` tokens (tokens -> tokens_mlp), with its backward."""
    if s.tokens == s.tokens_mlp:
        return ZERO
    B, N, Np, D = s.batch, s.tokens, s.tokens_mlp, s.dim
    na, nb = (eligible + 1) // 2, eligible // 2
    mm = 2.0 * B * na * nb * D                                              # cosine scores A x B
    # metric normalise (3ND), score max/argsort (2 na nb), size-weighted gather/scatter/divide (6ND)
    ew = n.compute_bytes * B * 2 * na * nb + n.stream_bytes * B * 9 * N * D
    launches = LAUNCHES_MERGE_FWD
    if backward:     # gradient through the gather/scatter
        ew += n.stream_bytes * B * 4 * Np * D
        launches += LAUNCHES_MERGE_BWD
    return Work(mm, 0.0, ew, launches)


def block_saved_bytes(s: BlockShape, n: Numerics, prefix: float = 0.0, eligible: float = 0.0) -> float:
    """Bytes a block with a gradient keeps for backward (measured with saved_tensors_hooks on timm
    1.0's Block, frozen weights): block input and LayerNorm statistics (stream), qkv and the SDPA
    output (compute), logsumexp (fp32), post-merge residual (stream), fc1 output (compute), merge
    indices; the merge's size-weighted input of ``eligible`` tokens (gather saves its source); the
    concatenated keys/values when a prefix is prepended; the compute-dtype weight copies under
    autocast. Frozen fp32 weights saved by their matmuls are parameters (resident), not counted."""
    B, N, Np, D, H = s.batch, s.tokens, s.tokens_mlp, s.dim, s.heads
    out = B * (N * (n.stream_bytes * (D + 2) + n.compute_bytes * 4 * D + 4 * H)
               + Np * (n.stream_bytes * (D + 4) + n.compute_bytes * s.mlp_out))
    if Np < N:
        out += n.stream_bytes * B * eligible * D
    if prefix:
        out += n.compute_bytes * B * 2 * D * (N + prefix)
    if n.autocast:
        out += n.compute_bytes * s.weight_elems
    if n.eager:      # the probabilities (B H N K) instead of the logsumexp; the scaled q the first
        # matmul saves takes the place of the SDPA output (the second matmul's output is not saved).
        # Measured on CPU (torch 2.14, embedded ViT, batch 16): +93 MiB against +108 predicted.
        out += n.compute_bytes * B * H * N * s.kv_len - 4 * B * H * N
    return out


def block_workspace_bytes(s: BlockShape, n: Numerics) -> float:
    """Transient of one block's backward beyond its saved activations (a temporary and its gradient):
    MLP hidden, attention scores, or the qkv projection. The iteration's peak memory is reached
    when backward starts in the last block that runs (every activation still saved)."""
    B, N, K = s.batch, s.tokens, s.kv_len
    return n.compute_bytes * B * max(N * s.mlp_out, s.heads * N * K, 3 * N * s.dim) * 2
