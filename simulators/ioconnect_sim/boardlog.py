"""A size-bounded log with one rotated file, private to the user.

A virtual board's console log records every byte the board prints, and a board
may print for weeks, or print its key file (``mpremote fs cp``). So the log is
0600 and never grows past its bound: at the bound ``NAME`` becomes ``NAME.1``
(replacing the older one) and a new ``NAME`` starts; at most 2 x bound on disk.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["DEFAULT_LOG_LIMIT", "RotatingLog", "open_private_append", "rotate_if_larger"]

#: Bytes per log file (the rotated one holds as much again).
DEFAULT_LOG_LIMIT = 1 << 20


def open_private_append(path: Path) -> int:
    """A descriptor appending to ``path``, created 0600 (an older, wider file is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def rotate_if_larger(path: Path, limit: int) -> None:
    """Move ``path`` to ``path.1`` if it holds ``limit`` bytes or more."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size >= limit:
            os.replace(path, path.with_name(path.name + ".1"))


class RotatingLog:
    """Append-only bytes log of at most ``limit`` bytes per file, one rotated file."""

    def __init__(self, path: Path, limit: int = DEFAULT_LOG_LIMIT) -> None:
        if limit < 1:
            raise ValueError("log limit must be positive")
        self.path = path
        self.limit = limit
        rotate_if_larger(path, limit)
        self._fd = open_private_append(path)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        """Append ``data``; rotate first if it would not fit. A full disk loses log
        lines, never the board's console."""
        with contextlib.suppress(OSError):
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            return
        if len(data) > self.limit:
            data = data[-self.limit :]  # only the newest bytes fit one file
        if self._size + len(data) > self.limit:
            os.close(self._fd)
            self._fd = -1  # the number may be reused: never write to it again
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._fd = open_private_append(self.path)
            self._size = 0
        os.write(self._fd, data)
        self._size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
