"""The device MQTT client (ioconnect.mqtt) on the MicroPython VM at 96 KB heap.

Wire bytes are checked against scripted peers on real sockets (a Python
thread that plays the broker and records what arrives), with expected bytes
taken from the MQTT 3.1.1 specification; TLS runs against a real mosquitto.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Broker
from conftest import RunDevice

# MQTT 3.1.1 section 2.2.3, table 2.4: remaining-length boundaries.
SPEC_LENGTHS = {
    0: "00",
    127: "7f",
    128: "8001",
    16383: "ff7f",
    16384: "808001",
    2097151: "ffff7f",
    2097152: "80808001",
    268435455: "ffffff7f",
}


def test_remaining_length_encoding_is_exact_at_boundaries(device: RunDevice) -> None:
    code = """
import json
from ioconnect.mqtt import encode_length, MQTTError
buf = bytearray(6)
for n in json.load(open("cases.json")):
    try:
        end = encode_length(n, buf, 1)
        print(json.dumps([n, bytes(buf[1:end]).hex()]))
    except MQTTError as e:
        print(json.dumps([n, "error: " + str(e)]))
"""
    cases = [*SPEC_LENGTHS, 1, 129, 268435456, -1]
    out = dict(device(code, cases))
    for n, want in SPEC_LENGTHS.items():
        assert out[n] == want, n
    assert out[1] == "01" and out[129] == "8101"
    assert out[268435456] == "error: remaining length 268435456 out of range"
    assert out[-1] == "error: remaining length -1 out of range"


# -- a scripted broker on a real socket ---------------------------------------


def read_packet(conn: socket.socket) -> tuple[int, bytes, bytes]:
    """(first byte, remaining-length bytes as sent, body) of one packet."""
    first = recv_exact(conn, 1)[0]
    length_bytes = b""
    n, shift = 0, 0
    while True:
        b = recv_exact(conn, 1)
        length_bytes += b
        n |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            break
        shift += 7
    return first, length_bytes, recv_exact(conn, n)


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError("device closed the connection")
        data += chunk
    return data


def remaining(n: int) -> bytes:
    return bytes.fromhex(SPEC_LENGTHS[n]) if n in SPEC_LENGTHS else _enc(n)


def _enc(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


class ScriptedPeer:
    """Accepts one connection and runs ``script(conn, log)`` on it in a thread."""

    def __init__(self, script: Callable[[socket.socket, list[Any]], None]) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(30)
        self.port: int = self.srv.getsockname()[1]
        self.log: list[Any] = []
        self.error: BaseException | None = None
        self.script = script
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.srv.accept()
            conn.settimeout(30)
            with conn:
                self.script(conn, self.log)
        except (OSError, EOFError) as exc:
            self.log.append(("closed", repr(exc)))
        except BaseException as exc:  # an assertion inside the script
            self.error = exc

    def finish(self) -> list[Any]:
        self.thread.join(timeout=30)
        self.srv.close()
        if self.error is not None:
            raise self.error
        return self.log


@pytest.fixture
def peer() -> Iterator[Callable[[Callable[[socket.socket, list[Any]], None]], ScriptedPeer]]:
    made: list[ScriptedPeer] = []

    def make(script: Callable[[socket.socket, list[Any]], None]) -> ScriptedPeer:
        made.append(ScriptedPeer(script))
        return made[-1]

    yield make
    for p in made:
        p.srv.close()


CONNACK_OK = b"\x20\x02\x00\x00"

CLIENT = """
import json, time
from ioconnect.mqtt import MQTTClient, MQTTError
cfg = json.load(open("cases.json"))
c = MQTTClient("dev-1", "127.0.0.1", cfg["port"], keepalive_s=cfg.get("keepalive", 60),
               user=cfg.get("user"), password=cfg.get("password"),
               timeout_ms=cfg.get("timeout", 3000), rx_size=cfg.get("rx", 512))
got = []
c.on_message = lambda t, m: got.append([t.decode(), m.decode()])
def report(what, f):
    t0 = time.ticks_ms()
    try:
        r = f()
        print(json.dumps([what, "ok", r, time.ticks_diff(time.ticks_ms(), t0)]))
    except MQTTError as e:
        print(json.dumps([what, "error", str(e), time.ticks_diff(time.ticks_ms(), t0)]))
