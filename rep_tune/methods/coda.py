"""CODA-Prompt (Smith et al., CVPR 2023): the prompt of each prompted block is a weighted sum of
M components, weight_m = cos(q * A_m, K_m) with a learned key K_m and attention vector A_m per
component; no top-k. Prefix tuning in blocks 0-4 (half the prompt length for keys, half for
values). The pool is split across tasks: each task trains M / n_tasks new components, initialised
orthogonal to the earlier tasks' (Gram-Schmidt) when it begins; earlier ones are frozen. The head
reads CLS and, at evaluation, scores only the classes seen so far. This follows the released code
(GT-RIPL/CODA-Prompt, ``models/zoo.py`` and ``learners/default.py``) rather than the paper's
orthogonality penalty: official setting ``--prompt_param 100 8 0.0`` (penalty weight 0)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rep_tune.methods.base import PromptGeometry, PromptMethod, PromptSection, register_method
from rep_tune.schema import check


@dataclass
class CodaConfig(PromptSection):
    """CODA-Prompt components: ``pool_size`` components of ``length`` tokens in ``layers``.

    ``ortho_mu``: weight of the orthogonality penalty on keys, attention vectors and components
    (0.0 as in the released code's CIFAR-100 setting, which relies on its per-task Gram-Schmidt
    initialisation; the paper's text uses 0.1).
    """

    method: Literal["coda"] = "coda"
    pool_size: int = 100
    length: int = 8
    layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    ortho_mu: float = 0.0


@register_method
class Coda(PromptMethod):
    name = "coda"
    title = "CODA-Prompt"
    section = CodaConfig
    paper_r = 6          # not published for CODA: prefix prompts like DualPrompt, so DualPrompt's
    paper_tau = 12
    reference_name = None   # the REP reference runtime has no CODA-Prompt entry point
    eval_seen_classes = True   # the official learner scores logits[:, :valid_out_dim]
    positive_fields: ClassVar[tuple[str, ...]] = ("pool_size",)

    def geometry(self, section: CodaConfig, depth: int, dim: int) -> PromptGeometry:
        half = section.length // 2
        prefix = [0] * depth
        for layer in section.layers:
            prefix[layer] = half
        blocks = tuple(sorted(section.layers))
        per_layer = section.pool_size * (section.length * dim + 2 * dim)     # P, K, A
        return PromptGeometry(tokens=0, prefix=tuple(prefix), prompt_blocks=blocks,
                              first_grad=min(blocks, default=depth), trainable=len(blocks) * per_layer,
                              select_macs=len(blocks) * section.pool_size * (3 * dim + section.length * dim),
                              pooling="cls", param_tensors=3 * len(blocks), launches=85 * len(blocks))

    def fit(self, section: CodaConfig, dim: int) -> CodaConfig:
        """At most ``dim`` components, in multiples of 10 (an even split over 5 or 10 tasks, the
        search space's step): keys and attention vectors are ``dim`` wide, so only ``dim`` of them
        can be mutually orthogonal. The embedded backbone's width 96 takes 90 of the published 100;
        a pool set wider by hand trains, its rows beyond the width initialised at random."""
        return dataclasses.replace(section, pool_size=min(section.pool_size, max(10, dim - dim % 10)))

    def validate(self, section: CodaConfig, source, depth: int, prefix: str) -> None:
        super().validate(section, source, depth, prefix)
        check(section.length >= 2 and section.length % 2 == 0, source, f"{prefix}.length",
              "an even int >= 2 (half for key prefixes, half for value prefixes)", section.length)
        check(0 <= section.ortho_mu < float("inf"), source, f"{prefix}.ortho_mu", "a finite number >= 0",
              section.ortho_mu)
        check(bool(section.layers), source, f"{prefix}.layers", "at least one block", section.layers)
        self.check_layers(section.layers, depth, source, f"{prefix}.layers")
