"""How a command meets its process: termination signals, a closed output pipe, warnings.

- SIGTERM (``kill``, a job scheduler's time limit) raises ``Terminated``, a ``KeyboardInterrupt``, so
  every cleanup Ctrl-C runs also runs for it: staging directories are removed, workers stopped,
  nothing is left half-written; the command then prints one line.
- A reader that stops early (``ml-patterns info | head``) closes the pipe: the command stops
  quietly, as the shell's own tools do, instead of ending in a ``BrokenPipeError`` traceback.
- A warning (a duplicate molecule with other labels, a leftover from an interrupted run) is one line
  naming the command, not Python's two-line ``file:line: Category: message`` with a source line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _terminate(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def command_process(prefix: str) -> Iterator[None]:
    """Runs the block with SIGTERM raising ``Terminated`` and warnings printed as ``PREFIX: warning: ...``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prefix}: warning: {message}", file=sys.stderr if file is None else file)

    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    previous_show = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous_show
        signal.signal(signal.SIGTERM, previous_handler)


def quiet_broken_pipe() -> None:
    """After a ``BrokenPipeError`` on stdout: points stdout at /dev/null, so that the interpreter's
    final flush does not fail again with "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
