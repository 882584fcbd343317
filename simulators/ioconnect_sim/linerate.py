"""A serial line's speed: how many bytes may cross it now.

A virtual board's pty would move a whole firmware in a blink; the board's wire
(a 115200-baud UART bridge, or full-speed USB) does not. Each direction of the
line is a token bucket filled at the wire's byte rate, holding at most 10 ms of
bytes, so a transfer takes about the time it takes on the desk.
"""

from __future__ import annotations

import time

_BURST_S = 0.01  # bytes may bunch up this long (a UART FIFO, a USB frame or ten)


class Line:
    """One direction of a serial line; ``bytes_per_s`` 0 means no limit."""

    def __init__(self, bytes_per_s: int) -> None:
        self.bytes_per_s = bytes_per_s
        self._burst = max(1, int(bytes_per_s * _BURST_S))
        self._tokens = float(self._burst)
        self._at = time.monotonic()

    def _fill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self.bytes_per_s)
        self._at = now

    def allowed(self, want: int) -> int:
        """How many of ``want`` bytes may cross now (call :meth:`spend` with what did)."""
        if not self.bytes_per_s:
            return want
        self._fill()
        return min(want, int(self._tokens))

    def spend(self, n: int) -> None:
        if self.bytes_per_s:
            self._tokens -= n

    def wait_s(self) -> float:
        """Seconds until a few bytes may cross (0 when some may now): a quarter of
        the burst, so that a busy line is served in chunks, not byte by byte."""
        if not self.bytes_per_s:
            return 0.0
        self._fill()
        if self._tokens >= 1:
            return 0.0
        return (max(1, self._burst // 4) - self._tokens) / self.bytes_per_s
