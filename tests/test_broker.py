"""The demo's broker: mosquitto or the embedded one, each really carrying QoS 1."""

from __future__ import annotations

import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from ioconnect_host.broker import start_broker


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_broker_carries_qos1_and_stops(kind: str) -> None:
    broker = start_broker(kind)  # type: ignore[arg-type]
    try:
        got: list[bytes] = []
        done = threading.Event()

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            got.append(bytes(msg.payload))
            if len(got) == 20:
                done.set()

        protocol = mqtt.MQTTv5 if broker.mqtt_version == "5" else mqtt.MQTTv311
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="s", protocol=protocol)
        sub.on_message = on_message
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("ioconnect/+/+/tasks", qos=1)
        sub.loop_start()
        assert subscribed.wait(30)  # the SUBACK: published from now on reaches us
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="p", protocol=protocol)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for i in range(20):
            pub.publish("ioconnect/1/0xab/tasks", b"m%d" % i, qos=1).wait_for_publish(5)
        assert done.wait(30), got
        assert got == [b"m%d" % i for i in range(20)]
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", broker.port), 1):
        pass


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_broker_restarts_on_its_port(kind: str) -> None:
    broker = start_broker(kind)  # type: ignore[arg-type]
    try:
        closed = threading.Event()

        def probe() -> None:  # the port is really closed while it is down
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not closed.is_set():
                try:
                    socket.create_connection(("127.0.0.1", broker.port), 0.2).close()
                except OSError:
                    closed.set()
                time.sleep(0.05)

        t = threading.Thread(target=probe)
        t.start()
        # A persistent session with a message queued for it while it is away.
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="away",
                          clean_session=kind == "embedded")  # fmt: skip
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("t/1", qos=1)
        sub.loop_start()
        assert subscribed.wait(30)
        sub.disconnect()
        sub.loop_stop()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("t/1", b"kept", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        broker.restart(1.0)
        t.join()
        assert closed.is_set()
        got: list[bytes] = []
        back = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="away", clean_session=False)
        back.on_message = lambda c, u, m: got.append(bytes(m.payload))
        back.connect("127.0.0.1", broker.port)  # listening again on the same port
        back.loop_start()
        deadline = time.monotonic() + 30
        while kind == "mosquitto" and not got and time.monotonic() < deadline:
            time.sleep(0.05)
        back.disconnect()
        back.loop_stop()
        # mosquitto kept the session and its queued message; amqtt keeps nothing.
        assert got == ([b"kept"] if kind == "mosquitto" else [])
    finally:
        broker.stop()
