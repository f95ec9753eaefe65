"""RepConfig: everything needed to run REP training, and the deployable artifact of a search.

One object flows through rep-tune: the search samples it, the cost model prices it, the
runtime trains it, the exporters translate it. YAML/JSON round-trip, validated on load.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rep_tune.archs import ArchSpec, arch_of
from rep_tune.deployable import DeployTarget, Expected, Provenance
from rep_tune.methods import PromptSection, get_method, method_names
from rep_tune.methods.l2p import L2PConfig
from rep_tune.schedule import ramp
from rep_tune.schema import INT_MAX, INT_MIN, Document, SchemaError, check, read_mapping

SCHEMA_VERSION = 2   # 2: one prompt section per method (rep_tune.methods); version 1 files migrate on load

EMBEDDED_BACKBONE = "vit_micro_patch2_28.fmnist"    # 12 blocks, 14x14 = 196 patches + CLS: ViT/16@224's layout
EMBEDDED_SURROGATE = "vit_pico_patch2_28.fmnist"    # 6 blocks, width 64, the same 196-patch grid
# the embedded surrogate of each embedded update backbone (the paper pairs ViT-L/B with ViT-Ti)
EMBEDDED_PAIRS = {"vit_micro_patch4_32": "vit_pico_patch4_32",          # test-sized, random init only
                  "vit_micro_patch2_28": "vit_pico_patch2_28.fmnist"}
PAPER_SURROGATE = "vit_tiny_patch16_224"
# the embedded benchmark's full-fidelity schedule (benchmarks/bench_accuracy.py: seed std <= 1 point,
# `make demo` <= 3 minutes on 2 cores); other backbones keep TrainingConfig's reference defaults
EMBEDDED_SCHEDULE = {"epochs": 1, "iters_per_task": 64}
ATTENTIONS = ("fused", "eager")           # backbone.attention's choices
QUERY_MODELS = ("shared", "separate")   # selection.query_model's choices (the base method's query)
PRECISIONS = ("fp32", "bf16", "fp16")   # training.precision's choices (TrainingConfig)
MAX_IMG_SIZE = 4096           # as Scenario's limit: larger inputs are typos, not workloads
MAX_PROMPT_TOKENS = 1024      # prompt tokens in the sequence, or prefix keys/values per block
MAX_PROMPT_PARAMS = 10 ** 8   # prompt/key parameters of a method (a typo, not a config, beyond this)
MAX_BATCH = 2 ** 16           # images per batch (training and evaluation)
MAX_EPOCHS = 10 ** 5          # passes over a task's images
MAX_ITERATIONS = 10 ** 9      # iterations per task (iters_per_task, ald.horizon, ald.tau)
MAX_MERGE = 10 ** 5           # merges per block (clamped to half the tokens anyway)


@dataclass
class BackboneConfig:
    """The frozen update backbone: a timm ViT name, optionally a local checkpoint."""

    name: str = EMBEDDED_BACKBONE
    pretrained: bool = True          # hub weights, or the embedded weights for the embedded models
    checkpoint: str | None = None    # local weights file (.safetensors/.pth); wins over pretrained
    img_size: int | None = None      # input resolution; None = the model's default
    # "fused": torch's scaled_dot_product_attention (flash/memory-efficient kernels: backward keeps
    # only a logsumexp per query); "eager": softmax(q k^T) v written out, keeping the attention
    # probabilities for backward, as timm < 0.9 and the REP reference code (timm 0.6.13) run it
    attention: str = "fused"

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
    # base method (surrogate: null) only: the query from the update backbone itself ("shared"), or from
    # a second frozen copy of it ("separate": the reference code's `original_model`, weights held twice)
    query_model: str = "shared"

    @property
    def arch(self) -> ArchSpec | None:
        return arch_of(self.surrogate) if self.surrogate else None


@dataclass
class AtomConfig:
    """Adaptive token merging: merges per block, between attention and MLP.

    A block merges at most half of the tokens still eligible (bipartite matching pairs them):
    larger requested counts are clamped by ``rep_tune.schedule.effective_merges``, which the
    runtime and the cost model both apply, so a ramp written for 224 px stays valid at 32 px.
    """

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
    # iterations per task the keep schedule is laid over (None: the run's own). The search sets the
    # deployment's, so its short proxy runs drop blocks as the deployed run does at the same fraction
    # of each task (rep_tune.schedule.horizon_scale); a deployed config runs its own schedule (None).
    horizon: int | None = None


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
class RepConfig(Document):
    """A complete REP training configuration (and, with target/expected/provenance, a deployable one)."""

    version: int = SCHEMA_VERSION
    name: str = "rep"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    prompt: PromptSection = field(default_factory=L2PConfig)   # the method's own section (rep_tune.methods)
    atom: AtomConfig = field(default_factory=AtomConfig)
    ald: AldConfig = field(default_factory=AldConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    target: DeployTarget | None = None          # device profile, budgets, deployment (written by search)
    expected: Expected | None = None       # expected accuracy / cost, each with its source
    provenance: Provenance | None = None   # rep-tune version, study, trial, profile checksum

    # ---- validation -------------------------------------------------------------------
    def validate(self, source: str | None = None) -> "RepConfig":
        """Range and consistency checks; raises SchemaError naming the field."""
        check(self.version == SCHEMA_VERSION, source, "version", f"{SCHEMA_VERSION}", self.version)
        try:
            arch = self.backbone.arch
        except KeyError as e:
            raise_schema(source, "backbone.name", f"a timm ViT rep-tune can drive ({_reason(e)})", self.backbone.name, e)
        if self.selection.surrogate:
            try:
                self.selection.arch
            except KeyError as e:
                raise_schema(source, "selection.surrogate", f"a timm ViT rep-tune can drive, or null ({_reason(e)})",
                             self.selection.surrogate, e)
        if self.backbone.img_size is not None:
            check(self.backbone.img_size > 0 and self.backbone.img_size % arch.patch_size == 0, source,
                  "backbone.img_size", f"a positive multiple of the patch size {arch.patch_size}", self.backbone.img_size)
        self.prompt.validate(source, arch.depth)
        a = self.atom
        check(len(a.merge) in (0, arch.depth), source, "atom.merge",
              f"a list of {arch.depth} merge counts (one per block of {self.backbone.name}) or []", a.merge)
        for i, r in enumerate(a.merge):
            check(0 <= r <= MAX_MERGE, source, f"atom.merge[{i}]", f"int in [0, {MAX_MERGE}]", r)
        d = self.ald
        check(0.0 < d.theta_min <= 1.0, source, "ald.theta_min", "number in (0, 1]", d.theta_min)
        check(d.gamma >= 0, source, "ald.gamma", "number >= 0", d.gamma)
        check(d.horizon is None or 1 <= d.horizon <= MAX_ITERATIONS, source, "ald.horizon",
              f"int in [1, {MAX_ITERATIONS:,}] or null", d.horizon)
        check(0 <= d.tau <= MAX_ITERATIONS, source, "ald.tau", f"int in [0, {MAX_ITERATIONS:,}]", d.tau)
        check(0.0 < d.alpha <= 1.0, source, "ald.alpha", "number in (0, 1]", d.alpha)
        t = self.training
        check(1 <= t.batch_size <= MAX_BATCH, source, "training.batch_size", f"int in [1, {MAX_BATCH}]", t.batch_size)
        check(1 <= t.epochs <= MAX_EPOCHS, source, "training.epochs", f"int in [1, {MAX_EPOCHS}]", t.epochs)
        check(t.iters_per_task is None or 1 <= t.iters_per_task <= MAX_ITERATIONS, source, "training.iters_per_task",
              f"int in [1, {MAX_ITERATIONS:,}] or null", t.iters_per_task)
        check(t.lr > 0, source, "training.lr", "number > 0", t.lr)
        check(t.clip_grad is None or t.clip_grad > 0, source, "training.clip_grad", "number > 0 or null", t.clip_grad)
        check(1 <= t.eval_batch_size <= MAX_BATCH, source, "training.eval_batch_size", f"int in [1, {MAX_BATCH}]",
              t.eval_batch_size)
        check(self.backbone.attention in ATTENTIONS, source, "backbone.attention", f"one of {ATTENTIONS}",
              self.backbone.attention)
        check(self.selection.query_model in QUERY_MODELS, source, "selection.query_model", f"one of {QUERY_MODELS}",
              self.selection.query_model)
        for name, seed in (("training.seed", t.seed), ("selection.projection_seed", self.selection.projection_seed)):
            check(0 <= seed < 2 ** 32, source, name, "int in [0, 2**32 - 1]", seed)
        if self.backbone.img_size is not None:
            check(self.backbone.img_size <= MAX_IMG_SIZE, source, "backbone.img_size", f"int <= {MAX_IMG_SIZE}",
                  self.backbone.img_size)
        lay = self.layout()
        check(lay.n_prompt <= MAX_PROMPT_TOKENS, source, "prompt",
              f"at most {MAX_PROMPT_TOKENS} prompt tokens in the sequence", lay.n_prompt)
        check(max(lay.prefix, default=0) <= MAX_PROMPT_TOKENS, source, "prompt",
              f"at most {MAX_PROMPT_TOKENS} prefix tokens per block", max(lay.prefix, default=0))
        check(lay.geometry.trainable <= MAX_PROMPT_PARAMS, source, "prompt",
              f"at most {MAX_PROMPT_PARAMS:.0e} prompt parameters", lay.geometry.trainable)

        for name, ckpt in (("backbone.checkpoint", self.backbone.checkpoint),
                           ("selection.checkpoint", self.selection.checkpoint)):
            check(ckpt is None or ("\x00" not in ckpt and len(ckpt) <= 4096), source, name,
                  "a weights file path (no NUL byte, at most 4096 characters), or null", ckpt)
        if self.target is not None:
            self.target.validate(source)
        if self.expected is not None:
            self.expected.validate(source)
        _check_finite(self.to_dict(), source)
        return self

    @classmethod
    def __schema_in__(cls, data: dict, source: str | None, prefix: str) -> dict:
        """Migrate version-1 files: their ``prompt`` section held every method's fields."""
        if data.get("version") == 1 and isinstance(data.get("prompt"), dict):
            prompt = dict(data["prompt"])
            name = prompt.get("method", "l2p")
            if name in method_names():
                known = {f.name for f in dataclasses.fields(get_method(name).section)}
                data["prompt"] = {k: v for k, v in prompt.items() if k in known}
            data["version"] = SCHEMA_VERSION
        return data

    # ---- derived ------------------------------------------------------------------------
    def layout(self):
        """The token layout of this config's forward pass (rep_tune.layout.TokenLayout)."""
        from rep_tune.layout import token_layout
        return token_layout(self)

    @property
    def merge_schedule(self) -> list[int]:
        """Requested merge count per block of the backbone (zeros when AToM is off)."""
        return self.atom.schedule(self.backbone.arch.depth)

    # ---- I/O ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "RepConfig":
        """Load and validate a YAML/JSON RepConfig; errors name the file and field."""
        return cls.from_dict(read_mapping(path), source=str(path))

    def replace(self, **changes: Any) -> "RepConfig":
        """Copy with dotted-path changes, e.g. ``cfg.replace(**{"ald.enabled": False})``.

        A path must lead through sections (mappings) to a field: an unknown section raises KeyError
        naming the path; a path into a value that is not a section (a string, a number, a list such
        as ``atom.merge.0``) raises SchemaError naming it. The result is converted, type-checked
        and validated (``from_dict`` calls ``validate``): calling ``validate()`` on it again repeats work.
        """
        data = copy.deepcopy(self.to_dict())
        for key, value in changes.items():
            parts = key.split(".")
            if not all(parts):
                raise SchemaError(None, key, "a dotted field path such as training.lr", key)
            target = data
            for i, part in enumerate(parts[:-1]):
                where = ".".join(parts[:i + 1])
                if part not in target:
                    raise KeyError(key if i == 0 else f"{key} ({where} is not a field)")
                target = target[part]
                if not isinstance(target, dict):
                    kind = f"a list (set it whole, e.g. --set {where}=[...])" if isinstance(target, list) else \
                        f"null (set it whole, e.g. --set {where}={{...}})" if target is None else \
                        f"a value ({type(target).__name__}), not a section"
                    raise SchemaError(None, key, f"a path through config sections; {where} is {kind}", value)
            target[parts[-1]] = value
        return RepConfig.from_dict(data)


