"""Shapes of the ViT backbones rep-tune can drive, without importing torch or timm.

The cost model needs depth, width, heads and token counts for thousands of candidates per
second, so ``arch_of`` answers from a table (``timm_archs.json``, next to this file) that
``scripts/make_arch_table.py`` writes by building every timm ViT-family model on the 'meta'
device and reading its modules (``rep_tune.arch_probe``). Names the table lacks (a newer timm,
a model registered by the user) are resolved the same way on first use, lazily: only then are
torch and timm imported. The runtime checks each model it builds against ``arch_of``.

A model rep-tune cannot drive (no class token, relative position bias, rotary embeddings,
windowed attention, a CNN stem, ...) is in the table with the reason; ``arch_of`` raises
``UnsupportedArch`` carrying it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "timm_archs.json"
MLP_KINDS = ("mlp", "glu")


class UnsupportedArch(KeyError, ValueError):
    """A model name rep-tune cannot use as backbone or surrogate; the message says why.

    A KeyError (unknown name, as config validation expects) and a ValueError (bad input, which
    the CLI prints without a traceback).
    """

    def __str__(self) -> str:        # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ArchSpec:
    """Shape of a plain ViT (timm ``VisionTransformer`` with standard blocks): enough to count
    FLOPs, bytes and tokens.

    Token layout: ``num_prefix_tokens`` prefix tokens (CLS, a DeiT distillation token, register
    tokens; in that order), then ``num_patches(img_size)`` patch tokens.
    MLP: ``mlp_kind`` "mlp" is fc1 (D -> mlp_hidden), activation, fc2 (mlp_hidden -> D);
    "glu" is a gated MLP whose fc1 produces 2 * mlp_hidden (SwiGLU), then fc2 (mlp_hidden -> D).
    ``base_params`` is timm's parameter count without classifier and position embedding
    (0 for a hand-written spec: ``params`` then counts a plain ViT analytically).
    """

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    mlp_ratio: float = 4.0
    in_chans: int = 3
    class_token: bool = True
    reg_tokens: int = 0
    dist_token: bool = False
    mlp_hidden: int = 0              # 0: int(embed_dim * mlp_ratio)
    mlp_kind: str = "mlp"
    layer_scale: bool = False
    pos_embed: bool = True           # learned absolute position embedding
    pos_embed_prefix: int = 1        # prefix tokens with their own position embedding (0: no_embed_class)
    base_params: int = 0

    def __post_init__(self) -> None:
        if not self.mlp_hidden:
            object.__setattr__(self, "mlp_hidden", int(self.embed_dim * self.mlp_ratio))
        if self.mlp_kind not in MLP_KINDS:
            raise ValueError(f"ArchSpec {self.name}: mlp_kind expected one of {MLP_KINDS}, found {self.mlp_kind!r}")

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches that are never merged: CLS, distillation, registers."""
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def num_patches(self, img_size: int | None = None) -> int:
        side = (img_size or self.img_size) // self.patch_size
        return side * side

    def num_tokens(self, img_size: int | None = None) -> int:
        """Sequence length entering the first block (no prompts): prefix + patches."""
        return self.num_prefix_tokens + self.num_patches(img_size)

    @property
    def mlp_fc1_out(self) -> int:
        """Output width of the first MLP matmul (gated MLPs compute value and gate together)."""
        return self.mlp_hidden * (2 if self.mlp_kind == "glu" else 1)

    @property
    def params(self) -> int:
        """Parameter count of the backbone without its classifier, at ``img_size``."""
        d = self.embed_dim
        pos = (self.num_patches() + self.pos_embed_prefix) * d if self.pos_embed else 0
        if self.base_params:
            return self.base_params + pos
        h, f = self.mlp_hidden, self.mlp_fc1_out
        block = 4 * d * d + 4 * d + d * f + f + h * d + d + 4 * d
        embed = self.in_chans * self.patch_size ** 2 * d + d + self.num_prefix_tokens * d
        return self.depth * block + embed + pos + 2 * d

    def to_dict(self) -> dict:
        """The table row of this spec (every field but the name)."""
        from dataclasses import asdict
        row = asdict(self)
        del row["name"]
        return row


@lru_cache(maxsize=1)
def _table() -> dict[str, dict]:
    """The generated shape table: arch name -> ArchSpec fields, or {"refused": reason}."""
    with open(TABLE) as f:
        return json.load(f)["archs"]


def table_names() -> list[str]:
    """Every architecture name in the generated table (accepted and refused)."""
    return sorted(_table())


def base_name(name: str) -> str:
    """timm architecture name without its pretrained tag: ``vit_base_patch16_224.augreg_in21k`` ->
    ``vit_base_patch16_224``; an ``hf-hub:`` or ``timm/`` prefix is dropped."""
    for prefix in ("hf-hub:timm/", "hf_hub:timm/", "timm/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.split(".", 1)[0]


@lru_cache(maxsize=None)
def arch_of(name: str) -> ArchSpec:
    """ArchSpec of a timm model name, tag or not (``vit_small_patch14_reg4_dinov2.lvd142m``).

    From the generated table; a name it lacks is resolved through timm itself (torch imported
    then, once per name). Raises ``UnsupportedArch`` (a KeyError) naming the model and the
    reason when rep-tune cannot drive it, or when timm has no such model.
    """
    arch = base_name(name)
    row = _table().get(arch)
    if row is None:
        from rep_tune.arch_probe import probe   # imports torch + timm: only for names off the table
        return probe(arch)
    if "refused" in row:
        raise UnsupportedArch(f"timm model {arch!r} cannot be a rep-tune backbone: {row['refused']}")
    return ArchSpec(name=arch, **row)
