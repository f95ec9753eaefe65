"""Export a RepConfig to other runtimes' formats: a registry of named exporters.

``export(cfg, "rep-argparse")`` returns an :class:`ExportResult` (text to print or write, the
structured form, and warnings). A config a format cannot express raises :class:`ExportError`
(listing every problem), unless ``allow_approx=True`` turns the approximable ones into warnings.

Each format declares what it can express, once, as :class:`Capabilities` (``register(name,
capabilities)``). Its exporter refuses (or warns) from that declaration, and ``rep-tune search
--export-target NAME`` restricts the search space with the same declaration
(``rep_tune.search.space.restrict_to_export``), so the search's best exports exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.registry import Registry


class ExportError(ValueError):
    """The config cannot be expressed in the target format; ``issues`` lists why."""

    def __init__(self, fmt: str, issues: list[str], hint: str = ""):
        self.format, self.issues = fmt, list(issues)
        lines = [f"cannot export to {fmt}:"] + [f"  - {i}" for i in self.issues]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


@dataclass
class ExportResult:
    """What an exporter produces: ``text`` to print/write, ``data`` (structured), ``warnings``."""

    format: str
    text: str
    data: Any = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportOptions:
    """Options shared by the exporters (each uses the ones it needs)."""

    allow_approx: bool = False
    scenario: Scenario | None = None
    program: str = "run_rep.py"           # rep-argparse: the reference runtime's entry point
    dataset_config: str | None = None     # rep-argparse: first positional; default from method/scenario


@dataclass(frozen=True)
class Capabilities:
    """What a format can express of a RepConfig: the one declaration that both its exporter's
    refusals and the search-space restriction (``rep_tune.search.space.restrict_to_export``) read.

    ``None`` means any value (or: the format does not carry that field, so nothing to restrict).

    - ``methods``: the prompt methods it can run (others are refused, even with ``allow_approx``,
      and the search refuses a space of them); ``refused_methods``: method -> why not.
    - ``merge_forms``: AToM schedule forms: ``ramp`` (ToMe's ``parse_r((r, inflect))``) and/or
      ``per_layer`` (any list of per-block merge counts).
    - ``inflects``: the ramp inflections it can say (None: any in [-1, 1]).
    - ``precisions``: ``training.precision`` values it trains at.
    - ``ald_schedules``: ``ald.schedule`` values it runs; ``()``: no layer dropping at all
      (ALD must be off).
    - ``prop_attn``: ``atom.prop_attn`` values.
    - ``protect_prompts``: ``atom.protect_prompts`` values, for methods whose prompts are tokens
      in the sequence (prefix prompts are not tokens: no merging rule applies to them).
    - ``runtime_warnings``: what the target's runtime does whatever the export says (flags it
      ignores, behaviour it forces): printed with every export to it, never restricted away.
    """

    methods: tuple[str, ...] | None = None
    refused_methods: Mapping[str, str] = field(default_factory=dict)
    merge_forms: tuple[str, ...] = ("ramp", "per_layer")
    inflects: tuple[float, ...] | None = None
    precisions: tuple[str, ...] | None = None
    ald_schedules: tuple[str, ...] | None = None
    prop_attn: tuple[bool, ...] | None = None
    protect_prompts: tuple[bool, ...] | None = None
    runtime_warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "refused_methods", MappingProxyType(dict(self.refused_methods)))

    def why_not(self, method: str) -> str | None:
        """Why the target cannot run prompt method ``method`` (None when it can)."""
        if self.methods is None or method in self.methods:
            return None
        return self.refused_methods.get(method, f"it has no entry point for the prompt method {method!r}")

    @property
    def restricts(self) -> bool:
        """Whether some config is outside what the format expresses (else a search has nothing to restrict)."""
        return set(self.merge_forms) != {"ramp", "per_layer"} or any(
            v is not None for v in (self.methods, self.inflects, self.precisions, self.ald_schedules,
                                    self.prop_attn, self.protect_prompts))


ANY = Capabilities()       # a lossless format (yaml, json): every config, as is

Exporter = Callable[[RepConfig, ExportOptions], ExportResult]
FORMATS: Registry[Exporter] = Registry("export format")
CAPABILITIES: dict[str, Capabilities] = {}


def register(name: str, capabilities: Capabilities = ANY) -> Callable[[Exporter], Exporter]:
    """Decorator: add an exporter to the registry under ``name``, with what it can express."""
    def deco(fn: Exporter) -> Exporter:
        FORMATS.add(name, fn)
        CAPABILITIES[name] = capabilities
        return fn
    return deco


def formats() -> list[str]:
    """Names of the registered formats."""
    return list(FORMATS)


def capabilities(fmt: str) -> Capabilities:
    """What format ``fmt`` can express (ValueError naming the formats otherwise)."""
    FORMATS.lookup(fmt)
    return CAPABILITIES[fmt]


def export_targets() -> list[str]:
    """Formats a search can be restricted to (``--export-target``): those that cannot express every config."""
    return [f for f in FORMATS if CAPABILITIES[f].restricts]


def export(cfg: RepConfig, fmt: str, **options: Any) -> ExportResult:
    """Export ``cfg`` to ``fmt`` (see :func:`formats`); ``options`` are ExportOptions fields."""
    return FORMATS.lookup(fmt)(cfg, ExportOptions(**options))


# the format modules register themselves on import
from rep_tune.export import rep_argparse, tome, yaml_json  # noqa: E402,F401

__all__ = ["ANY", "CAPABILITIES", "Capabilities", "ExportError", "ExportOptions", "ExportResult", "FORMATS",
           "capabilities", "export", "export_targets", "formats", "register"]
