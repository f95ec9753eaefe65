"""`rep-tune` command line: one module per subcommand, each thin (parse, call the API, print)."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module under rep_tune.cli exposing add_arguments(parser) and run(args) -> int
COMMANDS = {
    "train": "Run REP continual learning for one config (default: the embedded offline benchmark).",
    "profile": "Measure this machine and write a device profile.",
    "devices": "List shipped and user device profiles.",
    "cost": "Predict a config's training cost on a device and check it against the budgets.",
    "search": "Hardware-aware search for the best REP config under a device's budgets.",
    "export": "Export a REP config to another runtime's format.",
    "verify": "Run a deployable config's training iterations here; compare with its expected cost and budgets.",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rep-tune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"rep_tune.cli.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # bad input: the message names the file, field, expected and found value
        print(f"rep-tune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
