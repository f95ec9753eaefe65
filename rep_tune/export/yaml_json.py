"""The RepConfig itself as YAML or JSON: lossless, the same text ``RepConfig.save`` writes."""
from __future__ import annotations

from rep_tune.config import RepConfig
from rep_tune.export import ExportOptions, ExportResult, register
from rep_tune.schema import dump_mapping


def to_yaml(cfg: RepConfig) -> str:
    return dump_mapping(cfg.to_dict(), "yaml")


def to_json(cfg: RepConfig) -> str:
    return dump_mapping(cfg.to_dict(), "json")


@register("yaml")
def export_yaml(cfg: RepConfig, options: ExportOptions) -> ExportResult:
    return ExportResult("yaml", to_yaml(cfg), data=cfg.to_dict())


@register("json")
def export_json(cfg: RepConfig, options: ExportOptions) -> ExportResult:
    return ExportResult("json", to_json(cfg), data=cfg.to_dict())
