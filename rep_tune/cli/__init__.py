"""`rep-tune` command line: one module per subcommand, each thin (parse, call the API, print).

Exit status: 0 done; 1 the command ran but its answer is negative (no config fits the budgets);
2 bad input (a flag, a file, a field: one line on stderr naming it, before any work where it can
be checked up front); 70 an internal error (a bug: one line, ``--debug`` shows the traceback);
75 try again later (EX_TEMPFAIL: a full disk under a search's run folder, or ``rep-tune profile``
finding the machine too busy to calibrate); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM,
what schedulers send: a search fails its in-flight trials and stays resumable, as for Ctrl-C).
No traceback is printed unless ``--debug`` is given.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

import yaml

from rep_tune.extras import MissingExtra

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

# Exceptions that mean "the input is wrong" (their message names the file/flag/field): exit 2.
# ValueError covers SchemaError, UnicodeError and the loaders' errors; OSError a missing, unreadable
# or existing path; FloatingPointError a training that diverged (NonFiniteLoss: change the config).
# MissingExtra: an optional integration is not installed (the message carries the pip command).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, FloatingPointError, yaml.YAMLError,
                                                 MissingExtra)

EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 70, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rep-tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(f"rep_tune.cli.{name}")
            module.add_arguments(p)
        except ModuleNotFoundError as e:
            # a third-party package this subcommand needs is absent (e.g. optuna on a bare GPU image):
            # the other subcommands still work; this one says what is missing. rep_tune's own modules
            # failing to import is a bug and stays loud.
            if (e.name or "").split(".")[0] == "rep_tune":
                raise
            p.set_defaults(_missing=f"needs the package {e.name!r}, which is not installed here "
                                    f"(pip install rep-tune installs it)")
            module = None
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error")
        p.set_defaults(_run=module.run if module is not None else _missing_package)
    return parser


def _missing_package(args: argparse.Namespace) -> int:
    raise ValueError(args._missing)


def describe(e: BaseException) -> str:
    """One line for a user error: the exception's own message (it names the file/flag/field)."""
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, yaml.YAMLError):
        return "invalid YAML value: " + " ".join(str(e).split())
    return str(e) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return its exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not hasattr(args, "_missing"):
            parser.parse_args(argv)          # argparse reports the unknown arguments as usual
    except SystemExit as e:                  # argparse already printed usage and "argument --x: ..."
        return e.code if isinstance(e.code, int) else EXIT_INPUT
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        return EXIT_INTERRUPTED              # the command printed where its results are, if any
    except USER_ERRORS as e:
        if debug:
            traceback.print_exc()
        print(f"rep-tune {args.command}: error: {describe(e)}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback only with --debug
        if debug:
            traceback.print_exc()
        print(f"rep-tune {args.command}: internal error: {type(e).__name__}: {e}"
              f"{'' if debug else ' (rerun with --debug for the traceback)'}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
