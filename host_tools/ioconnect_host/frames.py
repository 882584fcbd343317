"""Agent frames in a console byte stream: ``\\x1eIOC1 <len> <crc32> <json>\\n``.

The device's loop prints its events (``signed``, ``task`` on boards without a
network, ``error``...) as such frames between whatever else it prints; a
reader on the serial port picks out the frames whose length and CRC hold.

Example:
    >>> reader = FrameReader()
    >>> list(reader.feed(b'noise\\x1eIOC1 2 a6c0da16 {}\\n'))
    [{}]
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from typing import Any

__all__ = ["MAX_FRAME", "FrameReader", "encode_frame"]

#: Largest frame body taken (a signed task is well under 2 KB).
MAX_FRAME = 64 * 1024
_HEAD = re.compile(rb"\x1eIOC1 (\d{1,6}) ([0-9a-f]{8}) ")
_MARK = b"\x1eIOC1 "


def encode_frame(obj: Any) -> bytes:
    """One frame as the device prints it (compact JSON body)."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    return b"\x1eIOC1 %d %08x " % (len(body), zlib.crc32(body)) + body + b"\n"


class FrameReader:
    """Feed it console bytes; it yields each complete, intact frame's JSON value.

    Damaged frames (bad CRC, bad JSON, too long) are counted in ``damaged`` and
    skipped; memory stays bounded whatever the console prints.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.damaged = 0

    def feed(self, data: bytes) -> Iterator[Any]:
        buf = self._buf
        buf += data
        while True:
            start = buf.find(_MARK)
            if start < 0:
                # Keep only what could be the start of a mark.
                del buf[: max(0, len(buf) - len(_MARK) + 1)]
                return
            del buf[:start]
            m = _HEAD.match(buf)
            if m is None:
                if len(buf) < len(_MARK) + 16 and b"\n" not in buf:
                    return  # the header is still arriving
                self.damaged += 1
                del buf[:1]
                continue
            length, crc = int(m.group(1)), int(m.group(2), 16)
            if length > MAX_FRAME:
                self.damaged += 1
                del buf[:1]
                continue
            end = m.end() + length
            if len(buf) < end:
                return  # the body is still arriving
            body = bytes(buf[m.end() : end])
            if zlib.crc32(body) != crc:
                self.damaged += 1
                del buf[:1]
                continue
            del buf[:end]
            try:
                yield json.loads(body)
            except ValueError:
                self.damaged += 1
