"""The token layout of a REP forward pass: one function, used by the runtime and the cost model.

Sequence entering block 0: ``[prefix tokens (CLS, registers) | prompt tokens | patches]``.
``n_protected`` leading tokens never merge (the prefix tokens, and the prompt tokens when
``atom.protect_prompts``); the rest are ``mergeable``. Prefix-tuning methods add ``prefix[l]``
keys/values inside block l's attention instead of tokens. ``prompt_blocks`` never drop under
ALD; gradients flow from ``first_grad`` on. Torch-free: the cost model prices thousands of
layouts a second, and the runtime checks the module it builds against the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

from rep_tune.methods import PromptGeometry, get_method


@dataclass(frozen=True)
class TokenLayout:
    """Token counts of one config's forward pass (per sample)."""

    n_prefix: int                 # CLS + register tokens (timm's num_prefix_tokens)
    n_prompt: int                 # prompt tokens in the sequence
    n_patches: int
    protect_prompts: bool
    geometry: PromptGeometry
    embed_dim: int
    depth: int

    @property
    def n_tokens(self) -> int:
        """Tokens entering block 0."""
        return self.n_prefix + self.n_prompt + self.n_patches

    @property
    def n_protected(self) -> int:
        """Leading tokens that never merge."""
        return self.n_prefix + (self.n_prompt if self.protect_prompts else 0)

    @property
    def mergeable(self) -> int:
        """Tokens eligible to merge entering block 0."""
        return self.n_patches + (0 if self.protect_prompts else self.n_prompt)

    @property
    def prefix(self) -> tuple[int, ...]:
        return self.geometry.prefix

    @property
    def prompt_blocks(self) -> tuple[int, ...]:
        return self.geometry.prompt_blocks

    @property
    def first_grad(self) -> int:
        return self.geometry.first_grad

    @property
    def pooling(self) -> str:
        return self.geometry.pooling

    def trainable(self, num_classes: int) -> int:
        """Trainable elements: the method's prompts/keys plus the classifier head."""
        return self.geometry.trainable + self.embed_dim * num_classes + num_classes


def token_layout(config) -> TokenLayout:
    """The layout of ``config`` (a RepConfig) on its backbone at its input size."""
    arch = config.backbone.arch
    method = get_method(config.prompt.method)
    geom = method.geometry(config.prompt, arch.depth, arch.embed_dim)
    return TokenLayout(n_prefix=int(getattr(arch, "num_prefix_tokens", 1)), n_prompt=geom.tokens,
                       n_patches=arch.num_patches(), protect_prompts=config.atom.protect_prompts,
                       geometry=geom, embed_dim=arch.embed_dim, depth=arch.depth)
