"""Export a RepConfig to other runtimes' formats: a registry of named exporters.

``export(cfg, "rep-argparse")`` returns an :class:`ExportResult` (text to print or write, the
structured form, and warnings). A config a format cannot express raises :class:`ExportError`
(listing every problem), unless ``allow_approx=True`` turns the approximable ones into warnings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario


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


Exporter = Callable[[RepConfig, ExportOptions], ExportResult]
FORMATS: dict[str, Exporter] = {}


def register(name: str) -> Callable[[Exporter], Exporter]:
    """Decorator: add an exporter to the registry under ``name``."""
    def deco(fn: Exporter) -> Exporter:
        FORMATS[name] = fn
        return fn
    return deco


def formats() -> list[str]:
    """Names of the registered formats."""
    return list(FORMATS)


def export(cfg: RepConfig, fmt: str, **options: Any) -> ExportResult:
    """Export ``cfg`` to ``fmt`` (see :func:`formats`); ``options`` are ExportOptions fields."""
    if fmt not in FORMATS:
        raise ValueError(f"export format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    return FORMATS[fmt](cfg, ExportOptions(**options))


# the format modules register themselves on import
from rep_tune.export import rep_argparse, tome, yaml_json  # noqa: E402,F401

__all__ = ["ExportError", "ExportOptions", "ExportResult", "FORMATS", "export", "formats", "register"]
