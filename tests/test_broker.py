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
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("ioconnect/+/+/tasks", qos=1)
        sub.loop_start()
        time.sleep(0.3)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="p", protocol=protocol)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for i in range(20):
            pub.publish("ioconnect/1/0xab/tasks", b"m%d" % i, qos=1).wait_for_publish(5)
        assert done.wait(10), got
        assert got == [b"m%d" % i for i in range(20)]
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", broker.port), 1):
        pass
