"""`rep-tune export`: translate a RepConfig to another runtime's format (print or write)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.export import ExportError, ExportOptions, export, formats
from rep_tune.schema import atomic_write_text


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
                        "(L2P) or cifar100_rep_dual / imr_rep_dual (DualPrompt) by the scenario (rep-argparse). The "
                        "public reference copy dispatches only the L2P ones, so DualPrompt is refused unless this "
                        "names the config of a copy patched to dispatch it")


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
    for w in result.warnings:            # one line each (the command file repeats them as comments)
        print(f"rep-tune export: warning: {' '.join(w.split())}", file=sys.stderr)
    if args.out:
        out = atomic_write_text(args.out, result.text)     # replaces a planted symlink, never follows it
        print(f"wrote {args.format} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(result.text)
    return 0
