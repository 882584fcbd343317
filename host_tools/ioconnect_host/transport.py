"""Talk to a MicroPython board over its serial console: raw REPL and raw-paste.

Every host command runs device code through two primitives, :meth:`exec` and
:meth:`eval`; the port may be a device path, ``socket://host:port`` or
``rfc2217://host:port`` (pyserial URLs), or a virtual board's pty.

Example:
    >>> with SerialTransport("/dev/ttyACM0") as board:
    ...     board.eval("1 + 1")
    2
"""

from __future__ import annotations

import ast
import itertools
import re
import time
from types import TracebackType
from typing import Any

import serial

from .errors import DeviceError, IoconnectError

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "DeviceExecError",
    "PortError",
    "SerialTransport",
    "TransportError",
]

#: Bytes one answer of the board may take (a program's output, a file read back).
DEFAULT_MAX_REPLY_BYTES = 16 << 20

# Console control bytes (MicroPython pyexec).
_CTRL_A = b"\x01"  # enter raw REPL
_CTRL_B = b"\x02"  # leave raw REPL for the friendly one
_CTRL_C = b"\x03"  # interrupt the running program
_CTRL_D = b"\x04"  # end of input / end of output / soft reset
_RAW_PASTE = b"\x05A\x01"  # ask for raw-paste mode
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"

_ERRNO_RE = re.compile(rb"^OSError: (?:\[Errno (\d+)\] )?(\w+)?", re.MULTILINE)
_ERRNO_NAMES = {
    1: "EPERM", 2: "ENOENT", 5: "EIO", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES",
    17: "EEXIST", 19: "ENODEV", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 28: "ENOSPC",
    39: "ENOTEMPTY", 110: "ETIMEDOUT", 113: "EHOSTUNREACH",
}  # fmt: skip


class TransportError(IoconnectError):
    """The board did not answer as a MicroPython console should."""


class PortError(TransportError):
    """The serial port could not be opened or went away."""


class DeviceExecError(DeviceError):
    """Code run on the board raised; ``traceback`` holds the board's text."""

    def __init__(self, code: str, message: str, traceback: str) -> None:
        super().__init__(code, message)
        self.traceback = traceback


def exec_error(err: bytes) -> DeviceExecError:
    """Turn a board traceback into an error whose code is the errno name or exception type."""
    text = err.decode("utf-8", "replace").strip()
    last = text.splitlines()[-1] if text else "error"
    m = _ERRNO_RE.search(err)
    if m:
        num = int(m.group(1)) if m.group(1) else None
        name = (m.group(2) or b"").decode() or _ERRNO_NAMES.get(num or 0, f"errno {num}")
        if num is not None and name.isdigit():
            name = _ERRNO_NAMES.get(num, f"errno {num}")
        return DeviceExecError(name, last, text)
    kind, _, message = last.partition(":")
    return DeviceExecError(kind.strip() or "error", message.strip() or last, text)


