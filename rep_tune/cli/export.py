"""`rep-tune export`: translate a RepConfig to another runtime's format (print or write)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.export import ExportError, ExportOptions, export, formats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="RepConfig YAML/JSON (e.g. a search's best.yaml)")
    parser.add_argument("--format", required=True, choices=formats(), help="output format")
    parser.add_argument("--out", help="write here instead of printing")
    parser.add_argument("--allow-approx", action="store_true",
                        help="export the closest expressible config, listing the differences as warnings")
    parser.add_argument("--scenario", help="Scenario YAML: adds --num_tasks/--dataset/--data-path (rep-argparse)")
    parser.add_argument("--program", default=ExportOptions.program,
                        help=f"reference runtime entry point (rep-argparse; default {ExportOptions.program})")
    parser.add_argument("--dataset-config", help="reference's first positional, default cifar100_rep / imr_rep "
                        "(L2P) or cifar100_rep_dual / imr_rep_dual (DualPrompt) by the scenario (rep-argparse)")


def run(args: argparse.Namespace) -> int:
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: expected a file path, found a directory")
    cfg = RepConfig.load(args.config)
    scenario = Scenario.load(args.scenario) if args.scenario else None
    try:
        result = export(cfg, args.format, allow_approx=args.allow_approx, scenario=scenario,
                        program=args.program, dataset_config=args.dataset_config)
    except ExportError as e:
        print(f"rep-tune export: error: {args.config}: {e}", file=sys.stderr)
        return 2
    for w in result.warnings:
        print(f"rep-tune export: warning: {w}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.text)
        print(f"wrote {args.format} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(result.text)
    return 0
