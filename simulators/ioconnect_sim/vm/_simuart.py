# machine.UART of the virtual board (machine.py imports this module on first use).
#
# UART(1) is wired to the board's second pseudo-terminal (`ioconnect sim start`
# and `sim list` print it): what the program writes comes out there, what a
# host program writes there is read here. The VM holds that pty's master
# itself (the supervisor passes it to every VM), so nothing is relayed.
# The other ids the chip has exist but nothing is wired to them: writes
# vanish, reads find nothing, as on a board with those pins unconnected.
#
# Baud rate, bits, parity and stop bits are kept and reported, not enforced:
# a pty has no line rate, so bytes move as fast as the host reads them and a
# host program opened at any baud rate reads them right. Pacing writes to the
# baud rate would only slow every test; nothing on the pty could tell.
import os
import select
import time

import _simboard as _b
from machine import _RP2, _pin_id

_IDS = (0, 1) if _RP2 else (0, 1, 2)
_WIRED = 1  # the id wired to the second pty
_RXBUF = 256  # the ports' default receive ring buffer

_pty = None  # the master's file object: opened once, never closed (its fd is the supervisor's)


def _open_pty():
    global _pty
    if _pty is None:
        fd = _b.cfg.get("uart_fd", -1)
        if fd >= 0:
            try:
                _pty = os.VfsPosix().open(fd, "r+b")
            except OSError:
                pass  # a VM started without the pty (calibration): UART(1) is unwired
    return _pty


class UART:
    INV_TX = 1
    INV_RX = 2
    RTS = 1
    CTS = 2

    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, **kw):
        if id not in _IDS:
            raise ValueError("UART(%d) doesn't exist" % id)
        self._id = id
        self._port = _open_pty() if id == _WIRED else None
        self._poll = None
        if self._port is not None:
            self._poll = select.poll()
            self._poll.register(self._port, select.POLLIN)
        self._rx = bytearray()
        self.init(baudrate, bits, parity, stop, **kw)

    def init(
        self,
        baudrate=115200,
        bits=8,
        parity=None,
        stop=1,
        *,
        tx=None,
        rx=None,
        rts=None,
        cts=None,
        txbuf=256,
        rxbuf=_RXBUF,
        timeout=0,
        timeout_char=0,
        invert=0,
        flow=0,
    ):
        if bits not in (5, 6, 7, 8, 9) or stop not in (1, 1.5, 2) or parity not in (None, 0, 1):
            raise ValueError("invalid UART settings")
        self._baud = baudrate
        self._bits = bits
        self._parity = parity
        self._stop = stop
        self._tx = None if tx is None else _pin_id(tx)
        self._rxpin = None if rx is None else _pin_id(rx)
        self._rxbuf = max(rxbuf, 32)
        self._timeout = timeout
        self._timeout_char = timeout_char

    def deinit(self):
        pass

    def __repr__(self):
        return "UART(%d, baudrate=%d, bits=%d, parity=%s, stop=%s, timeout=%d)" % (
            self._id,
            self._baud,
            self._bits,
            self._parity,
            self._stop,
            self._timeout,
        )

    # -- receive ---------------------------------------------------------------
    def _pull(self):
        # Move what the pty holds into our ring buffer (no waiting).
        if self._port is None or len(self._rx) >= self._rxbuf:
            return
        chunk = self._port.read(self._rxbuf - len(self._rx))
        if chunk:
            self._rx += chunk

    def _wait(self, want, timeout_ms):
        # Pull until `want` bytes are buffered or timeout_ms passed without any.
        self._pull()
        if len(self._rx) >= want or self._port is None:
            return
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while len(self._rx) < want:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0 or not self._poll.poll(left):
                return
            self._pull()
            if self._timeout_char:
                deadline = time.ticks_add(time.ticks_ms(), self._timeout_char)

    def any(self):
        self._pull()
        return len(self._rx)

    def _take(self, n):
        out = bytes(self._rx[:n])
        self._rx = self._rx[n:]
        return out

    def read(self, nbytes=None):
        self._wait(nbytes or 1, self._timeout)
        if not self._rx:
            return None  # timed out with nothing, as the ports answer
        return self._take(len(self._rx) if nbytes is None else nbytes)

    def readinto(self, buf, nbytes=None):
        n = len(buf) if nbytes is None else nbytes
        data = self.read(n)
        if data is None:
            return None
        buf[: len(data)] = data
        return len(data)

    def readline(self):
        deadline = time.ticks_add(time.ticks_ms(), self._timeout)
        while True:
            self._pull()
            i = self._rx.find(b"\n")
            if i >= 0:
                return self._take(i + 1)
            left = time.ticks_diff(deadline, time.ticks_ms())
            if self._port is None or left <= 0 or not self._poll.poll(left):
                return self._take(len(self._rx)) if self._rx else None

    # -- transmit --------------------------------------------------------------
    def write(self, buf):
        data = bytes(buf)
        if self._port is not None:
            done = 0
            while done < len(data):
                n = self._port.write(data[done:])
                if not n:
                    break  # nobody reads and the pty is full: the rest is lost on the line
                done += n
        return len(data)

    def sendbreak(self):
        pass

    def flush(self):
        pass

    def txdone(self):
        return True
