"""The ``ioconnect`` argument parser and command runner: every fault is one stderr line.

Its own module so that ``deploy``'s fast path (:mod:`.launcher`) gets the same
errors without importing the whole CLI.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from .errors import IoconnectError, UsageError, report_interrupt

__all__ = ["OneLineParser", "run_command"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix (``main`` prints it).

    argparse prints the usage block and exits; users of ``--json`` and scripts
    get one ``ioconnect: error: …`` line on stderr like every other fault.
    Subcommand parsers inherit this class (``add_subparsers`` uses ``type(self)``).
    """

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ioconnect").strip()
        where = f"{command}: " if command else ""
        hint = f"see `{self.prog} --help`"
        typo = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if typo:
            choices = re.findall(r"'([^']*)'", typo[2])
            close = difflib.get_close_matches(typo[1], choices, n=1)
            if close:
                hint = f"did you mean {close[0]!r}?"
        if message.endswith("expected one argument"):
            # argparse reads a value such as -5K as an option.
            hint = "a value starting with '-' is written --option=VALUE; " + hint
        raise UsageError(where + message, hint=hint)


def run_command(
    handler: Callable[[argparse.Namespace], int], args: argparse.Namespace, command: str | None
) -> int:
    """``handler(args)``'s exit status; a fault of the user's or the device's becomes one
    stderr line ``ioconnect: error: …`` and its exit status (anything else is a bug
    and keeps its traceback)."""
    try:
        return handler(args)
    except KeyboardInterrupt:
        return report_interrupt(command)
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        # The filesystem refused a path (permissions, a file where a folder
        # belongs, a full disk): the user's to fix, not a bug of ours.
        print(f"ioconnect: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    except IoconnectError as err:
        # One line: the hint of a VM failure is a traceback, keep only its message.
        text = str(err) if err.hint is None or "\n" not in err.hint else str(err.args[0])
        print(f"ioconnect: error: {text}", file=sys.stderr)
        return err.exit_code
