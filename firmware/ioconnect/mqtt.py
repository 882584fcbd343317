# A small MQTT 3.1.1 client for the delivery layer: CONNECT, PUBLISH QoS 0/1,
# SUBSCRIBE, PUBACK of what arrives, PINGREQ, DISCONNECT. Nothing more.
#
# Why not micropython-lib's umqtt.simple: its reads block with no deadline
# (a broker that restarts or a half-open link hangs wait_msg for ever, as
# umqtt and mqtt_as users report after days of uptime), it allocates per
# packet (header bytearrays, slices), checks the wire with assert, and it is
# not frozen into our firmware anyway. Here every socket operation runs on a
# non-blocking socket under select.poll with a deadline, and the hot path
# (PUBLISH out, PUBACK in) reuses preallocated buffers.
#
# Retry, reconnect and the outbox live above this (ioconnect.deliver): any
# failure here raises MQTTError and leaves the client closed.
import errno
import select
import socket
import time

from micropython import const

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)  # type 8, reserved flags 0b0010
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

_MAX_REMAINING = const(268435455)  # 4 bytes of remaining length
_POLLIN = const(1)
_POLLOUT = const(4)
_POLLERR = const(8)
_POLLHUP = const(16)
_POLL_BATCH = const(16)  # packets handled per poll() call at most

