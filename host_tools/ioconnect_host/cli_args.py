"""Argument types shared by the command groups: numbers checked at parse time,
so a bad value is argparse's one-line usage error, not a traceback later."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["number_in"]


def number_in(
    lo: float, hi: float, *, what: str = "number", kind: type[int] | type[float] = int
) -> Callable[[str], float]:
    """An argparse ``type=`` accepting ``kind`` values in ``lo..hi``.

    Example:
        >>> parser.add_argument("--port", type=number_in(0, 65535, what="port number"))
    """

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value:g} is out of range ({lo:g}..{hi:g})")
        return value

    return parse
