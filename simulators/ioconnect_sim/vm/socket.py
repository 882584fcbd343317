# socket, as a Wi-Fi board's firmware sees it: the unix port's sockets, cut by
# the board's link. While the station is not joined (the firmware has not
# connected its WLAN, or the host set the fault wifi=down), a new connection
# or a name lookup fails and an open socket fails on its next use, as on a
# board whose AP went away. With the link back, new sockets work again.
import usocket as _real
from usocket import *  # noqa: F403 - constants and helpers, as the port has them

import network as _net

_EHOSTUNREACH = 113
_ECONNABORTED = 103


def _linked():
    return _net.WLAN(_net.STA_IF).isconnected()


def getaddrinfo(host, port, *args):
    if not _linked():
        raise OSError(_EHOSTUNREACH)
    return _real.getaddrinfo(host, port, *args)


class socket:
    def __init__(self, af=AF_INET, kind=SOCK_STREAM, proto=0):  # noqa: F405
        self._s = _real.socket(af, kind, proto)

    def _use(self):
        # An established socket dies with the link; it stays dead afterwards.
        if self._s is None or not _linked():
            if self._s is not None:
                self._s.close()
                self._s = None
            raise OSError(_ECONNABORTED)
        return self._s

    def connect(self, addr):
        if not _linked():
            raise OSError(_EHOSTUNREACH)
        return self._use().connect(addr)

    def send(self, data):
        return self._use().send(data)

    def sendall(self, data):
        return self._use().sendall(data)

    def write(self, data, n=None):
        s = self._use()
        return s.write(data) if n is None else s.write(data, n)

    def recv(self, n):
        return self._use().recv(n)

    def read(self, n=None):
        s = self._use()
        return s.read() if n is None else s.read(n)

    def readinto(self, buf, n=None):
        s = self._use()
        return s.readinto(buf) if n is None else s.readinto(buf, n)

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

    def __getattr__(self, name):
        # setblocking, settimeout, setsockopt, bind, listen, fileno, ...
        if self._s is None:
            raise OSError(_ECONNABORTED)
        return getattr(self._s, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
