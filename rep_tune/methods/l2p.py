"""L2P (Wang et al., CVPR 2022): a pool of prompts with learnable keys; top-k prompt tokens are
prepended to the patch tokens; the head reads the mean of the prompt tokens' outputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from rep_tune.methods.base import PromptGeometry, PromptMethod, PromptSection, register_method


@dataclass
class L2PConfig(PromptSection):
    """L2P prompt pool (reference flags: --size 10 --length 5 --top_k 5 --batchwise_prompt, pull 0.1).

    ``batchwise``: the batch's majority vote of the top-k ids is used for every sample, in training
    and at test time; at test time the vote runs over groups of ``training.batch_size`` samples (as
    L2P, whose evaluation batches have the training size), whatever the evaluation batch size.
    """

    method: Literal["l2p"] = "l2p"
    pool_size: int = 10
    length: int = 5
    top_k: int = 5
    batchwise: bool = True
    pull_coeff: float = 0.1


@register_method
class L2P(PromptMethod):
    name = "l2p"
    title = "L2P"
    section = L2PConfig
    paper_r = 8
    paper_tau = 16
    reference_name = "l2p"
    positive_fields: ClassVar[tuple[str, ...]] = ("pool_size", "length", "top_k")

    def geometry(self, section: L2PConfig, depth: int, dim: int) -> PromptGeometry:
        return PromptGeometry(tokens=section.top_k * section.length, prefix=(0,) * depth, prompt_blocks=(),
                              first_grad=0, trainable=section.pool_size * (section.length + 1) * dim,
                              select_macs=section.pool_size * dim, pooling="prompt", param_tensors=2, launches=30)