"""


def test_connect_publish_bytes_at_length_boundaries(device: RunDevice, peer: Any) -> None:
    topic = b"ioconnect/42/0xab/tasks"
    # Payload sizes that put the PUBLISH remaining length exactly on the boundaries.
    overhead = 2 + len(topic) + 2
    sizes = [rl - overhead for rl in (127, 128, 16383, 16384)]

    def script(conn: socket.socket, log: list[Any]) -> None:
        log.append(read_packet(conn))
        conn.sendall(CONNACK_OK)
        for _ in sizes:
            first, rl, body = read_packet(conn)
            log.append((first, rl, body))
            conn.sendall(b"\x40\x02" + body[2 + len(topic) : 4 + len(topic)])

    p = peer(script)
    code = (
        CLIENT
        + """
report("connect", lambda: c.connect())
for n in cfg["sizes"]:
    msg = bytearray(n)
    for i in range(n):
        msg[i] = 97 + i % 26
    report("publish", lambda: c.publish(b"ioconnect/42/0xab/tasks", msg))
    msg = None
"""
    )
    out = device(code, {"port": p.port, "sizes": sizes, "user": "u", "password": "pw"})
    log = p.finish()
    assert [o[:3] for o in out] == [["connect", "ok", False]] + [["publish", "ok", None]] * 4
    first, rl, body = log[0]
    # CONNECT: protocol "MQTT" level 4, flags user+password (clean session off), keepalive 60.
    assert first == 0x10
    want = b"\x00\x04MQTT\x04\xc0\x00\x3c" + b"\x00\x05dev-1" + b"\x00\x01u" + b"\x00\x02pw"
    assert body == want and rl == bytes([len(want)])
    for i, (size, (first, rl, body)) in enumerate(zip(sizes, log[1:], strict=True)):
        assert first == 0x32  # PUBLISH, QoS 1, no DUP, no RETAIN
        assert rl.hex() == SPEC_LENGTHS[size + overhead]
        assert body[: 2 + len(topic)] == b"\x00\x17" + topic
        assert body[2 + len(topic) : 4 + len(topic)] == (i + 1).to_bytes(2, "big")  # packet id
        assert body[4 + len(topic) :] == bytes(97 + j % 26 for j in range(size))


def test_incoming_publish_is_delivered_and_acked(device: RunDevice, peer: Any) -> None:
    topic = b"ioconnect/42/0xab/acks"
    payloads = [b"x" * (rl - 2 - len(topic) - 2) for rl in (127, 128)]
    big = b"y" * 600  # over rx_size: acked, counted, not delivered

    def script(conn: socket.socket, log: list[Any]) -> None:
        read_packet(conn)
        conn.sendall(CONNACK_OK)
        pid = 0x1234
        for payload in [*payloads, big, b'{"nonce": 1}']:
            body = len(topic).to_bytes(2, "big") + topic + pid.to_bytes(2, "big") + payload
            conn.sendall(b"\x32" + _enc(len(body)) + body)
            log.append(read_packet(conn))  # the device's PUBACK
            pid += 1
        # QoS 0 needs no ack.
        body = len(topic).to_bytes(2, "big") + topic + b"qos0"
        conn.sendall(b"\x30" + _enc(len(body)) + body)
        log.append(read_packet(conn))  # DISCONNECT

    p = peer(script)
    code = (
        CLIENT
        + """
c.connect()
t0 = time.ticks_ms()
while len(got) < 4 and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    c.poll(100)
c.disconnect()
print(json.dumps([got, c.dropped]))
"""
    )
    [[got, dropped]] = device(code, {"port": p.port, "rx": 512})
    log = p.finish()
    assert got == [[topic.decode(), pl.decode()] for pl in payloads] + [
        [topic.decode(), '{"nonce": 1}'],
        [topic.decode(), "qos0"],
    ]
    assert dropped == 1
    assert log[:4] == [(0x40, b"\x02", (0x1234 + i).to_bytes(2, "big")) for i in range(4)]
    assert log[4] == (0xE0, b"\x00", b"")


@pytest.mark.parametrize("rl", [127, 128, 16383, 16384])
def test_incoming_remaining_length_boundaries(device: RunDevice, peer: Any, rl: int) -> None:
    topic = b"t/acks"
    payload = bytes(65 + i % 26 for i in range(rl - 2 - len(topic)))  # QoS 0: no packet id

    def script(conn: socket.socket, log: list[Any]) -> None:
        read_packet(conn)
        conn.sendall(CONNACK_OK)
        body = len(topic).to_bytes(2, "big") + topic + payload
        assert len(body) == rl
        conn.sendall(b"\x30" + remaining(rl) + body)
        log.append(read_packet(conn))  # DISCONNECT

    p = peer(script)
    code = (
        CLIENT
        + """