_CONNACK_REASONS = (
    "",
    "unacceptable protocol version",
    "client identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)


class MQTTError(OSError):
    pass


def encode_length(n, buf, off):
    """Write MQTT remaining length ``n`` into ``buf`` at ``off``; returns the end offset."""
    if not 0 <= n <= _MAX_REMAINING:
        raise MQTTError("remaining length %d out of range" % n)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[off] = b | 0x80
            off += 1
        else:
            buf[off] = b
            return off + 1


def _put_str(buf, off, s):
    n = len(s)
    buf[off] = n >> 8
    buf[off + 1] = n & 0xFF
    buf[off + 2 : off + 2 + n] = s
    return off + 2 + n


def _b(s):
    return s.encode() if isinstance(s, str) else s


class MQTTClient:
    def __init__(
        self,
        client_id,
        server,
        port=1883,
        *,
        keepalive_s=60,
        user=None,
        password=None,
        ssl_context=None,
        server_hostname=None,
        timeout_ms=10000,
        rx_size=512,
    ):
        self.client_id = _b(client_id)
        self.server = server
        self.port = port
        self.keepalive_s = keepalive_s
        if password is not None and user is None:
            raise MQTTError("a password needs a user name (MQTT 3.1.1)")
        self.user = None if user is None else _b(user)
        self.password = None if password is None else _b(password)
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or server
        self.timeout_ms = timeout_ms
        self.on_message = None  # f(topic: bytes, msg: bytes); set a flag and return
        self.dropped = 0  # incoming PUBLISH too large for rx_size (acked, not delivered)
        self._sock = None
        self._poll = None
        self._pid = 0
        self._tx = bytearray(256)  # PUBLISH/SUBSCRIBE headers; payload written from its own buffer
        self._rx = bytearray(rx_size)
        self._rxmv = memoryview(self._rx)
        self._one = bytearray(1)
        self._rn = 0  # body length of the last packet read
        self._rtrunc = False  # it was larger than rx (head kept, rest skipped)
        self._ack = bytearray(b"\x40\x02\x00\x00")  # PUBACK for incoming QoS 1
        self._ping = bytearray(b"\xc0\x00")
        self._last_tx = time.ticks_ms()
        self._ping_at = None  # ticks_ms of an unanswered PINGREQ

    # -- connection -----------------------------------------------------
    def connect(self, clean_session=False):
        """Open the link and send CONNECT; returns session_present. MQTTError on failure."""
        self.close()
        deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        try:
            addr = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0][-1]
            s = socket.socket()
            self._sock = s
            try:
                # TCP_NODELAY (IPPROTO_TCP 6, option 1 on Linux and lwIP): a PUBLISH is
                # written as header then payload; Nagle would hold the payload for the
                # broker's delayed ACK (40 ms per reading on Linux).
                s.setsockopt(6, 1, 1)
            except (OSError, AttributeError):
                pass
            s.setblocking(False)
            self._poll = select.poll()
            self._poll.register(s, _POLLOUT)
            try:
                s.connect(addr)
            except OSError as e:
                # errno values differ between ports (ESP-IDF's newlib: EINPROGRESS 119).
                if e.errno != errno.EINPROGRESS and e.errno != errno.EAGAIN:
                    raise MQTTError(
                        "cannot connect to %s:%d: %s" % (self.server, self.port, _errno_name(e))
                    )
            if self._wait(_POLLOUT, deadline, "TCP connect") & (_POLLERR | _POLLHUP):
                raise MQTTError(
                    "cannot connect to %s:%d: connection refused" % (self.server, self.port)
                )
            if self.ssl_context is not None:
                self._poll.unregister(s)
                # Handshake runs on our first write, under the same poll deadline.
                s = self.ssl_context.wrap_socket(
                    s, server_hostname=self.server_hostname, do_handshake_on_connect=False
                )
                self._sock = s
                self._poll.register(s, _POLLOUT)
            pkt = self._connect_packet(clean_session)
            self._write(pkt, len(pkt), deadline)
            pkt = None
            t = self._read_packet(deadline, "CONNACK")
            if t != _CONNACK or self._rn != 2:
                raise MQTTError("expected CONNACK, got packet type 0x%02x" % t)
            rc = self._rx[1]
            if rc:
                why = _CONNACK_REASONS[rc] if rc < len(_CONNACK_REASONS) else "code %d" % rc
                raise MQTTError("broker refused the connection: " + why)
            self._ping_at = None
            return bool(self._rx[0] & 1)
        except OSError as e:  # MQTTError included
            raise self._broken(e, "connect")
        except ValueError as e:
            # mbedTLS reports a failed certificate check as ValueError(<verify info>).
            self.close()
            raise MQTTError("connect: TLS: server certificate rejected: %s" % str(e).strip())

    def _connect_packet(self, clean_session):
        # Rare path: built in a fresh buffer sized to fit.
        flags = 0x02 if clean_session else 0
        n = 10 + 2 + len(self.client_id)
        if self.user is not None:
            flags |= 0x80
            n += 2 + len(self.user)
        if self.password is not None:
            flags |= 0x40
            n += 2 + len(self.password)
        pkt = bytearray(5 + n)
        pkt[0] = _CONNECT
        o = encode_length(n, pkt, 1)
        o = _put_str(pkt, o, b"MQTT")
        pkt[o] = 4  # protocol level 3.1.1
        pkt[o + 1] = flags
        pkt[o + 2] = self.keepalive_s >> 8
        pkt[o + 3] = self.keepalive_s & 0xFF
        o = _put_str(pkt, o + 4, self.client_id)
        if self.user is not None:
            o = _put_str(pkt, o, self.user)
        if self.password is not None:
            o = _put_str(pkt, o, self.password)
        return memoryview(pkt)[:o]

    def connected(self):
        return self._sock is not None

    def disconnect(self):
        """Send DISCONNECT (best effort) and close."""
        if self._sock is not None:
            try:
                self._tx[0] = _DISCONNECT
                self._tx[1] = 0
                self._write(self._tx, 2, time.ticks_add(time.ticks_ms(), 1000))
            except OSError:
                pass
        self.close()

    def close(self):
        s = self._sock
        self._sock = None
        self._poll = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    # -- operations -----------------------------------------------------

    def _broken(self, e, what):
        # A failed operation leaves the link unusable: close it; the error to
        # raise says what failed (an OSError becomes an MQTTError).
        self.close()
        return e if isinstance(e, MQTTError) else MQTTError(_os_reason(what, e))
    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    def publish(self, topic, msg, qos=1, n=None):
        """PUBLISH msg[:n]; with qos 1 wait for the broker's PUBACK within timeout_ms."""
        self._live()
        if qos != 0 and qos != 1:
            raise MQTTError("qos %r not supported" % (qos,))
        if isinstance(topic, str):
            topic = topic.encode()  # callers on the hot path pass bytes
        if n is None:
            n = len(msg)
        tx = self._tx
        if len(topic) + 9 > len(tx):
            raise MQTTError("topic too long")
        deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        try:
            tx[0] = _PUBLISH | (qos << 1)
            rl = 2 + len(topic) + n + (2 if qos else 0)
            o = encode_length(rl, tx, 1)
            o = _put_str(tx, o, topic)
            pid = 0
            if qos:
                pid = self._next_pid()
                tx[o] = pid >> 8
                tx[o + 1] = pid & 0xFF
                o += 2
            self._write(tx, o, deadline)
            self._write(msg, n, deadline)
            while qos:
                t = self._read_packet(deadline, "PUBACK")
                if t == _PUBACK and self._rn == 2 and (self._rx[0] << 8 | self._rx[1]) == pid:
                    return
                self._handle(t)
        except OSError as e:  # MQTTError included
            raise self._broken(e, "publish")

    def subscribe(self, topic, qos=1):
        self._live()
        topic = _b(topic)
        tx = self._tx
        if len(topic) + 8 > len(tx):
            raise MQTTError("topic too long")
        deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        try:
            pid = self._next_pid()
            tx[0] = _SUBSCRIBE
            o = encode_length(2 + 2 + len(topic) + 1, tx, 1)
            tx[o] = pid >> 8
            tx[o + 1] = pid & 0xFF
            o = _put_str(tx, o + 2, topic)
            tx[o] = qos
            self._write(tx, o + 1, deadline)
            while True:
                t = self._read_packet(deadline, "SUBACK")
                if t == _SUBACK and self._rn == 3 and (self._rx[0] << 8 | self._rx[1]) == pid:
                    if self._rx[2] == 0x80:
                        raise MQTTError("broker refused the subscription to %s" % topic.decode())
                    return
                self._handle(t)
        except OSError as e:  # MQTTError included
            raise self._broken(e, "subscribe")

    def ping(self):
        self._live()
        try:
            self._write(self._ping, 2, time.ticks_add(time.ticks_ms(), self.timeout_ms))
            if self._ping_at is None:
                self._ping_at = time.ticks_ms()
        except OSError as e:  # MQTTError included
            raise self._broken(e, "ping")

    def poll(self, timeout_ms=0):
        """Handle what arrived (up to timeout_ms for the first packet); keep the link alive."""
        self._live()
        try:
            now = time.ticks_ms()
            if self._ping_at is not None and time.ticks_diff(now, self._ping_at) > self.timeout_ms:
                raise MQTTError("no PINGRESP within %d ms (link dead)" % self.timeout_ms)
            if self.keepalive_s and self._ping_at is None:
                # Ping at 3/4 of keepalive: the broker cuts us at 1.5x, we want margin.
                if time.ticks_diff(now, self._last_tx) >= self.keepalive_s * 750:
                    self.ping()
            wait = timeout_ms
            for _ in range(_POLL_BATCH):  # bounded: a flood cannot keep us here
                if not self._readable(wait):
                    break
                t = self._read_packet(time.ticks_add(time.ticks_ms(), self.timeout_ms), "packet")
                self._handle(t)
                wait = 0
        except OSError as e:  # MQTTError included
            raise self._broken(e, "poll")

    # -- packets in -----------------------------------------------------
    def _handle(self, t):
        # A packet that arrived while we waited for something else.
        if t & 0xF0 == _PUBLISH:
            self._deliver(t)
        elif t == _PINGRESP:
            self._ping_at = None
        elif t == _PUBACK or t == _SUBACK:
            pass  # late ack of an operation that already gave up
        else:
            raise MQTTError("unexpected packet type 0x%02x" % t)

    def _deliver(self, t):
        qos = (t >> 1) & 3
        if qos == 3:
            raise MQTTError("PUBLISH with qos 3")
        rx = self._rx
        n = self._rn
        tl = rx[0] << 8 | rx[1]
        o = 2 + tl
        if qos:
            if o + 2 > n:
                raise MQTTError("malformed PUBLISH")
            self._ack[2] = rx[o]
            self._ack[3] = rx[o + 1]
            o += 2
        if o > n:
            raise MQTTError("malformed PUBLISH")
        if self._rtrunc:
            self.dropped += 1
        elif self.on_message is not None:
            self.on_message(bytes(self._rxmv[2 : 2 + tl]), bytes(self._rxmv[o:n]))
        if qos == 1:
            self._write(self._ack, 4, time.ticks_add(time.ticks_ms(), self.timeout_ms))
        elif qos == 2:
            raise MQTTError("PUBLISH with qos 2 (we subscribe with qos 1)")

    def _read_packet(self, deadline, what):
        # Reads one packet: returns its first byte; body in self._rx[:self._rn].
        # A body larger than rx is read to the end and dropped (self._rtrunc).
        one = self._one
        self._read(one, 1, deadline, what)
        t = one[0]
        n = 0
        shift = 0
        while True:
            self._read(one, 1, deadline, what)
            n |= (one[0] & 0x7F) << shift
            if not one[0] & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("malformed remaining length")
        cap = len(self._rx)
        self._rtrunc = n > cap
        if n <= cap:
            self._read(self._rx, n, deadline, what)
            self._rn = n
        else:
            # Keep the first half (topic, packet id), skip the rest through the second.
            h = cap // 2
            self._read(self._rx, h, deadline, what)
            left = n - h
            while left:
                k = min(left, cap - h)
                self._read(self._rxmv[h : h + k], k, deadline, what)
                left -= k
            self._rn = h
        return t

    def _read(self, buf, n, deadline, what):
        got = 0
        s = self._sk()
        while got < n:
            r = s.readinto(buf, n) if got == 0 else s.readinto(self._view(buf, got, n))
            if r is None:
                self._wait(_POLLIN, deadline, what)
            elif r == 0:
                raise MQTTError("connection closed by the broker while reading %s" % what)
            else:
                got += r

    def _view(self, buf, a, b):
        return (self._rxmv if buf is self._rx else memoryview(buf))[a:b]

    def _readable(self, timeout_ms):
        s = self._sk()
        p = self._pl()
        p.modify(s, _POLLIN)
        for _ in p.ipoll(timeout_ms):
            return True
        return False

    # -- packets out ----------------------------------------------------
    def _write(self, buf, n, deadline):
        off = 0
        s = self._sk()
        while off < n:
            w = s.write(buf, n) if off == 0 else s.write(memoryview(buf)[off:n])
            if w is None or w == 0:
                self._wait(_POLLOUT, deadline, "write")
            else:
                off += w
        self._last_tx = time.ticks_ms()

    def _wait(self, mask, deadline, what):
        ms = time.ticks_diff(deadline, time.ticks_ms())
        if ms > 0:
            p = self._pl()
            p.modify(self._sk(), mask)
            for _, ev in p.ipoll(ms):
                if ev & mask:
                    return ev
                if ev & (_POLLERR | _POLLHUP):
                    if what == "TCP connect":
                        return ev
                    raise MQTTError("connection lost while waiting for %s" % what)
        raise MQTTError("timeout: no %s within %d ms" % (what, self.timeout_ms))

    def _live(self):
        if self._sock is None:
            raise MQTTError("not connected")

    def _sk(self):
        # The open socket (typed Any for the checker: a socket, a TLS socket or a board's wrapper).
        s = self._sock
        if s is None:
            raise MQTTError("not connected")
        return s

    def _pl(self):
        p = self._poll
        if p is None:
            raise MQTTError("not connected")
        return p


def _errno_name(e):
    # Named by the port's own errno values (they differ between Linux and ESP-IDF).
    code = e.args[0] if e.args else 0
    names = (
        (errno.ECONNABORTED, "connection aborted (link lost)"),
        (errno.ECONNRESET, "connection reset by peer"),
        (errno.ETIMEDOUT, "timed out"),
        (errno.ECONNREFUSED, "connection refused"),
        (errno.EHOSTUNREACH, "host unreachable (no network)"),
        (errno.ENOTCONN, "not connected"),
        (-202, "name not resolved"),  # lwIP getaddrinfo failure on the esp32 port
    )
    for c, name in names:
        if c == code:
            return name
    return "OSError %s" % code


def _os_reason(op, e):
    # mbedTLS errors arrive as negative codes; name the usual ones.
    code = e.args[0] if e.args else 0
    if isinstance(code, int) and code < 0:
        c = -code
        if c == 0x2700:
            why = "server certificate not trusted (wrong CA?)"
        elif c in (0x7780, 0x7880, 0x7800):
            why = "TLS alert from the server"
        else:
            why = "TLS error -0x%04x" % c
        return "%s: %s" % (op, why)
    return "%s: %s" % (op, _errno_name(e))
