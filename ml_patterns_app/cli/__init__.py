"""The ``ml-patterns`` command line.

Each subcommand is an ``(add_arguments, run, help)`` triple (``dataset_commands``,
``backend_commands``) registered in ``SUBCOMMANDS``. This module is the dispatch: a subcommand that
needs a backend imports it inside ``run``, so ``prepare`` and ``info`` start without torch or jax.

Errors: the user's mistakes (``USER_ERRORS``: a bad flag value, a missing or corrupt dataset or
checkpoint, an output that exists) print one line (``ml_patterns.errors.cli_message``: the flag's
wording) and exit with status 2; anything else is a bug and keeps its traceback. Ctrl-C exits with
status 130, SIGTERM with 143, each after one line; a closed output pipe (``| head``) quietly with 141
(``ml_patterns_app.cli.process``).
"""

from __future__ import annotations

import argparse
import sys

from ml_patterns import __version__
from ml_patterns.errors import cli_message
from ml_patterns.io import printable
from ml_patterns.user_errors import USER_ERRORS
from ml_patterns_app.cli import backend_commands, dataset_commands, predict_command
from ml_patterns_app.cli.arguments import DEFAULT_DATA_DIR, HelpFormatter
from ml_patterns_app.cli.process import Terminated, command_process, quiet_broken_pipe

__all__ = ["DEFAULT_DATA_DIR", "SUBCOMMANDS", "USER_ERRORS", "build_parser", "main"]


# The order ``ml-patterns --help`` lists them in.
SUBCOMMANDS = {
    name: {**backend_commands.COMMANDS, **dataset_commands.COMMANDS, **predict_command.COMMANDS}[name]
    for name in ("compare", "prepare", "info", "predict", "bench", "parity", "convert")
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-patterns", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"ml-patterns {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run, _ = SUBCOMMANDS[args.command]
    prefix = f"ml-patterns {args.command}"
    try:
        with command_process(prefix):
            return run(args)
    except USER_ERRORS as error:
        print(f"{prefix}: error: {printable(cli_message(error))}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"\n{prefix}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"\n{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        quiet_broken_pipe()
        return 141
