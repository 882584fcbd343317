"""The relay's sprout adapter: devices' sprout ``/message`` bodies, signed by the
firmware on a virtual board, go over a real mosquitto to the relay (the same
ingest checks and store as ``/v1/task``), which posts them to a sprout
endpoint (the local node's ``POST /message``, real HTTP) and acks the device.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from brokers import Broker
from ioconnect_host import agent
from ioconnect_host.node import Node, serve
from ioconnect_host.relay import Forwarder, Relay, ack_topic, messages_topic
from ioconnect_host.relay_mqtt import MqttFront
from ioconnect_host.relay_store import SqliteStore


class Device:
    """The device's MQTT side (paho): publishes bodies, collects its acks."""

    def __init__(self, port: int, address: str) -> None:
        self.address = address
        self.acks: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=address)
        self.client.on_connect = lambda c, *a: (
            c.subscribe(ack_topic("9", address), 1),
            ready.set(),
        )
        self.client.on_message = self._ack
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(30)

    def _ack(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.acks.append(json.loads(msg.payload))

    def send(self, body: bytes, timeout_s: float = 30) -> dict[str, Any]:
        """Publish one message and wait for its ack (one in flight, as the firmware)."""
        n = len(self.acks)
        self.client.publish(messages_topic("9", self.address), body, qos=1).wait_for_publish(30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.acks) > n:
                    return self.acks[n]
            time.sleep(0.05)
        raise AssertionError(f"no ack for {body[:80]!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_firmware_signed_sprout_messages_are_relayed_once(
    tmp_path: Path, broker: Broker, board: agent.Board
) -> None:
    address = agent.identity_create(board, "secp256k1")["address"]

    def sign(nonce: int, reading: float) -> bytes:
        data = json.dumps({"nonce": nonce, "t": reading})
        req = agent.sign(board, "sprout", project_id=9, project_version="0.1", payload=data)
        return str(req["request"]).encode()

    def approved(project: str, a: str) -> bool:
        return (project, a) == ("9", address)

    node = Node(tmp_path / "node.db", approved=approved)
    server = serve(node)
    url = f"http://127.0.0.1:{server.port}"
    store = SqliteStore(tmp_path / "relay.db")
    relay = Relay(store, approved=approved, sprout=True)
    front = MqttFront(
        relay, f"mqtt://127.0.0.1:{broker.port}", client_id=f"sprout-{uuid.uuid4().hex[:8]}",
        group=f"test-{uuid.uuid4().hex[:12]}", sprout=True,
    )  # fmt: skip
    # The W3bstream URL leads nowhere: sprout messages must go to the sprout URL.
    fwd = Forwarder(store, "http://127.0.0.1:9", sprout_url=url, workers=2)
    front.start()
    front.wait_connected(30)
    fwd.start()
    dev = Device(broker.port, address)
    try:
        bodies = [sign(n, 20.0 + n) for n in (1, 2, 3, 5)]
        for b in bodies:
            assert dev.send(b)["status"] == "queued"
        copy = dev.send(bodies[1])  # answered with the stored one's status, stored once
        assert copy["nonce"] == 2 and copy["status"] in ("queued", "accepted")
        refused = dev.send(sign(2, 99.0))  # nonce 2 again, other data
        assert (refused["status"], refused["reason"]) == ("rejected", "nonce_reused")
        refused = dev.send(sign(4, 99.0))  # below the high-water mark: a reorder
        assert (refused["status"], refused["reason"]) == ("rejected", "replayed_nonce")
        # Signed by the device, published as another: dropped, never acked to it.
        dev.client.publish(messages_topic("9", "0x" + "11" * 20), sign(6, 1.0), qos=1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            store.stats()["accepted"] < 4 or "forged_signature" not in store.stats()["rejections"]  # type: ignore[operator]
        ):
            time.sleep(0.1)
        assert store.stats()["accepted"] == 4
        # Forwarder workers post concurrently: the node's arrival order is free.
        got = {json.loads(m["data"])["nonce"]: m["taskID"] for m in node.messages_of(address)}
        assert sorted(got) == [1, 2, 3, 5] and len(node.messages_of(address)) == 4
        with sqlite3.connect(tmp_path / "relay.db") as db:
            ids = dict(db.execute("SELECT nonce, task_id FROM messages WHERE status='accepted'"))
        assert ids == got  # the node's answers, stored
        with sqlite3.connect(tmp_path / "node.db") as db:
            bodies_at_node = [bytes(r[0]) for r in db.execute("SELECT body FROM sprout_messages")]
        assert sorted(bodies_at_node) == sorted(bodies)  # byte for byte what was signed
    finally:
        dev.close()
        fwd.stop()
        front.stop()
        server.stop()
        store.close()
        node.close()
