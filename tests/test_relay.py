"""The relay: store rules, ingest verdicts, and the whole path over a real mosquitto
and real HTTP to the local node, with faults and exact accounting."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coincurve
import paho.mqtt.client as mqtt
import pytest
from brokers import Broker, broker  # noqa: F401 - the session broker fixture
from ioconnect_host import w3bstream as w3b
from ioconnect_host.node import Node, serve
from ioconnect_host.relay import Forwarder, Relay, ack_topic, tasks_topic
from ioconnect_host.relay_mqtt import MqttFront
from ioconnect_host.relay_store import SqliteStore

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


# --- the store ------------------------------------------------------------------


def test_store_admits_once_and_keeps_the_high_water_mark(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "r.db", max_queue=2)
    assert store.admit(DEVICE, "42", 5, b"a").kind == "queued"
    dup = store.admit(DEVICE, "42", 5, b"a")
    assert (dup.kind, dup.status) == ("duplicate", "queued")
    assert store.admit(DEVICE, "42", 4, b"x").reason == "replayed_nonce"
    assert store.admit(DEVICE, "42", 6, b"b").kind == "queued"
    assert store.admit(DEVICE, "42", 7, b"c").kind == "full"  # bound 2, nothing marked
    jobs = store.claim(limit=10, lease_s=60)
    assert [j.nonce for j in jobs] == [5, 6]
    assert store.claim(limit=10, lease_s=60) == []  # leased
    store.finish(jobs[0].id, "accepted", task_id="0xaa", reason="")
    store.close()
    again = SqliteStore(tmp_path / "r.db")  # persisted
    dup = again.admit(DEVICE, "42", 5, b"a")
    assert (dup.kind, dup.status, dup.task_id) == ("duplicate", "accepted", "0xaa")
    assert [(f.nonce, f.status) for f in again.unacked()] == [(5, "accepted")]
    again.mark_acked([f.id for f in again.unacked()])
    assert again.unacked() == []
    again.count_rejection("forged_signature")
    assert again.stats()["rejections"] == {"forged_signature": 1}
    assert again.stats()["queued"] == 1


# --- ingest verdicts ------------------------------------------------------------


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    store = SqliteStore(tmp_path / "relay.db")
    yield Relay(store, approved=approve_device)
    store.close()


def topic(project: str = "42", device: str = DEVICE) -> str:
    return tasks_topic(project, device)


@pytest.mark.parametrize(
    ("tpc", "payload", "kind", "reason"),
    [
        ("ioconnect/42/nobody/tasks", body(1), "dropped", "bad_topic"),
        (topic(), body(1, key=OTHER), "dropped", "forged_signature"),
        (topic(), body(1, high_s=True), "dropped", "high_s"),
        (topic(), b"{not json", "dropped", "malformed"),
        (topic(), b'{"a":"' + b"x" * 70000 + b'"}', "dropped", "oversize"),
        (topic(), body(1, project="43"), "rejected", "wrong_project"),
        (topic("43"), body(1, project="43"), "rejected", "not_approved"),
        (
            topic(device=w3b.address_of(OTHER.public_key.format())),
            body(1, key=OTHER),
            "rejected",
            "not_approved",
        ),
        (topic(), body(1, '"abcd"'), "stored", ""),
    ],
)
def test_ingest_verdicts(relay: Relay, tpc: str, payload: bytes, kind: str, reason: str) -> None:
    got = relay.ingest(tpc, payload)
    assert (got.kind, got.reason) == (kind, reason)
    if kind == "rejected":  # genuine: the device is told, with the reason
        assert json.loads(got.ack or b"") == {"nonce": 1, "status": "rejected", "reason": reason}
    else:
        assert got.ack is None  # never answer a device for a message it did not sign
    if reason:
        assert relay.store.stats()["rejections"] == {reason: 1}


def test_replays_and_reorders(relay: Relay) -> None:
    assert relay.ingest(topic(), body(2)).kind == "stored"
    again = relay.ingest(topic(), body(2))
    assert (again.kind, again.ack) == ("duplicate", None)  # not final yet: no ack
    late = relay.ingest(topic(), body(1))
    assert (late.kind, late.reason) == ("rejected", "replayed_nonce")
    assert json.loads(late.ack or b"")["status"] == "rejected"
    reused = relay.ingest(topic(), body(2, '{"t":2}'))  # same nonce, another reading
    assert (reused.kind, reused.reason) == ("rejected", "nonce_reused")
    assert relay.store.stats()["rejections"] == {"replayed_nonce": 1, "nonce_reused": 1}
    [job] = relay.store.claim(limit=5, lease_s=5)
    relay.store.finish(job.id, "accepted", task_id="0x01", reason="")
    final = relay.ingest(topic(), body(2))
    assert json.loads(final.ack or b"") == {"nonce": 2, "status": "accepted", "taskID": "0x01"}


# --- the whole path: device (paho) -> mosquitto -> relay -> HTTP -> node -----------


@dataclass
class FakeDeviceLink:
    """The device's MQTT side, played by paho: publishes signed bodies, collects acks."""

    port: int
    acks: dict[int, dict[str, Any]] = field(default_factory=dict)
    ack_count: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE, clean_session=False
        )
        self.client.on_connect = lambda c, *a: (
            c.subscribe(ack_topic("42", DEVICE), 1),
            self.ready.set(),
        )
        self.client.on_message = self._ack
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.ready.wait(10)
        time.sleep(0.1)

    def _ack(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ack = json.loads(msg.payload)
        with self.lock:
            self.ack_count += 1
            self.acks.setdefault(ack["nonce"], ack)

    def publish(self, payload: bytes) -> None:
        deadline = time.monotonic() + 15
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.publish(tasks_topic("42", DEVICE), payload, qos=1).wait_for_publish(10)

    def wait_acks(self, n: int, timeout_s: float = 30) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.acks) >= n:
                    return dict(self.acks)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.acks)} of {n} acks arrived: {sorted(self.acks)}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Pipeline:
    """Relay + forwarder + node, each restartable, on one broker."""

    def __init__(self, tmp: Path, broker_port: int) -> None:
        self.tmp = tmp
        self.broker_url = f"mqtt://127.0.0.1:{broker_port}"
        self.node = Node(tmp / "node.db", approved=approve_device)
        self.server = serve(self.node)
        self.node_port = self.server.port
        self.store = SqliteStore(tmp / "relay.db")
        self.start_relay()

    def start_relay(self) -> None:
        self.relay = Relay(self.store, approved=approve_device)
        self.front = MqttFront(self.relay, self.broker_url, client_id="relay-under-test")
        self.fwd = Forwarder(
            self.store,
            f"http://127.0.0.1:{self.node_port}",
            workers=2,
            on_final=self.front.final_status_ready,
        )
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