def _reason(e: Exception) -> str:
    """The message of a KeyError/ValueError without KeyError's quotes."""
    return str(e.args[0]) if e.args else str(e)


def raise_schema(source, field_name, expected, found, cause) -> None:
    from rep_tune.schema import SchemaError
    raise SchemaError(source, field_name, expected, found) from cause


# ---- presets ------------------------------------------------------------------------------
# The paper's hand-picked REP settings (REP_METHOD.md): uniform ToMe count r (ramp 0..2r) and
# ALD tau per method (``PromptMethod.paper_r`` / ``paper_tau``), theta_min 0.5, gamma 0.001,
# alpha 0.9, a ViT-Ti-class surrogate.


def paper_surrogate(backbone: str) -> str:
    """The surrogate the paper preset pairs with ``backbone``: the embedded one, else ViT-Ti."""
    return EMBEDDED_PAIRS.get(backbone.split(".")[0], PAPER_SURROGATE)


def preset(name: str, method: str = "l2p", backbone: str = EMBEDDED_BACKBONE, **overrides: Any) -> RepConfig:
    """A named starting point: ``baseline`` (the base method, no REP) or ``paper`` (REP's defaults).

    baseline: query from a separate frozen copy of the update backbone, as the reference code builds
              it (``selection.query_model: separate``: its weights held twice), no AToM, no ALD.
    paper:    ViT-Ti-class surrogate (the embedded surrogate for the embedded backbone), AToM ramp
              0..2r and ALD tau from the method's registry entry, theta_min 0.5, gamma 0.001, alpha 0.9.
    Both use the method's published prompt settings and, on paper-scale backbones, its REP learning
    rate (``paper_lr``: DualPrompt 0.005, L2P 0.03). The embedded backbones train on the embedded
    benchmark's schedule (``EMBEDDED_SCHEDULE``, lr 0.03 for every method). ``overrides`` are dotted paths (RepConfig.replace).
    """
    arch = arch_of(backbone)
    m = get_method(method)
    # paper-scale backbones train as REP's configs do (the method's --lr); the embedded backbones on the
    # embedded benchmark's schedule, at the lr its accuracy results were measured with (TrainingConfig's)
    embedded = backbone.split(".")[0] in EMBEDDED_PAIRS
    training = TrainingConfig(**EMBEDDED_SCHEDULE) if embedded else TrainingConfig(lr=m.paper_lr)
    base = RepConfig(name=f"{name}-{method}", backbone=BackboneConfig(name=backbone),
                     prompt=m.fit(m.preset(name), arch.embed_dim),
                     training=training)
    if name == "baseline":
        cfg = dataclasses.replace(base, selection=SelectionConfig(surrogate=None, cache=False, query_model="separate"),
                                  atom=AtomConfig(enabled=False, merge=[]), ald=AldConfig(enabled=False))
    elif name == "paper":
        cfg = dataclasses.replace(
            base, selection=SelectionConfig(surrogate=paper_surrogate(backbone)),
            atom=AtomConfig(enabled=True, merge=ramp(m.paper_r, arch.depth, 1.0)),
            ald=AldConfig(enabled=True, theta_min=0.5, gamma=0.001, tau=m.paper_tau, alpha=0.9))
    else:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, found {name!r}")
    cfg.validate()
    return cfg.replace(**overrides) if overrides else cfg


PRESETS = ("baseline", "paper")


def _check_finite(data: Any, source: str | None, path: str = "") -> None:
    """Every number in a config is finite: nan/inf would train to garbage or crash later."""
    if isinstance(data, dict):
        for k, v in data.items():
            _check_finite(v, source, f"{path}.{k}" if path else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_finite(v, source, f"{path}[{i}]")
    elif isinstance(data, float) and not math.isfinite(data):
        raise SchemaError(source, path, "a finite number", data)
    elif isinstance(data, int) and not isinstance(data, bool) and not INT_MIN <= data <= INT_MAX:
        raise SchemaError(source, path, "an int in the 64-bit range", data)
