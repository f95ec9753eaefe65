"""`rep-tune devices`: list shipped and user device profiles."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", action="append", default=[], metavar="PATH",
                   help="also list the profiles in this folder (repeatable); ./profiles is always looked at")


def run(args: argparse.Namespace) -> int:
    from rep_tune.profiler.catalog import catalog, render
    print(render(catalog(args.dir)))
    return 0