def test_every_reading_reaches_the_node_once_through_faults(
    tmp_path: Path,
    broker: Broker,  # noqa: F811
) -> None:
    pipe = Pipeline(tmp_path, broker.port)
    dev = FakeDeviceLink(broker.port)
    try:
        for n in range(1, 6):
            dev.publish(body(n, f'{{"t":{n}}}'))
        acks = dev.wait_acks(5)
        # The node is down: readings queue and are retried, not lost or refused.
        pipe.node_down()
        for n in range(6, 11):
            dev.publish(body(n, f'{{"t":{n}}}'))
        time.sleep(1.5)
        pipe.node_up()
        acks = dev.wait_acks(10)
        assert pipe.fwd.retries > 0  # the outage was felt and ridden out
        # The relay is killed and restarted, the device sends a copy of 10 (lost ack).
        pipe.stop_relay()
        for n in range(11, 14):
            dev.publish(body(n, f'{{"t":{n}}}'))
        pipe.start_relay()
        dev.publish(body(10, '{"t":10}'))
        # The broker restarts mid-stream.
        broker.restart()
        for n in range(14, 17):
            dev.publish(body(n, f'{{"t":{n}}}'))
        acks = dev.wait_acks(16, timeout_s=60)
        assert sorted(acks) == list(range(1, 17))
        assert {a["status"] for a in acks.values()} == {"accepted"}
        tasks = pipe.node.tasks_of(DEVICE)
        assert [t["nonce"] for t in tasks] == list(range(1, 17))  # each exactly once
        assert all(acks[t["nonce"]]["taskID"] == t["taskID"] for t in tasks)
        assert pipe.store.stats()["accepted"] == 16
    finally:
        dev.close()
        pipe.close()
