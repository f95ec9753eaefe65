"""Prompt methods: one registry, one torch-free description per method.

A prompt method (L2P, DualPrompt, CODA-Prompt, ...) is a :class:`PromptMethod` registered with
:func:`register_method`, the way timm registers models and Optuna defines samplers. It owns:

- its config section (the ``prompt:`` section of a RepConfig, a dataclass chosen by ``method``
  and validated by the same schema mechanism as everything else);
- its torch-free :class:`PromptGeometry` (prompt tokens in the sequence, prefix length per block,
  blocks that carry prompts, first block with a gradient, trainable parameters), which the
  token layout (``rep_tune.layout``), the cost model and ALD read;
- its REP preset numbers (``paper_r``, ``paper_tau``) and its ``paper``/``baseline`` sections.

The torch side (``rep_tune.runtime.prompts``) registers one ``PromptModule`` per method name.
Adding a method = one module here + one runtime module + a search space file.
"""
from __future__ import annotations

from rep_tune.methods.base import (METHODS, PromptGeometry, PromptMethod, PromptSection, get_method,
                                   method_names, register_method)
from rep_tune.methods import l2p, dualprompt, coda  # noqa: E402,F401,I001  (registration, in display order)

__all__ = ["METHODS", "PromptGeometry", "PromptMethod", "PromptSection", "get_method", "method_names",
           "register_method"]
