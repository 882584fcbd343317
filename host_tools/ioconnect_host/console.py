"""A board's console as a byte stream, for the interactive commands (monitor,
repl, reset): open the port, split what the board prints into plain text and
agent frames, and reset the board.

Example:
    >>> splitter = ConsoleSplitter()
    >>> list(splitter.feed(b'hi\\n\\x1eIOC1 2 a6c0da16 {}\\n'))
    [('text', b'hi\\n'), ('frame', {})]
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Iterator
from typing import Any, Literal

import serial

from .frames import MAX_FRAME
from .ports import BoardRef, find_again
from .transport import PortError

__all__ = ["ConsoleSplitter", "Piece", "open_console", "reset_board"]

_HEAD = re.compile(rb"\x1eIOC1 (\d{1,6}) ([0-9a-f]{8}) ")
_HEAD_MAX = 22  # \x1e IOC1 space, 6 digits, space, 8 hex, space
_CTRL_B = b"\x02"  # friendly REPL
_CTRL_C = b"\x03"  # interrupt the program
_CTRL_D = b"\x04"  # in the friendly REPL: soft reset (boot.py and main.py run again)

#: What the splitter yields: ("text", bytes), ("frame", JSON value) or ("damaged", bytes).
Piece = tuple[Literal["text", "frame", "damaged"], Any]


class ConsoleSplitter:
    """Splits console bytes into plain text and agent frames, in order.

    Text is handed on as soon as it arrives (a REPL prompt has no newline); only
    bytes that may begin a frame are held until the frame is whole. A frame whose
    length or CRC does not hold is handed on as ``damaged`` bytes.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._after_frame = False  # drop the newline that ends a frame

    def feed(self, data: bytes) -> Iterator[Piece]:
        buf = self._buf
        buf += data
        while buf:
            if self._after_frame:
                for nl in (b"\r\n", b"\n"):
                    if buf.startswith(nl):
                        del buf[: len(nl)]
                        break
                else:
                    if buf == b"\r":
                        return  # the \n may follow
                self._after_frame = False
                continue
            start = buf.find(b"\x1e")
            if start != 0:
                end = len(buf) if start < 0 else start
                yield "text", bytes(buf[:end])
                del buf[:end]
                continue
            m = _HEAD.match(buf)
            if m is None:
                if len(buf) < _HEAD_MAX and b"\n" not in buf:
                    return  # the header may still be arriving
                yield "text", bytes(buf[:1])  # a lone record separator
                del buf[:1]
                continue
            length, crc = int(m[1]), int(m[2], 16)
            end = m.end() + length
            if length > MAX_FRAME:
                yield "damaged", bytes(buf[: m.end()])
                del buf[: m.end()]
                continue
            if len(buf) < end:
                return  # the body is still arriving
            body = bytes(buf[m.end() : end])
            raw = bytes(buf[:end])
            del buf[:end]
            self._after_frame = True
            try:
                if zlib.crc32(body) != crc:
                    raise ValueError("CRC")
                yield "frame", json.loads(body)
            except ValueError:
                yield "damaged", raw

    def flush(self) -> Iterator[Piece]:
        """Whatever is held back, as text (the stream ended)."""
        if self._buf:
            yield "text", bytes(self._buf)
            self._buf.clear()


def open_console(port: str, *, timeout_s: float = 0.1) -> serial.Serial:
    """Open a board's serial port for reading and writing raw bytes.

    Raises:
        PortError: the port cannot be opened (absent, busy, no permission).
    """
    try:
        if "://" in port:
            return serial.serial_for_url(port, baudrate=115200, timeout=timeout_s)
        return serial.Serial(port, baudrate=115200, timeout=timeout_s, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise PortError(
            f"cannot open {port}: {exc}", hint="is the board plugged in and the port free?"
        ) from exc


# What a board prints once it runs again: our firmware's hello or its loop's
# first frame, MicroPython's banner, or a REPL prompt.
_ALIVE = (b"ioconnect ", b"\x1eIOC1 ", b"MicroPython ", b">>> ")


def _drain(link: serial.Serial, quiet_s: float = 0.3, limit_s: float = 5.0) -> None:
    """Discard output until the board has been quiet for ``quiet_s``."""
    end = time.monotonic() + limit_s
    last = time.monotonic()
    while time.monotonic() - last < quiet_s and time.monotonic() < end:
        if link.read(max(1, link.in_waiting)):
            last = time.monotonic()


def _after(seen: bytes, mark: bytes) -> bytes | None:
    i = seen.find(mark)
    return None if i < 0 else seen[i + len(mark) :]


def _whole(text: bytes, marker: bytes) -> bool:
    # The marker and the rest of its line (a prompt has no line end).
    i = text.find(marker)
    return i >= 0 and (marker == b">>> " or b"\n" in text[i:])


def _alive_after(link: serial.Serial, mark: bytes, timeout_s: float) -> bytes | None:
    """Output after ``mark`` once it holds a sign of life; None on timeout."""
    seen = bytearray()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen += link.read(max(1, link.in_waiting))
        rest = _after(bytes(seen), mark)
        if rest is not None and any(_whole(rest, m) for m in _ALIVE):
            return rest
    return None


def reset_board(ref: BoardRef, *, hard: bool = False, timeout_s: float = 20.0) -> dict[str, Any]:
    """Reset the board and wait until it answers again.

    Soft: interrupt the program, go to the friendly REPL and press Ctrl-D
    (boot.py and main.py run again; the USB link stays). Hard: ``machine.reset()``
    (the chip restarts; a USB board re-enumerates, found again by its USB serial).

    Returns:
        ``{"port", "hard", "seconds", "said"}``: said = the first line it printed back.

    Raises:
        PortError: the port cannot be opened.
        IoconnectError: the board did not answer within ``timeout_s``.
    """
    from .errors import IoconnectError

    start = time.monotonic()
    command = b"import machine; machine.reset()\r"
    with open_console(ref.port) as link:
        link.write(b"\r" + _CTRL_C + _CTRL_C)  # two: a program may catch the first
        time.sleep(0.1)
        link.write(_CTRL_B + b"\r")  # leave a raw REPL, if a tool left one
        _drain(link)
        link.write(command if hard else _CTRL_D)
        # Soft: MicroPython says "soft reboot"; hard: only the echo of the command.
        mark = b"machine.reset()\r\n" if hard else b"soft reboot"
        rest = _alive_after(link, mark, 3.0 if hard else timeout_s)
    port = ref.port
    if hard and rest is None:
        # The USB device went away with the reset: find it again, then listen.
        port = find_again(ref, timeout_s=timeout_s).port
        with open_console(port) as link:
            rest = _alive_after(link, b"", timeout_s)
    if rest is None:
        raise IoconnectError(
            f"{port}: the board did not answer within {timeout_s:g} s after the reset",
            hint="is it powered, and MicroPython on it?",
        )
    lines = [ln.strip() for ln in rest.decode("utf-8", "replace").splitlines()]
    said = next((ln for ln in lines if ln), "")
    return {"port": port, "hard": hard, "seconds": round(time.monotonic() - start, 2), "said": said}
