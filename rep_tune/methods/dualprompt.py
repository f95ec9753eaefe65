"""DualPrompt (Wang et al., ECCV 2022): a shared G-prompt in the first blocks and a pool of
E-prompts (one selected per sample) in the next ones, both as key/value prefixes (prefix tuning);
the head reads CLS."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rep_tune.methods.base import PromptGeometry, PromptMethod, PromptSection, register_method
from rep_tune.schema import check


@dataclass
class DualPromptConfig(PromptSection):
    """DualPrompt G/E prefix prompts (REP's flags: --length 20 --top_k 1 --g_prompt_length 5,
    G layers 0-1, E layers 2-4, pull constraint 1.0, --use_prefix_tune_for_e_prompt).

    ``carry_over``: a new task's E-prompt starts from the previous task's (the reference's
    ``shared_prompt_pool``, on by default there); keys are not carried over (``shared_prompt_key``
    off). While training task t the E-prompt of task t is used (task-id selection); at test time the
    E-prompt whose key best matches the query.
    """

    method: Literal["dualprompt"] = "dualprompt"
    pool_size: int = 10
    length: int = 20                 # E-prompt length (prefix tokens for keys and for values)
    top_k: int = 1
    pull_coeff: float = 1.0
    g_length: int = 5
    g_layers: list[int] = field(default_factory=lambda: [0, 1])
    e_layers: list[int] = field(default_factory=lambda: [2, 3, 4])
    carry_over: bool = True


@register_method
class DualPrompt(PromptMethod):
    name = "dualprompt"
    title = "DualPrompt"
    section = DualPromptConfig
    paper_r = 6          # REP, DualPrompt on CIFAR-100
    paper_tau = 12
    paper_lr = 0.005     # REP's cifar100_rep_dual / imr_rep_dual configs (and dualprompt-pytorch's ImageNet-R)
    reference_name = "dualprompt"
    positive_fields: ClassVar[tuple[str, ...]] = ("pool_size", "length", "top_k", "g_length")

    def geometry(self, section: DualPromptConfig, depth: int, dim: int) -> PromptGeometry:
        prefix = [0] * depth
        for layer in section.g_layers:
            prefix[layer] += section.g_length
        for layer in section.e_layers:
            prefix[layer] += section.top_k * section.length
        blocks = tuple(sorted(set(section.g_layers) | set(section.e_layers)))
        trainable = (len(section.g_layers) * 2 * section.g_length * dim
                     + len(section.e_layers) * 2 * section.pool_size * section.length * dim + section.pool_size * dim)
        return PromptGeometry(tokens=0, prefix=tuple(prefix), prompt_blocks=blocks,
                              first_grad=min(blocks, default=depth), trainable=trainable,
                              select_macs=section.pool_size * dim, pooling="cls", param_tensors=3, launches=25)

    def validate(self, section: DualPromptConfig, source, depth: int, prefix: str) -> None:
        super().validate(section, source, depth, prefix)
        self.check_layers(section.g_layers, depth, source, f"{prefix}.g_layers")
        self.check_layers(section.e_layers, depth, source, f"{prefix}.e_layers")
        shared = sorted(set(section.g_layers) & set(section.e_layers))
        check(not shared, source, f"{prefix}.e_layers", "no block shared with g_layers", shared)