c.connect()
t0 = time.ticks_ms()
while not got and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    c.poll(100)
c.disconnect()
import hashlib
print(json.dumps([len(got), got[0][0], hashlib.sha256(got[0][1].encode()).digest().hex()]))
"""
    )
    [out] = device(code, {"port": p.port, "rx": 16400})
    p.finish()
    assert out == [1, "t/acks", hashlib.sha256(payload).hexdigest()]


def test_silent_peer_fails_within_the_deadline(device: RunDevice, peer: Any) -> None:
    # Accepts TCP, reads the CONNECT and never answers.
    def script(conn: socket.socket, log: list[Any]) -> None:
        log.append(read_packet(conn)[0])
        conn.recv(1)  # until the device gives up and closes

    p = peer(script)
    [[what, status, msg, took_ms]] = device(
        CLIENT + 'report("connect", lambda: c.connect())', {"port": p.port, "timeout": 1500}
    )
    log = p.finish()
    assert log[0] == 0x10
    assert (what, status, msg) == ("connect", "error", "timeout: no CONNACK within 1500 ms")
    # It waited its deadline, and did not hang past it (bound far above any load).
    assert 1500 <= took_ms < 1500 + 20000


def test_peer_gone_silent_after_connect_fails_publish_in_time(device: RunDevice, peer: Any) -> None:
    def script(conn: socket.socket, log: list[Any]) -> None:
        read_packet(conn)
        conn.sendall(CONNACK_OK)
        log.append(read_packet(conn)[0])  # PUBLISH, never acked
        conn.recv(1)

    p = peer(script)
    code = (
        CLIENT
        + """
c.connect()
report("publish", lambda: c.publish(b"t", b"m"))
print(json.dumps(c.connected()))
"""
    )
    out = device(code, {"port": p.port, "timeout": 1000})
    p.finish()
    assert out[0][:3] == ["publish", "error", "timeout: no PUBACK within 1000 ms"]
    assert 1000 <= out[0][3] < 1000 + 20000
    assert out[1] is False  # the client closed itself; Delivery reconnects


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"\x20\x02\x00\x05", "broker refused the connection: not authorized"),
        (b"\x20\x02\x00\x04", "broker refused the connection: bad user name or password"),
        (b"\x20\x02\x00\x09", "broker refused the connection: code 9"),
        (b"\x90\x03\x00\x01\x00", "expected CONNACK, got packet type 0x90"),
        (b"\x20\xff\xff\xff\xff\x01", "malformed remaining length"),
        (b"\x20\x02\x00", "connection closed by the broker while reading CONNACK"),
    ],
)
def test_bad_connack(device: RunDevice, peer: Any, reply: bytes, error: str) -> None:
    def script(conn: socket.socket, log: list[Any]) -> None:
        read_packet(conn)
        conn.sendall(reply)
        if reply != b"\x20\x02\x00":
            conn.recv(1)

    p = peer(script)
    [out] = device(CLIENT + 'report("connect", lambda: c.connect())', {"port": p.port})
    p.finish()
    assert out[:3] == ["connect", "error", error]


def test_refused_port_is_a_clear_error(device: RunDevice) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    [out] = device(CLIENT + 'report("connect", lambda: c.connect())', {"port": port})
    assert out[:3] == [
        "connect",
        "error",
        f"cannot connect to 127.0.0.1:{port}: connection refused",
    ]


def test_keepalive_pings_and_dead_link_detected(device: RunDevice, peer: Any) -> None:
    def script(conn: socket.socket, log: list[Any]) -> None:
        read_packet(conn)
        conn.sendall(CONNACK_OK)
        log.append(read_packet(conn))  # first PINGREQ: answered
        conn.sendall(b"\xd0\x00")
        log.append(read_packet(conn))  # second PINGREQ: not answered
        conn.recv(1)

    p = peer(script)
    code = (
        CLIENT
        + """
c.connect()
t0 = time.ticks_ms()
err = None
while time.ticks_diff(time.ticks_ms(), t0) < 30000:
    try:
        c.poll(50)
    except MQTTError as e:
        err = str(e)
        break
print(json.dumps([err, time.ticks_diff(time.ticks_ms(), t0)]))
"""
    )
    [[err, took_ms]] = device(code, {"port": p.port, "keepalive": 1, "timeout": 1000})
    log = p.finish()
    assert log[:2] == [(0xC0, b"\x00", b""), (0xC0, b"\x00", b"")]
    assert err == "no PINGRESP within 1000 ms (link dead)"
    assert took_ms < 30000  # it broke off on the error


# -- TLS against a real mosquitto ---------------------------------------------------

TLS_CONNECT = """
import json, time
from ioconnect.mqtt import MQTTClient, MQTTError
from ioconnect.deliver import Delivery
from ioconnect.outbox import Outbox
cfg = json.load(open("cases.json"))
d = Delivery(Outbox("ob"), client_id="0xtls", host="127.0.0.1", port=cfg["port"],
             server_hostname=cfg["name"], tasks_topic="ioconnect/1/0xtls/tasks",
             acks_topic="ioconnect/1/0xtls/acks", tls=True, ca=cfg["ca"], timeout_ms=10000)
