"""The prompt-method interface and registry (torch-free; see ``rep_tune.methods``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from rep_tune.registry import Registry
from rep_tune.schema import SchemaError, check


@dataclass
class PromptSection:
    """Base of every method's ``prompt:`` config section; ``method`` picks the concrete section."""

    method: str = "l2p"

    @classmethod
    def __schema_dispatch__(cls, data: dict, source: str | None, prefix: str) -> type:
        name = data.get("method", "l2p")
        if name not in METHODS:
            raise SchemaError(source, f"{prefix}.method" if prefix else "method",
                              "one of " + ", ".join(repr(m) for m in METHODS), name)
        return METHODS[name].section

    def validate(self, source: str | None, depth: int, prefix: str = "prompt") -> None:
        """Range checks of the section against a backbone of ``depth`` blocks (SchemaError on failure)."""
        get_method(self.method).validate(self, source, depth, prefix)


@dataclass(frozen=True)
class PromptGeometry:
    """Where a method's prompts sit, in numbers only (shared by the runtime's checks and the cost model).

    ``tokens``: prompt tokens inserted into the sequence after the prefix tokens (CLS, registers).
    ``prefix``: per block, the key/value prefix length prepended inside attention (prefix tuning).
    ``prompt_blocks``: blocks that carry prompts (ALD never drops them).
    ``first_grad``: the first block a gradient flows through (``depth`` when none does).
    ``trainable``: elements of prompts, keys and other method parameters (the head excluded).
    ``select_macs``: multiply-adds per sample of prompt selection (query against keys, weights).
    ``pooling``: what the classifier head reads: the prompt tokens' mean ('prompt') or CLS ('cls').
    ``param_tensors``: trainable tensors of the method (the optimizer steps and clips each one).
    ``launches``: kernel launches of selection and prompt assembly per iteration, forward and
    backward (counted with torch.profiler on CPU; they dominate small backbones).
    """

    tokens: int
    prefix: tuple[int, ...]
    prompt_blocks: tuple[int, ...]
    first_grad: int
    trainable: int
    select_macs: int
    pooling: Literal["prompt", "cls"]
    param_tensors: int = 2
    launches: int = 30


class PromptMethod:
    """One prompt method. Subclasses set the class attributes and implement ``geometry``."""

    name: ClassVar[str]
    title: ClassVar[str]
    section: ClassVar[type[PromptSection]]
    paper_r: ClassVar[int]        # REP's uniform ToMe count r for this method (AToM ramp 0..2r)
    paper_tau: ClassVar[int]      # ALD tau for this method
    paper_lr: ClassVar[float] = 0.03   # REP's --lr for this method (before its batch/256 scaling)
    reference_name: ClassVar[str | None] = None   # the REP reference runtime's name for it (None: not supported)
    # which classes the head scores at evaluation: every class (False: L2P's and DualPrompt's
    # reference code, class-incremental) or only the classes of the tasks seen so far (True:
    # CODA-Prompt's official code slices the logits to ``valid_out_dim``)
    eval_seen_classes: ClassVar[bool] = False

    def geometry(self, section: PromptSection, depth: int, dim: int) -> PromptGeometry:
        raise NotImplementedError

    def preset(self, name: str) -> PromptSection:
        """The section of preset ``paper`` or ``baseline`` (the base method's published settings)."""
        return self.section()

    def fit(self, section: PromptSection, dim: int) -> PromptSection:
        """A preset's section sized to a backbone of width ``dim`` (default: unchanged)."""
        return section

    def validate(self, section: PromptSection, source: str | None, depth: int, prefix: str) -> None:
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.name in self.positive_fields:
                check(value >= 1, source, f"{prefix}.{f.name}", "int >= 1", value)
        if hasattr(section, "pull_coeff"):
            check(section.pull_coeff >= 0 and section.pull_coeff < float("inf"), source, f"{prefix}.pull_coeff",
                  "a finite number >= 0", section.pull_coeff)
        if hasattr(section, "top_k"):
            check(section.top_k <= section.pool_size, source, f"{prefix}.top_k",
                  f"int in [1, pool_size={section.pool_size}]", section.top_k)

    positive_fields: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def check_layers(layers: list[int], depth: int, source: str | None, field: str) -> None:
        for i, layer in enumerate(layers):
            check(0 <= layer < depth, source, f"{field}[{i}]", f"block index in [0, {depth - 1}]", layer)
        check(len(set(layers)) == len(layers), source, field, "distinct block indices", layers)


METHODS: Registry[PromptMethod] = Registry("prompt method")


def register_method(cls: type[PromptMethod]) -> type[PromptMethod]:
    """Class decorator: register a PromptMethod under ``cls.name``."""
    METHODS.add(cls.name, cls())
    return cls


def get_method(name: str) -> PromptMethod:
    """The registered method ``name``; ValueError naming the registered ones otherwise."""
    return METHODS.lookup(name)


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


