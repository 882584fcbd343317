"""Real MQTT parts for device tests: a mosquitto broker (plain and TLS listeners,
persistence on, restartable on the same ports), a throwaway CA, a relay-side
acker (paho-mqtt 2.x), and a device VM that runs in the background.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ioconnect_host.firmware import host_build
from ioconnect_host.paths import firmware_dir
from ioconnect_host.vm import DEFAULT_HEAP, micropython_command

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path, cn: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA; its PEM is written to folder/<cn>.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(
    folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[Path, Path]:
    """A server certificate for "localhost" (and 127.0.0.1) signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Broker:
    """mosquitto on 127.0.0.1: ``port`` (plain) and ``tls_port`` (server cert by ``ca``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.tls_port = free_port()
        self.ca, ca_key, ca_cert = make_ca(folder, "ioconnect-test-ca")
        self.wrong_ca, _, _ = make_ca(folder, "some-other-ca")
        cert, key = make_server_cert(folder, ca_key, ca_cert)
        (folder / "db").mkdir()
        self.log = folder / "mosquitto.log"
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            "\n".join(
                [
                    "user root",  # the tests run as any user; keep it (no privilege drop)
                    "persistence true",
                    f"persistence_location {folder / 'db'}/",
                    "autosave_interval 1",
                    f"log_dest file {self.log}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "allow_anonymous true",
                    "max_queued_messages 10000",
                    "set_tcp_nodelay true",
                    f"listener {self.port} 127.0.0.1",
                    f"listener {self.tls_port} 127.0.0.1",
                    f"cafile {self.ca}",
                    f"certfile {cert}",
                    f"keyfile {key}",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err} (log {self.log})")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} (log {self.log})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves the persistence DB
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


AckPolicy = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]


def accept_all(nonce: int, body: dict[str, Any]) -> dict[str, Any] | None:
    return {"nonce": nonce, "status": "accepted", "taskID": f"0x{nonce:064x}"}


@dataclass
class Acker:
    """The relay's side of the protocol: subscribes to every device's tasks, acks by policy."""

    port: int
    policy: AckPolicy = accept_all
    client_id: str = "test-relay"
    received: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        client.subscribe("ioconnect/+/+/tasks", qos=1)

    def _on_subscribe(self, client: mqtt.Client, _u: Any, _mid: Any, _rc: Any, _p: Any) -> None:
        # The SUBACK: the broker routes the devices' readings to us from now on.
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, bytes(msg.payload)))
        body = json.loads(msg.payload)
        ack = self.policy(int(body["nonce"]), body)
        if ack is not None:
            topic = msg.topic.rsplit("/", 1)[0] + "/acks"
            client.publish(topic, json.dumps(ack), qos=1)

    def __enter__(self) -> Acker:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(30):
            raise RuntimeError("acker did not connect and subscribe within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def nonces(self) -> list[int]:
        with self.lock:
            return [int(json.loads(p)["nonce"]) for _, p in self.received]


class DeviceProcess:
    """Device code on the MicroPython VM in the background; stdout read line by line."""

    def __init__(self, code: str, fs_dir: Path, heap: str = DEFAULT_HEAP) -> None:
        fs_dir.mkdir(parents=True, exist_ok=True)
        path = [str(host_build()), str(firmware_dir())]
        env = dict(os.environ, MICROPYPATH=":".join(path))
        self.proc = subprocess.Popen(
            [*micropython_command(heap), "-c", code],
            cwd=fs_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[Any] = []
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(b"")

    def next_line(self, timeout_s: float = 60) -> Any:
        """The next JSON line the device printed (fails with its stderr if it died)."""
        try:
            line = self._queue.get(timeout=timeout_s)
        except queue.Empty as exc:
            msg = f"device printed nothing for {timeout_s} s: {self.lines[-3:]}"
            raise AssertionError(msg) from exc
        if not line:
            self.proc.wait()
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"device exited: {err[-2000:]}\nlast: {self.lines[-3:]}")
        value = _parse(line)
        self.lines.append(value)
        return value

    def wait(self, timeout_s: float = 120) -> list[Any]:
        """All remaining lines once the VM exits; fails with stderr on a non-zero exit."""
        self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        raw = []
        while not self._queue.empty():
            raw.append(self._queue.get_nowait())
        if self.proc.returncode != 0:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            out = b"".join(raw).decode(errors="replace")
            raise AssertionError(
                f"device failed (exit {self.proc.returncode}):\n{out[-3000:]}{err[-2000:]}"
            )
        self.lines.extend(_parse(line) for line in raw if line)
        return self.lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise AssertionError(f"device printed a non-JSON line: {line!r}") from exc


class SimBoard:
    """A virtual board (firmware installed on its flash) driven over its pty by mpremote."""

    def __init__(self, board: str, state_dir: Path, name: str = "dev-net") -> None:
        from ioconnect_sim.launch import start_board
        from mpremote.transport_serial import SerialTransport

        self.vb = start_board(board, name=name, state_dir=state_dir)
        self.flash = state_dir / "flash"
        self.t = SerialTransport(self.vb.port, baudrate=115200)
        self.attach()

    def attach(self) -> None:
        seen = self.t.read_until(1, b">>> ", timeout=60)
        assert seen.endswith(b">>> "), f"no REPL prompt; got {seen[-300:]!r}"
        self.t.enter_raw_repl(soft_reset=False)

    def run(self, code: str, timeout_s: float = 60) -> list[Any]:
        """Run code on the board; every printed line parsed as JSON."""
        ret, err = self.t.exec_raw(code, timeout=timeout_s)
        if err:
            raise AssertionError(f"board raised: {err.decode()}\nprinted: {ret!r}")
        return [_parse(line.encode()) for line in ret.decode().splitlines() if line.strip()]

    def power_cut(self, timeout_s: float = 60) -> None:
        """Kill the VM where it stands; wait for the new boot's REPL."""
        boots = self.vb.boots
        self.vb.power_cut()
        deadline = time.monotonic() + timeout_s
        while self.vb.boots == boots:
            assert time.monotonic() < deadline, "no reboot after the power cut"
            time.sleep(0.01)
        self.attach()

    def close(self) -> None:
        self.t.close()
        self.vb.stop()