ctx = d._ssl_context()
c = MQTTClient("0xtls", "127.0.0.1", cfg["port"], ssl_context=ctx,
               server_hostname=cfg["name"], timeout_ms=10000)
try:
    c.connect()
    c.subscribe("ioconnect/1/0xtls/acks")
    c.publish(b"ioconnect/1/0xtls/tasks", b'{"nonce": 1}')
    print(json.dumps("ok"))
except MQTTError as e:
    print(json.dumps(str(e)))
"""


@pytest.mark.parametrize(
    ("ca", "name", "want"),
    [
        ("ca.pem", "localhost", "ok"),
        ("ca.der", "localhost", "ok"),
        (
            "wrong.pem",
            "localhost",
            "connect: TLS: server certificate rejected: "
            "The certificate is not correctly signed by the trusted CA",
        ),
        (
            "ca.pem",
            "broker.example",
            "connect: TLS: server certificate rejected: "
            "The certificate Common Name (CN) does not match with the expected CN",
        ),
    ],
)
def test_tls_checks_the_server_certificate(
    device: RunDevice, broker: Broker, tmp_path: Path, ca: str, name: str, want: str
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    shutil.copy(broker.ca, tmp_path / "ca.pem")
    shutil.copy(broker.wrong_ca, tmp_path / "wrong.pem")
    der = x509.load_pem_x509_certificate(broker.ca.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    (tmp_path / "ca.der").write_bytes(der)
    cfg = {"port": broker.tls_port, "ca": ca, "name": name}
    assert device(TLS_CONNECT, cfg, fs_dir=tmp_path) == [want]


def test_tls_without_ca_is_refused(device: RunDevice) -> None:
    code = """
import json
from ioconnect.deliver import Delivery, DeliveryError
from ioconnect.outbox import Outbox
try:
    Delivery(Outbox("ob"), client_id="x", host="h", port=8883, tasks_topic="t",
             acks_topic="a", tls=True)
except DeliveryError as e:
    print(json.dumps(str(e)))
"""
    assert device(code) == ["TLS needs a CA certificate (mqtt.ca): the server is always checked"]


def test_tls_publish_reaches_a_subscriber(
    device: RunDevice, broker: Broker, tmp_path: Path
) -> None:
    import paho.mqtt.client as mqtt

    got: list[bytes] = []
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-watch")
    sub.on_connect = lambda c, *_: c.subscribe("ioconnect/1/0xtls/tasks", qos=1)
    sub.on_subscribe = lambda *_: ready.set()  # the SUBACK: the device's publish reaches us
    sub.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    try:
        assert ready.wait(30)
        import time

        shutil.copy(broker.ca, tmp_path / "ca.pem")
        cfg = {"port": broker.tls_port, "ca": "ca.pem", "name": "localhost"}
        assert device(TLS_CONNECT, cfg, fs_dir=tmp_path) == ["ok"]
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert got == [b'{"nonce": 1}']
    assert json.loads(got[0]) == {"nonce": 1}


def test_password_without_user_is_refused(device: RunDevice) -> None:
    code = """
import json
from ioconnect.mqtt import MQTTClient, MQTTError
try:
    MQTTClient("d", "127.0.0.1", 1883, password="pw")
except MQTTError as e:
    print(json.dumps(str(e)))
"""
    assert device(code) == ["a password needs a user name (MQTT 3.1.1)"]


def test_poll_handles_a_bounded_batch(device: RunDevice, peer: Any) -> None:
    # 40 messages already waiting: one poll() takes 16 and returns, the next ones the rest.
    def script(conn: socket.socket, log: list[Any]) -> None:
        read_packet(conn)
        body = b"\x00\x01t"
        conn.sendall(
            CONNACK_OK
            + b"".join(b"\x30" + _enc(len(body) + 2) + body + b"%02d" % i for i in range(40))
        )
        log.append(read_packet(conn))  # DISCONNECT

    p = peer(script)
    code = (
        CLIENT
        + """
c.connect()
time.sleep_ms(500)
sizes = []
for _ in range(4):
    c.poll(0)
    sizes.append(len(got))
c.disconnect()
print(json.dumps([sizes, [m for _, m in got]]))
"""
    )
    [[sizes, msgs]] = device(code, {"port": p.port})
    p.finish()
    assert sizes == [16, 32, 40, 40]
    assert msgs == [f"{i:02d}" for i in range(40)]
