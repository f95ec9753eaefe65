"""RepConfig: everything needed to run REP training, and the deployable artifact of a search.

One object flows through rep-tune: the search samples it, the cost model prices it, the
runtime trains it, the exporters translate it. YAML/JSON round-trip, validated on load.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rep_tune.archs import ArchSpec, arch_of
from rep_tune.schedule import ramp
from rep_tune.schema import check, from_dict, read_mapping, to_dict, write_mapping

SCHEMA_VERSION = 1

EMBEDDED_BACKBONE = "vit_micro_patch4_32.fmnist"
EMBEDDED_SURROGATE = "vit_pico_patch4_32.fmnist"


@dataclass
class BackboneConfig:
    """The frozen update backbone: a timm ViT name, optionally a local checkpoint."""

    name: str = EMBEDDED_BACKBONE
    pretrained: bool = True          # hub weights, or the embedded weights for the embedded models
    checkpoint: str | None = None    # local weights file (.safetensors/.pth); wins over pretrained
    img_size: int | None = None      # input resolution; None = the model's default

    @property
    def arch(self) -> ArchSpec:
        a = arch_of(self.name)
        return dataclasses.replace(a, img_size=self.img_size) if self.img_size else a


@dataclass
class SelectionConfig:
    """Where the prompt-selection query comes from.

    ``surrogate: null`` is the base method: the query is the update backbone's own CLS feature
    (an extra full forward pass). A surrogate of another width gets a fixed random projection.
    """

    surrogate: str | None = EMBEDDED_SURROGATE
    pretrained: bool = True
    checkpoint: str | None = None
    projection_seed: int = 0
    cache: bool = True   # cache each sample's query (valid only for a deterministic input pipeline)

    @property
    def arch(self) -> ArchSpec | None:
        return arch_of(self.surrogate) if self.surrogate else None


@dataclass
class PromptConfig:
    """L2P prompt pool, or DualPrompt G/E prefix prompts."""

    method: Literal["l2p", "dualprompt"] = "l2p"
    pool_size: int = 10
    length: int = 5                  # L2P prompt length; DualPrompt E-prompt length
    top_k: int = 5                   # L2P: prompts per sample; DualPrompt: 1
    batchwise: bool = True           # L2P batch-wise majority vote of the selected prompts
    pull_coeff: float = 0.1          # weight of the query-key pull constraint
    g_length: int = 5                # DualPrompt G-prompt length
    g_layers: list[int] = field(default_factory=lambda: [0, 1])
    e_layers: list[int] = field(default_factory=lambda: [2, 3, 4])

    def prompt_tokens(self) -> int:
        """Prompt tokens added to the sequence (L2P); DualPrompt prefixes add none."""
        return self.top_k * self.length if self.method == "l2p" else 0

    def prompt_layers(self) -> list[int]:
        """Blocks that carry prompts (never dropped by ALD)."""
        return sorted(set(self.g_layers) | set(self.e_layers)) if self.method == "dualprompt" else []


@dataclass
class AtomConfig:
    """Adaptive token merging: merges per block, between attention and MLP."""

    enabled: bool = True
    merge: list[int] = field(default_factory=list)   # one count per block; [] = no merging
    protect_prompts: bool = True     # False = plain ToMe: prompt tokens may merge too
    prop_attn: bool = False          # ToMe proportional attention (log-size bias)

    def schedule(self, depth: int) -> list[int]:
        """Merge count of every block (zeros when disabled)."""
        if not self.enabled or not self.merge:
            return [0] * depth
        return list(self.merge) + [0] * (depth - len(self.merge))


@dataclass
class AldConfig:
    """Adaptive layer dropping: keep probability theta(t, l) (see rep_tune.schedule)."""

    enabled: bool = True
    theta_min: float = 0.5
    gamma: float = 0.001
    tau: int = 16
    alpha: float = 0.9
    reset_per_task: bool = True      # t counts iterations within the current task
    schedule: Literal["ald", "pld"] = "ald"   # pld: DeepSpeed progressive layer dropping (depth-linear, no tau/alpha)


@dataclass
class TrainingConfig:
    """Optimisation of prompts, keys and head (the backbone stays frozen)."""

    batch_size: int = 16
    epochs: int = 3                  # per task
    iters_per_task: int | None = None   # cap on iterations per task (reference: --budget_per_task)
    lr: float = 0.03
    lr_scale_by_batch: bool = True   # effective lr = lr * batch_size / 256, as in L2P
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    clip_grad: float | None = 1.0
    train_mask: bool = True          # mask logits of classes outside the current task while training
    eval_batch_size: int = 128
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"   # autocast dtype of the frozen backbone's compute

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 256 if self.lr_scale_by_batch else self.lr


@dataclass
class RepConfig:
    """A complete REP training configuration (and, with target/expected/provenance, a deployable one)."""

    version: int = SCHEMA_VERSION
    name: str = "rep"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    atom: AtomConfig = field(default_factory=AtomConfig)
    ald: AldConfig = field(default_factory=AldConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    target: dict[str, Any] | None = None       # device profile name, budgets (written by search)
    expected: dict[str, Any] | None = None     # expected accuracy / cost, each with its source
    provenance: dict[str, Any] | None = None   # rep-tune version, study, trial, profile checksum

    # ---- validation -------------------------------------------------------------------
    def validate(self, source: str | None = None) -> "RepConfig":
        """Range and consistency checks; raises SchemaError naming the field."""
        check(self.version == SCHEMA_VERSION, source, "version", f"{SCHEMA_VERSION}", self.version)
        try:
            arch = self.backbone.arch
        except KeyError as e:
            raise_schema(source, "backbone.name", "a timm ViT name like vit_tiny_patch16_224", self.backbone.name, e)
        if self.selection.surrogate:
            try:
                self.selection.arch
            except KeyError as e:
                raise_schema(source, "selection.surrogate", "a timm ViT name or null", self.selection.surrogate, e)
        if self.backbone.img_size is not None:
            check(self.backbone.img_size > 0 and self.backbone.img_size % arch.patch_size == 0, source,
                  "backbone.img_size", f"a positive multiple of the patch size {arch.patch_size}", self.backbone.img_size)
        p = self.prompt
        check(p.pool_size >= 1, source, "prompt.pool_size", "int >= 1", p.pool_size)
        check(p.length >= 1, source, "prompt.length", "int >= 1", p.length)
        check(1 <= p.top_k <= p.pool_size, source, "prompt.top_k", f"int in [1, pool_size={p.pool_size}]", p.top_k)
        check(p.pull_coeff >= 0, source, "prompt.pull_coeff", "number >= 0", p.pull_coeff)
        if p.method == "dualprompt":
            check(p.g_length >= 1, source, "prompt.g_length", "int >= 1", p.g_length)
            for name in ("g_layers", "e_layers"):
                for i, layer in enumerate(getattr(p, name)):
                    check(0 <= layer < arch.depth, source, f"prompt.{name}[{i}]", f"block index in [0, {arch.depth - 1}]", layer)
            check(not set(p.g_layers) & set(p.e_layers), source, "prompt.e_layers", "no block shared with g_layers",
                  sorted(set(p.g_layers) & set(p.e_layers)))
        a = self.atom
        check(len(a.merge) in (0, arch.depth), source, "atom.merge",
              f"a list of {arch.depth} merge counts (one per block of {self.backbone.name}) or []", a.merge)
        for i, r in enumerate(a.merge):
            check(r >= 0, source, f"atom.merge[{i}]", "int >= 0", r)
        d = self.ald
        check(0.0 < d.theta_min <= 1.0, source, "ald.theta_min", "number in (0, 1]", d.theta_min)
        check(d.gamma >= 0, source, "ald.gamma", "number >= 0", d.gamma)
        check(d.tau >= 0, source, "ald.tau", "int >= 0", d.tau)
        check(0.0 < d.alpha <= 1.0, source, "ald.alpha", "number in (0, 1]", d.alpha)
        t = self.training
        check(t.batch_size >= 1, source, "training.batch_size", "int >= 1", t.batch_size)
        check(t.epochs >= 1, source, "training.epochs", "int >= 1", t.epochs)
        check(t.iters_per_task is None or t.iters_per_task >= 1, source, "training.iters_per_task", "int >= 1 or null", t.iters_per_task)
        check(t.lr > 0, source, "training.lr", "number > 0", t.lr)
        check(t.clip_grad is None or t.clip_grad > 0, source, "training.clip_grad", "number > 0 or null", t.clip_grad)
        return self

    # ---- derived ------------------------------------------------------------------------
    @property
    def merge_schedule(self) -> list[int]:
        """Requested merge count per block of the backbone (zeros when AToM is off)."""
        return self.atom.schedule(self.backbone.arch.depth)

    # ---- I/O ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "RepConfig":
        return from_dict(cls, data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "RepConfig":
        """Load and validate a YAML/JSON RepConfig; errors name the file and field."""
        return cls.from_dict(read_mapping(path), source=str(path))

    def save(self, path: str | Path) -> Path:
        return write_mapping(self.to_dict(), path)

    def replace(self, **changes: Any) -> "RepConfig":
        """Copy with dotted-path changes, e.g. ``cfg.replace(**{"ald.enabled": False})``."""
        data = copy.deepcopy(self.to_dict())
        for key, value in changes.items():
            node, *path = key.split(".")
            target = data
            for part in [node, *path][:-1]:
                target = target[part]
            target[[node, *path][-1]] = value
        return RepConfig.from_dict(data)


def raise_schema(source, field_name, expected, found, cause) -> None:
    from rep_tune.schema import SchemaError
    raise SchemaError(source, field_name, expected, found) from cause


# ---- presets ------------------------------------------------------------------------------
# The paper's hand-picked REP settings (REP_METHOD.md): uniform ToMe count r (ramp 0..2r),
# and ALD tau, per method (CIFAR-100 values for DualPrompt).
PAPER_R = {"l2p": 8, "dualprompt": 6}
PAPER_TAU = {"l2p": 16, "dualprompt": 12}
PAPER_SURROGATE = {"vit_micro_patch4_32": EMBEDDED_SURROGATE}   # else ViT-Ti, as in the paper


def _prompt_defaults(method: str) -> PromptConfig:
    if method == "l2p":
        return PromptConfig(method="l2p", pool_size=10, length=5, top_k=5, batchwise=True)
    if method == "dualprompt":
        return PromptConfig(method="dualprompt", pool_size=10, length=5, top_k=1, batchwise=False,
                            g_length=5, g_layers=[0, 1], e_layers=[2, 3, 4])
    raise ValueError(f"prompt method: expected 'l2p' or 'dualprompt', found {method!r}")


def preset(name: str, method: str = "l2p", backbone: str = EMBEDDED_BACKBONE, **overrides: Any) -> RepConfig:
    """A named starting point: ``baseline`` (the base method, no REP) or ``paper`` (REP's defaults).

    baseline: query from the update backbone itself, no AToM, no ALD.
    paper:    ViT-Ti-class surrogate (the embedded surrogate for the embedded backbone), AToM ramp
              0..2r with r = 8 (L2P) / 6 (DualPrompt), ALD theta_min 0.5, gamma 0.001, tau 16/12, alpha 0.9.
    ``overrides`` are dotted paths, as in RepConfig.replace.
    """
    arch = arch_of(backbone)
    base = RepConfig(name=f"{name}-{method}", backbone=BackboneConfig(name=backbone), prompt=_prompt_defaults(method))
    if name == "baseline":
        cfg = dataclasses.replace(base, selection=SelectionConfig(surrogate=None, cache=False),
                                  atom=AtomConfig(enabled=False, merge=[]), ald=AldConfig(enabled=False))
    elif name == "paper":
        surrogate = PAPER_SURROGATE.get(arch.name, "vit_tiny_patch16_224")
        cfg = dataclasses.replace(
            base, selection=SelectionConfig(surrogate=surrogate),
            atom=AtomConfig(enabled=True, merge=ramp(PAPER_R[method], arch.depth, 1.0)),
            ald=AldConfig(enabled=True, theta_min=0.5, gamma=0.001, tau=PAPER_TAU[method], alpha=0.9))
    else:
        raise ValueError(f"preset: expected 'baseline' or 'paper', found {name!r}")
    cfg.validate()
    return cfg.replace(**overrides) if overrides else cfg


PRESETS = ("baseline", "paper")
