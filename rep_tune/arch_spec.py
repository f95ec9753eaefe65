"""The shape of a ViT backbone (``ArchSpec``) and the error for one rep-tune cannot drive.

A value module with no imports of its own: ``rep_tune.archs`` (the table of known shapes) and
``rep_tune.arch_probe`` (reading a shape off a timm model) both build on it, so neither imports
the other at module level.
"""
from __future__ import annotations

from dataclasses import dataclass

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
