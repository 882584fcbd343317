"""The relay's MQTT side (paho-mqtt 2.x): subscribe, ingest, answer the device.

A message is acknowledged to the broker (PUBACK, manual) only once ingest has
stored or finally judged it; while the store is full the message is held and
retried, and the broker's in-flight window stops the flow (backpressure rather
than loss). MQTT 5 with a persistent session and a shared subscription
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
import time
import urllib.parse
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
    ) -> None:
        """Args:
        sprout: also take devices' sprout messages (their own topic).
        mqtt_version: "5" (shared subscription, session expiry) or "3.1.1" for
            brokers without MQTT 5 (one relay per broker then: no sharing).
        """
        self.broker = parse_broker(broker_url)
        self._v5 = mqtt_version == "5"
        self._log = log
        self.errors = 0
        self.relay = relay
        self._group = group
        self._subscriptions = [SUBSCRIPTION] + ([SPROUT_SUBSCRIPTION] if sprout else [])
        self._held: list[mqtt.MQTTMessage] = []  # stored nothing yet: store was full
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
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
        self._thread = threading.Thread(target=self._held_loop, name="relay-held", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> None:
        if not self.connected.wait(timeout_s):
            b = self.broker
            raise RelayError(f"cannot reach the MQTT broker at {b.host}:{b.port}")

    def stop(self) -> None:
        """Stop taking messages; what was not acknowledged is redelivered later."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(5)
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
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, *args: object) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if self._held:  # keep the order: nothing overtakes a held message
                self._held.append(msg)
                return
        try:
            handled = self._handle(msg)
        except Exception as exc:
            # Not acknowledged: the broker sends it again after the next reconnect.
            self.errors += 1
            self._log(f"ingest of a message on {msg.topic} failed: {exc!r}")
            return
        if not handled:
            with self._lock:
                self._held.append(msg)

    def _handle(self, msg: mqtt.MQTTMessage) -> bool:
        got = self.relay.ingest(msg.topic, bytes(msg.payload))
        if got.kind == "full":
            return False
        if got.ack is not None:
            self._client.publish(ack_topic(got.project, got.device), got.ack, qos=1)
        if msg.qos > 0:
            self._client.ack(msg.mid, msg.qos)
        return True

    # -- messages held while the store was full ----------------------------------
    def _held_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._retry_held()
            except Exception as exc:
                self.errors += 1
                self._log(f"storing a held message failed: {exc!r}")

    def _retry_held(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    return
                msg = self._held[0]
            if not self._handle(msg):
                time.sleep(0.05)
                return
            with self._lock:
                self._held.pop(0)
