# socket, as a Wi-Fi board's firmware sees it: the unix port's sockets, cut by
# the board's link. While the station is not joined (the firmware has not
# connected its WLAN, or the host set the fault wifi=down), a new connection
# or a name lookup fails and an open socket fails on its next use, as on a
# board whose AP went away. With the link back, new sockets work again.
#
# The wrapper is a stream (io.IOBase with readinto/write/ioctl), so select.poll,
# tls/ssl.wrap_socket and asyncio streams take it as they take a real socket.
import io

import usocket as _real
from usocket import *  # noqa: F403 - constants and helpers, as the port has them

import network as _net

_EHOSTUNREACH = 113
_ECONNABORTED = 103
_POLL = 3  # stream ioctl requests (py/stream.h)
_CLOSE = 4
_POLLERR_HUP = 0x08 | 0x10


def _linked():
    return _net.WLAN(_net.STA_IF).isconnected()


def getaddrinfo(host, port, *args):
    if not _linked():
        raise OSError(_EHOSTUNREACH)
    return _real.getaddrinfo(host, port, *args)


class socket(io.IOBase):
    def __init__(self, af=AF_INET, kind=SOCK_STREAM, proto=0, *, _s=None):  # noqa: F405
        self._s = _s if _s is not None else _real.socket(af, kind, proto)

    def _use(self):
        # An established socket dies with the link; it stays dead afterwards.
        if self._s is None or not _linked():
            if self._s is not None:
                self._s.close()
                self._s = None
            raise OSError(_ECONNABORTED)
        return self._s

    # -- stream protocol -------------------------------------------------
    def readinto(self, buf, n=None):
        s = self._use()
        return s.readinto(buf) if n is None else s.readinto(buf, n)

    def write(self, data, n=None):
        s = self._use()
        return s.write(data) if n is None else s.write(data, n)

    def ioctl(self, req, arg):
        if req == _CLOSE:
            self.close()
            return 0
        if req == _POLL:
            if self._s is None or not _linked():
                return _POLLERR_HUP  # readable/writable only to fail
            import select

            p = select.poll()
            p.register(self._s, arg)
            ready = p.poll(0)
            return ready[0][1] & (arg | _POLLERR_HUP) if ready else 0
        return -1

    # -- socket API ------------------------------------------------------
    def connect(self, addr):
        if not _linked():
            raise OSError(_EHOSTUNREACH)
        return self._use().connect(addr)

    def accept(self):
        conn, addr = self._use().accept()
        return socket(_s=conn), addr

    def send(self, data):
        return self._use().send(data)

    def sendall(self, data):
        return self._use().sendall(data)

    def recv(self, n):
        return self._use().recv(n)

    def read(self, n=None):
        s = self._use()
        return s.read() if n is None else s.read(n)

    def readline(self):
        return self._use().readline()

    def sendto(self, data, addr):
        return self._use().sendto(data, addr)

    def recvfrom(self, n):
        return self._use().recvfrom(n)

    def close(self):
        if self._s is not None:
            self._s.close()
            self._s = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        # setblocking, settimeout, setsockopt, bind, listen, fileno, ...
        if self._s is None:
            raise OSError(_ECONNABORTED)
        return getattr(self._s, name)
