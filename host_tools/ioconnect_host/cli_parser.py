"""The ``ioconnect`` argument parser: a usage error is one line, as every other fault.

Its own module so that ``deploy``'s fast path (:mod:`.launcher`) gets the same
errors without importing the whole CLI.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import NoReturn

from .errors import UsageError

__all__ = ["OneLineParser"]


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
