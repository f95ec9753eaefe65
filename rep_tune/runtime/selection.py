"""Swift prompt selection: the surrogate's CLS query, its fixed projection, and a per-sample cache.

The query depends on the input image alone (the surrogate is frozen), so with a deterministic
input pipeline it is computed once per sample per process and reused across epochs and across
every configuration sharing the surrogate. With random augmentation the cache would return the
query of some earlier view: callers must then bypass it (pass no cache).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from timm.models.vision_transformer import VisionTransformer


@torch.no_grad()
def cls_feature(vit: VisionTransformer, x: Tensor) -> Tensor:
    """(B, D) CLS feature after the final norm of a frozen ViT (resizes x to its input size)."""
    size = tuple(vit.patch_embed.img_size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return vit.forward_features(x)[:, 0]


def projection(d: int, D: int, seed: int) -> Tensor:
    """Fixed random projection (d, D), Gaussian N(0, 1/D); bit-identical for the same seed.

    Drawn on the CPU from its own generator, so neither the global RNG nor the device changes it.
    """
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(d, D, generator=g, dtype=torch.float32) / D ** 0.5


def file_stamp(path: str | Path | None) -> tuple | None:
    """(resolved path, mtime ns, size) of a weights file: a file rewritten in place gets a new stamp."""
    if not path:
        return None
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        return (str(p), None, None)
    return (str(p), st.st_mtime_ns, st.st_size)


def surrogate_identity(role: str, name: str, pretrained: bool, checkpoint: str | None, *extra: Hashable) -> tuple:
    """The query cache's key for the model computing the query: its name, weights and their file stamp.

    The stamp covers a local checkpoint, and the committed weights of an embedded model, so a
    checkpoint rewritten in place (same path, new contents) never serves stale queries.
    """
    weights = checkpoint
    if weights is None and pretrained:
        from rep_tune.runtime.backbone import embedded_weights
        weights = embedded_weights(name)
    return (role, name, pretrained, checkpoint, file_stamp(weights), *extra)


class QueryCache:
    """Raw surrogate features per (surrogate identity, dataset key, sample id), kept on the CPU.

    Valid only for a deterministic input pipeline: the same sample id must always mean the same
    image tensor. ``hits`` and ``misses`` count samples served from / added to the cache.
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[Hashable, Hashable], dict[int, Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self._rows.values())

    def clear(self) -> None:
        self._rows.clear()
        self.hits = self.misses = 0

    def features(self, surrogate: Hashable, dataset: Hashable, ids: Sequence[int] | Tensor, x: Tensor,
                 compute: Callable[[Tensor], Tensor]) -> Tensor:
        """(B, d) features of the batch ``x``: cached rows, computing ``compute(x[miss])`` for the rest."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        if len(ids) != x.shape[0]:
            raise ValueError(f"QueryCache: {len(ids)} sample ids for a batch of {x.shape[0]} images")
        table = self._rows.setdefault((surrogate, dataset), {})
        miss = [j for j, i in enumerate(ids) if i not in table]
        if miss:
            fresh = compute(x[miss] if len(miss) < len(ids) else x).detach()
            for j, row in zip(miss, fresh.to("cpu")):
                table[ids[j]] = row.clone()
        self.misses += len(miss)
        self.hits += len(ids) - len(miss)
        return torch.stack([table[i] for i in ids]).to(x.device)


_PROCESS_CACHE = QueryCache()


def process_cache() -> QueryCache:
    """The one QueryCache of this process (shared by every RepModel and trial)."""
    return _PROCESS_CACHE
