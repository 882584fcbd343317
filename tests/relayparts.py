"""Parts for relay tests: a device key and its signed requests, the device's MQTT
side played by paho, and a restartable relay + node pipeline on a broker."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coincurve
import paho.mqtt.client as mqtt
from ioconnect_host import w3bstream as w3b
from ioconnect_host.node import Node, serve
from ioconnect_host.relay import Forwarder, Relay, ack_topic, tasks_topic
from ioconnect_host.relay_mqtt import MqttFront
from ioconnect_host.relay_store import open_store

KEY = coincurve.PrivateKey(hashlib.sha256(b"relay test device").digest())
DEVICE = w3b.address_of(KEY.public_key.format())
OTHER = coincurve.PrivateKey(hashlib.sha256(b"a forger").digest())
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def body(
    nonce: int,
    payload: str = '{"t":1}',
    *,
    key: coincurve.PrivateKey = KEY,
    project: str = "42",
    high_s: bool = False,
) -> bytes:
    unsigned = w3b.parse_task(
        b'{"nonce":%d,"projectID":"%s","payload":%s,"signature":"0x%s"}'
        % (nonce, project.encode(), payload.encode(), b"00" * 64)
    )
    sig = key.sign_recoverable(w3b.task_digest(unsigned), hasher=None)[:64]
    if high_s:
        sig = sig[:32] + (N - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    return w3b.signed_bytes(unsigned)[:-1] + b',"signature":"0x' + sig.hex().encode() + b'"}'


def approve_device(project: str, address: str) -> bool:
    return (project, address) == ("42", DEVICE)


@dataclass
class FakeDeviceLink:
    """The device's MQTT side, played by paho: publishes signed bodies, collects acks.
    ``key``: whose device (the address, topics and client id follow from it)."""

    port: int
    key: coincurve.PrivateKey = KEY
    acks: dict[int, dict[str, Any]] = field(default_factory=dict)
    ack_count: int = 0
    sent: dict[int, bytes] = field(default_factory=dict)
    resent: int = 0

    def __post_init__(self) -> None:
        self.address = w3b.address_of(self.key.public_key.format())
        self.lock = threading.Lock()
        self.ready = threading.Event()
        # A persistent session (it must outlive broker restarts), under an id of
        # its own: the broker is shared by a test session, and a session left by
        # another test under the device's address would hand over that test's acks.
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{self.address}-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.on_connect = lambda c, *a: c.subscribe(ack_topic("42", self.address), 1)
        self.client.on_subscribe = lambda c, *a: self.ready.set()  # the SUBACK: acks reach us
        self.client.on_message = self._ack
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.ready.wait(30), "the device link did not connect and subscribe in 30 s"

    def _ack(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ack = json.loads(msg.payload)
        with self.lock:
            self.ack_count += 1
            self.acks.setdefault(ack["nonce"], ack)

    def publish(self, payload: bytes, *, keep: bool = True) -> None:
        """``keep=False``: not published again by the waits below (a forgery, say:
        it would take its nonce's place there and be counted twice by the relay)."""
        if keep:
            self.sent[json.loads(payload)["nonce"]] = payload
        deadline = time.monotonic() + 15
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.publish(tasks_topic("42", self.address), payload, qos=1).wait_for_publish(10)

    def send(self, payload: bytes, timeout_s: float = 60) -> dict[str, Any]:
        """Publish one reading and wait for its ack, as the firmware does (window 1:
        relays on a shared subscription must see a device's nonces in order, a
        nonce below the high-water mark is refused as a replay)."""
        nonce = json.loads(payload)["nonce"]
        self.publish(payload)
        return self._wait(lambda: nonce in self.acks, f"the ack of {nonce}", timeout_s)[nonce]

    def wait_acks(self, n: int, timeout_s: float = 60) -> dict[int, dict[str, Any]]:
        """Wait for n acks (publishing again what stays unacknowledged, see _wait)."""
        return self._wait(lambda: len(self.acks) >= n, f"{n} acks", timeout_s)

    def _wait(
        self, done: Callable[[], bool], what: str, timeout_s: float
    ) -> dict[int, dict[str, Any]]:
        # Like the firmware, publish again what stays unacknowledged (a broker
        # restart can lose a message published before the relay's shared
        # subscription is back: mosquitto 2.0 does not keep those for offline members).
        deadline = time.monotonic() + timeout_s
        resend_at = time.monotonic() + 3
        while time.monotonic() < deadline:
            with self.lock:
                if done():
                    return dict(self.acks)
                missing = [p for k, p in sorted(self.sent.items()) if k not in self.acks]
            if time.monotonic() > resend_at:
                self.resent += len(missing)
                for payload in missing:
                    self.publish(payload)
                resend_at = time.monotonic() + 3
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout_s:g} s; acks: {sorted(self.acks)}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_tasks(node: Node, n: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = node.tasks_of(DEVICE)
        if len(tasks) >= n:
            return tasks
        time.sleep(0.05)
    raise AssertionError(f"the node has {len(node.tasks_of(DEVICE))} of {n} tasks")


class Pipeline:
    """Relay + forwarder + node, each restartable, on one broker."""

    def __init__(
        self, tmp: Path, broker_port: int, mqtt_version: str = "5", store: str | None = None
    ) -> None:
        """``store``: what ``--store`` takes (default: a SQLite file in ``tmp``)."""
        self.mqtt_version = mqtt_version
        self.tmp = tmp
        # A share group of its own: the broker lives for the session and keeps this
        # relay's persistent session after the test; in a shared group it would
        # take its turn at later tests' readings (the CLI relay's, say) and hold them.
        self.group = f"test-{uuid.uuid4().hex[:12]}"
        # And a client id of its own, kept across start_relay (its session must
        # outlive a relay restart): under a fixed id the next test's relay took over
        # this one's persistent session, with its subscription and every reading the
        # broker had queued for it since (earlier tests' nonces of the same device
        # came into a fresh store and turned the device's own into duplicates).
        self.client_id = f"relay-under-test-{uuid.uuid4().hex[:8]}"
        self.broker_url = f"mqtt://127.0.0.1:{broker_port}"
        self.node = Node(tmp / "node.db", approved=approve_device)
        self.server = serve(self.node)
        self.node_port = self.server.port
        self.store = open_store(store or tmp / "relay.db")
        self.start_relay()

    def start_relay(self) -> None:
        self.relay = Relay(self.store, approved=approve_device)
        self.front = MqttFront(
            self.relay, self.broker_url, client_id=self.client_id, group=self.group,
            mqtt_version="5" if self.mqtt_version == "5" else "3.1.1",
        )  # fmt: skip
        self.fwd = Forwarder(self.store, f"http://127.0.0.1:{self.node_port}", workers=2)
        self.front.start()
        self.front.wait_connected(10)
        self.fwd.start()

    def stop_relay(self) -> None:
        self.fwd.stop()
        self.front.stop()

    def node_down(self) -> None:
        self.server.stop()

    def node_up(self) -> None:
        self.server = serve(self.node, port=self.node_port)

    def close(self) -> None:
        self.stop_relay()
        self.node_down()
        self.store.close()
        self.node.close()
