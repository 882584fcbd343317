"""The relay's MQTT side (paho-mqtt 2.x): subscribe, ingest, answer the device.

A message is acknowledged to the broker (PUBACK, manual) only once ingest has
stored or finally judged it. One ingest thread takes every message waiting
(up to ``max_batch``) and stores them in one transaction (group commit: under
load many readings share one disk flush; alone, a reading waits for no
other), then sends their acks in arrival order. While the store is full the
messages are held and retried, and the broker's in-flight window stops the
flow (backpressure rather than loss). MQTT 5 with a persistent session and a shared subscription
(``$share/<group>/ioconnect/+/+/tasks``) so several relays split the load and a
restarted relay gets what was queued for it.

Example:
    >>> front = MqttFront(relay, "mqtt://127.0.0.1:1883")
    >>> front.start()
    >>> front.stop()
"""

from __future__ import annotations

import ssl
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .relay import Relay, RelayError, ack_topic

__all__ = ["Broker", "MqttFront", "parse_broker"]

SUBSCRIPTION = "ioconnect/+/+/tasks"
SPROUT_SUBSCRIPTION = "ioconnect/+/+/messages"  # sprout /message bodies (--sprout)


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool


def parse_broker(url: str) -> Broker:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]``.

    Raises:
        RelayError: another scheme or no host.
    """
    p = urllib.parse.urlsplit(url if "://" in url else "mqtt://" + url)
    if p.scheme not in ("mqtt", "mqtts") or not p.hostname:
        raise RelayError(f"broker URL {url!r} is not mqtt://host[:port] or mqtts://host[:port]")
    try:
        port = p.port or (8883 if p.scheme == "mqtts" else 1883)
    except ValueError:
        raise RelayError(f"broker URL {url!r} has a bad port") from None
    return Broker(p.hostname, port, p.scheme == "mqtts")


class MqttFront:
    """Feeds MQTT messages to :meth:`Relay.ingest` and sends the devices' acks."""

    def __init__(
        self,
        relay: Relay,
        broker_url: str,
        *,
        client_id: str = "ioconnect-relay",
        group: str = "ioconnect",
        ca_file: str | None = None,
        session_expiry_s: int = 7 * 24 * 3600,
        log: Callable[[str], None] = print,
        mqtt_version: Literal["5", "3.1.1"] = "5",
        sprout: bool = False,
        max_batch: int = 256,
    ) -> None:
        """Args:
        sprout: also take devices' sprout messages (their own topic).
        mqtt_version: "5" (shared subscription, session expiry) or "3.1.1" for
            brokers without MQTT 5 (one relay per broker then: no sharing).
        max_batch: most messages stored in one transaction.
        """
        self.broker = parse_broker(broker_url)
        self._v5 = mqtt_version == "5"
        self._log = log
        self.errors = 0
        self.relay = relay
        self._group = group
        self._subscriptions = [SUBSCRIPTION] + ([SPROUT_SUBSCRIPTION] if sprout else [])
        self._max_batch = max_batch
        # Received, not yet acknowledged, in arrival order, each with the number of
        # the connection it came on (a PUBACK belongs to that connection only).
        self._pending: deque[tuple[int, mqtt.MQTTMessage]] = deque()
        self._link = 0
        self._more = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        if self.broker.tls:
            c.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client = c
        self._expiry = session_expiry_s

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._expiry
            self._client.connect_async(
                self.broker.host, self.broker.port, keepalive=30, clean_start=False,
                properties=props,
            )  # fmt: skip
        else:
            self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._ingest_loop, name="relay-ingest", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> None:
        if not self.connected.wait(timeout_s):
            b = self.broker
            raise RelayError(f"cannot reach the MQTT broker at {b.host}:{b.port}")

    def stop(self) -> None:
        """Stop taking messages; what was not acknowledged is redelivered later."""
        self._stop.set()
        with self._more:
            self._more.notify()
        if self._thread:
            self._thread.join(30)  # the batch being stored is finished and acknowledged
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (network thread) ---------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            return
        for sub in self._subscriptions:
            client.subscribe(f"$share/{self._group}/{sub}" if self._v5 else sub, qos=1)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, *args: object) -> None:
        self.connected.clear()
        with self._more:
            # What came on the old link is sent again by the broker on the next one.
            self._link += 1

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._more:
            self._pending.append((self._link, msg))
            self._more.notify()

    # -- the ingest thread: batches in, acks out ------------------------------------
    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            with self._more:
                if not self._pending:
                    self._more.wait(0.5)
                batch = [self._pending[i] for i in range(min(len(self._pending), self._max_batch))]
            if not batch:
                continue
            try:
                done = self._handle(batch)
            except Exception as exc:
                # Nothing of the batch acknowledged: it is tried again (the store may
                # be restarting); the broker keeps it meanwhile.
                self.errors += 1
                self._log(f"ingest of {len(batch)} message(s) failed: {exc!r}")
                self._stop.wait(1.0)
                continue
            with self._more:
                for _ in range(done):
                    self._pending.popleft()
            if done < len(batch):
                self._stop.wait(0.05)  # the store is full: wait for the forwarder

    def _handle(self, batch: list[tuple[int, mqtt.MQTTMessage]]) -> int:
        """Ingest a batch; acknowledge in order up to the first one the full store
        could not take. Returns how many are done."""
        got = self.relay.ingest_many([(m.topic, bytes(m.payload)) for _, m in batch])
        with self._more:
            link = self._link
        for n, ((came_on, msg), ingested) in enumerate(zip(batch, got, strict=True)):
            if ingested.kind == "full":
                return n
            if ingested.ack is not None:
                topic = ack_topic(ingested.project, ingested.device)
                self._client.publish(topic, ingested.ack, qos=1)
            if msg.qos > 0 and came_on == link:
                self._client.ack(msg.mid, msg.qos)
        return len(batch)
