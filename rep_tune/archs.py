"""Shapes of the ViT backbones rep-tune knows, without importing torch or timm.

The cost model needs depth, width, heads and token counts for thousands of candidates per
second; the runtime checks that the timm model it builds agrees with this table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """Shape of a plain ViT: enough to count FLOPs, bytes and tokens."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    mlp_ratio: float = 4.0
    in_chans: int = 3

    def num_patches(self, img_size: int | None = None) -> int:
        side = (img_size or self.img_size) // self.patch_size
        return side * side

    @property
    def params(self) -> int:
        """Parameter count of the blocks plus patch embedding (head excluded)."""
        d, h = self.embed_dim, int(self.embed_dim * self.mlp_ratio)
        block = 4 * d * d + 4 * d + 2 * d * h + h + d + 4 * d
        embed = self.in_chans * self.patch_size ** 2 * d + d + (self.num_patches() + 1) * d + d
        return self.depth * block + embed + 2 * d


_WIDTHS = {"pico": (64, 6, 2), "micro": (96, 12, 3), "tiny": (192, 12, 3), "small": (384, 12, 6),
           "base": (768, 12, 12), "large": (1024, 24, 16), "huge": (1280, 32, 16)}
_NAME = re.compile(r"^vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)_(?P<img>\d+)(?:\..*)?$")


def arch_of(name: str) -> ArchSpec:
    """ArchSpec of a timm ViT name such as ``vit_tiny_patch16_224`` or ``vit_micro_patch4_32.fmnist``.

    Raises KeyError naming the model when the name is not a plain ViT of a known size.
    """
    m = _NAME.match(name)
    if not m or m["size"] not in _WIDTHS:
        raise KeyError(f"unknown ViT architecture {name!r}: expected vit_<{'|'.join(_WIDTHS)}>_patch<P>_<IMG>")
    d, depth, heads = _WIDTHS[m["size"]]
    return ArchSpec(name.split(".")[0], d, depth, heads, int(m["patch"]), int(m["img"]))