class SerialTransport:
    """A MicroPython board's console, driven through the raw REPL.

    Args:
        port: device path or pyserial URL (``socket://``, ``rfc2217://``).
        baudrate: serial speed (ignored by USB CDC and sockets).
        byte_timeout_s: longest silence tolerated while the board should answer.
        exclusive: lock a local port so two programs never share one board.
        max_reply_bytes: most bytes kept while waiting for one answer (a board that
            prints without end must not fill the host's memory).

    Raises:
        PortError: the port cannot be opened.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        byte_timeout_s: float = 2.0,
        exclusive: bool = True,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.port = port
        self.byte_timeout_s = byte_timeout_s
        self.max_reply_bytes = max_reply_bytes
        self._rx = bytearray()
        self._use_raw_paste = True
        self.in_raw_repl = False
        try:
            # write_timeout: a board that stops reading must not hang the host.
            if "://" in port:
                self._serial = serial.serial_for_url(
                    port, baudrate=baudrate, timeout=0.05, write_timeout=byte_timeout_s
                )
            else:
                self._serial = serial.Serial(
                    port,
                    baudrate=baudrate,
                    timeout=0.05,
                    write_timeout=byte_timeout_s,
                    exclusive=exclusive,
                )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortError(
                f"cannot open {port}: {exc}", hint="is the board plugged in and the port free?"
            ) from exc

    # -- context -----------------------------------------------------------
    def __enter__(self) -> SerialTransport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Leave the raw REPL (so the board's program can be used again) and close."""
        try:
            if self.in_raw_repl:
                self._write(b"\r" + _CTRL_B)
        except TransportError:
            pass
        self._serial.close()

    # -- bytes ---------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()
        except serial.SerialTimeoutException as exc:
            raise PortError(f"{self.port}: the board stopped reading", hint="reset it?") from exc
        except (serial.SerialException, OSError) as exc:
            raise PortError(
                f"{self.port}: write failed: {exc}", hint="was the board unplugged?"
            ) from exc

    def _fill(self) -> bool:
        try:
            chunk = self._serial.read(max(1, self._serial.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise PortError(
                f"{self.port}: read failed: {exc}", hint="was the board unplugged?"
            ) from exc
        self._rx += chunk
        return bool(chunk)

    def read_until(
        self,
        marker: bytes,
        *,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
        what: str,
    ) -> bytes:
        """Bytes up to and including ``marker``.

        Fails after ``byte_timeout_s`` of silence, ``timeout_s`` overall if given, or
        once ``max_bytes`` (default ``max_reply_bytes``) arrived without the marker.

        Raises:
            TransportError: one of those limits was reached.
        """
        cap = self.max_reply_bytes if max_bytes is None else max_bytes
        start = last = time.monotonic()
        searched = 0  # bytes of _rx already known not to start the marker
        while True:
            i = self._rx.find(marker, searched)
            if i >= 0:
                out = bytes(self._rx[: i + len(marker)])
                del self._rx[: i + len(marker)]
                return out
            searched = max(0, len(self._rx) - len(marker) + 1)
            if len(self._rx) > cap:
                got = len(self._rx)
                self._rx.clear()  # out of step with the board now; exec_raw resyncs
                raise TransportError(
                    f"{self.port}: {got} bytes arrived without {marker!r} while {what}"
                    f" (more than the {cap} allowed)",
                    hint="is the board printing without end?",
                )
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                raise self._timeout(what, timeout_s)  # even while output keeps coming
            if self._fill():
                last = now
            elif timeout_s is None and now - last > self.byte_timeout_s:
                raise self._timeout(what, self.byte_timeout_s)

    def _timeout(self, what: str, seconds: float) -> TransportError:
        tail = bytes(self._rx[-60:])
        return TransportError(
            f"{self.port}: no answer within {seconds:g} s while {what} (last bytes: {tail!r})",
            hint="is MicroPython running there and no other program using the port?",
        )

    def _read_exact(self, n: int, what: str) -> bytes:
        last = time.monotonic()
        while len(self._rx) < n:
            if self._fill():
                last = time.monotonic()
            elif time.monotonic() - last > self.byte_timeout_s:
                raise self._timeout(what, self.byte_timeout_s)
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def _drain(self, quiet_s: float = 0.05) -> None:
        """Discard output until the board has been quiet for ``quiet_s``."""
        start = last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if self._fill():
                last = time.monotonic()
            if last - start > self.byte_timeout_s:
                raise TransportError(
                    f"{self.port}: the board keeps printing and does not stop on Ctrl-C",
                    hint="is it in a boot loop, or does its program catch KeyboardInterrupt?",
                )
        self._rx.clear()

    # -- raw REPL ----------------------------------------------------------
    def enter_raw_repl(self, *, soft_reset: bool = False, timeout_s: float = 10.0) -> None:
        """Interrupt the running program and enter the raw REPL.

        Args:
            soft_reset: also soft-reset, for a fresh heap (main.py does not run).
            timeout_s: overall limit for the board to answer.
        """
        # A board still booting (its USB not up yet) loses what it is sent: ask
        # again, each time waiting twice as long, until the overall limit.
        deadline = time.monotonic() + timeout_s
        wait_s = max(1.0, timeout_s / 8)
        for attempt in itertools.count():
            self._write(b"\r" + _CTRL_C + _CTRL_C)  # two: a program may catch the first
            self._drain()
            self._write(b"\r" + _CTRL_A)
            left = deadline - time.monotonic()
            try:
                self.read_until(
                    _RAW_BANNER + b">", timeout_s=min(wait_s, max(left, 0.0)),
                    what="entering the raw REPL",
                )  # fmt: skip
            except TransportError:
                if time.monotonic() + 0.01 >= deadline:
                    raise
                wait_s *= 2
                continue
            if attempt:
                self._drain(0.2)  # the banners of the earlier asks, if they came late
            break
        if soft_reset:
            self._write(_CTRL_D)
            self.read_until(b"soft reboot\r\n", timeout_s=timeout_s, what="soft-resetting")
            self.read_until(_RAW_BANNER + b">", timeout_s=timeout_s, what="rebooting")
        self._rx.clear()
        self.in_raw_repl = True

    def exit_raw_repl(self) -> None:
        """Back to the friendly REPL."""
        self._write(b"\r" + _CTRL_B)
        self.in_raw_repl = False

    def send(self, data: bytes) -> None:
        """Raw bytes to the console (control keys: Ctrl-D soft-resets the friendly REPL)."""
        self._write(data)

    def exec_raw(self, code: str | bytes, *, timeout_s: float = 30.0) -> tuple[bytes, bytes]:
        """Run ``code`` and return (stdout, traceback text); the board's prompt is consumed."""
        if not self.in_raw_repl:
            self.enter_raw_repl()
        try:
            return self._exec_raw(code, timeout_s)
        except TransportError:
            # Out of step with the board: the next call starts over with Ctrl-C.
            self.in_raw_repl = False
            self._rx.clear()
            raise

    def _exec_raw(self, code: str | bytes, timeout_s: float) -> tuple[bytes, bytes]:
        data = code.encode() if isinstance(code, str) else code
        if self._use_raw_paste:
            self._write(_RAW_PASTE)
            reply = self._read_exact(2, "asking for raw-paste mode")
            if reply == b"R\x01":
                self._paste(data)
            else:
                if reply != b"R\x00":  # an old firmware echoed the request: resync
                    self.read_until(_RAW_BANNER + b">", what="leaving the raw-paste request")
                self._use_raw_paste = False  # don't ask again on this connection
        if not self._use_raw_paste:
            for i in range(0, len(data), 256):
                self._write(data[i : i + 256])
                time.sleep(0.01)  # plain raw mode has no flow control
            self._write(_CTRL_D)
            if self._read_exact(2, "sending code") != b"OK":
                raise TransportError(f"{self.port}: the board did not accept the code")
        out = self.read_until(_CTRL_D, timeout_s=timeout_s, what="running code")[:-1]
        err = self.read_until(_CTRL_D, timeout_s=timeout_s, what="reading the error output")[:-1]
        self.read_until(b">", what="waiting for the raw REPL prompt")
        return out, err

    def _paste(self, data: bytes) -> None:
        window = int.from_bytes(self._read_exact(2, "reading the raw-paste window"), "little")
        remain = window
        i = 0
        while i < len(data):
            while remain == 0 or self._serial.in_waiting or self._rx:
                b = self._read_exact(1, "waiting for raw-paste flow control")
                if b == b"\x01":
                    remain += window  # the board freed another window
                elif b == _CTRL_D:  # the board stopped reading (e.g. a syntax error)
                    self._write(_CTRL_D)
                    return
                else:
                    raise TransportError(f"{self.port}: unexpected {b!r} during raw-paste")
            chunk = data[i : i + remain]
            self._write(chunk)
            remain -= len(chunk)
            i += len(chunk)
        self._write(_CTRL_D)  # end of data; the board answers with its own CTRL-D
        self.read_until(_CTRL_D, what="ending raw-paste")

    def exec(self, code: str | bytes, *, timeout_s: float = 30.0) -> bytes:
        """Run ``code``; return what it printed.

        Raises:
            DeviceExecError: the code raised on the board (code = errno name or exception type).
        """
        out, err = self.exec_raw(code, timeout_s=timeout_s)
        if err:
            raise exec_error(err)
        return out

    def eval(self, expression: str, *, timeout_s: float = 30.0) -> Any:
        """Evaluate ``expression`` on the board and return its value (literals only)."""
        out = self.exec(f"print(repr({expression}))", timeout_s=timeout_s)
        try:
            return ast.literal_eval(out.decode().strip())
        except (ValueError, SyntaxError) as exc:
            raise TransportError(
                f"{self.port}: cannot parse the board's answer {out[-80:]!r}"
            ) from exc
