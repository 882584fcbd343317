"""The progress bar that ``flash`` and ``deploy`` draw on stderr when it is a terminal."""

from __future__ import annotations

import sys

__all__ = ["draw_bar"]

_WIDTH = 30


def draw_bar(done: int, total: int, unit: str = "") -> None:
    """Redraw ``[###...] done/total<unit>`` in place; a newline once ``done`` reaches ``total``."""
    filled = _WIDTH * done // total if total else _WIDTH
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (_WIDTH - filled)}] {done}/{total}{unit}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
