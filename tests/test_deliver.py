"""Delivery (ioconnect.deliver) on the MicroPython VM at 96 KB heap, against a
real mosquitto and a relay-side acker (paho-mqtt): nonce order, acks empty the
outbox, broker restart mid-run, no ack, rejections, a full outbox while
offline, and a Wi-Fi drop on the virtual board.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from brokers import Acker, Broker, DeviceProcess, SimBoard, accept_all, free_port
from conftest import RunDevice

# A device: its reading bodies have the shape of POST /v1/task.
SETUP = """
import json, time, gc
from ioconnect.outbox import Outbox
from ioconnect.deliver import Delivery
from ioconnect.nonce import NonceStore
cfg = json.load(open("cases.json"))
ADDR = cfg["addr"]
# The MQTT client id: the address on a real device; here with a suffix of this run's
# own, as the broker (shared by the test session) keeps each persistent session and
# the acks queued for it, which a later test under the same id would be handed.
import os, binascii
CLIENT = "%s-%s" % (ADDR, binascii.hexlify(os.urandom(4)).decode())
ob = Outbox("outbox", cfg.get("capacity", 64))
ns = NonceStore("nonce.dat", 32)
def delivery(port, **kw):
    return Delivery(ob, client_id=CLIENT, host="127.0.0.1", port=port,
                    tasks_topic="ioconnect/42/%s/tasks" % ADDR,
                    acks_topic="ioconnect/42/%s/acks" % ADDR, timeout_ms=10000, **kw)
def reading():
    n = ns.next()
    body = '{"nonce":%d,"projectID":"42","payload":{"t":%d},"signature":"0x%s"}' % (
        n, 20 + n % 7, "ab" * 64)
    ob.put(n, body.encode())
    return n
def drain(d, limit_ms):
    t0 = time.ticks_ms()
    while len(ob) and time.ticks_diff(time.ticks_ms(), t0) < limit_ms:
        d.step(200)
def report(d):
    print(json.dumps({"stats": d.stats, "pending": ob.pending(), "dropped": ob.dropped}))
"""


def addr(n: int) -> str:
    return f"0x{n:040x}"


def client_id(address: str) -> str:
    """A device's MQTT client id for one test (see CLIENT in SETUP)."""
    return f"{address}-{uuid.uuid4().hex[:8]}"


def expected_body(n: int) -> bytes:
    return b'{"nonce":%d,"projectID":"42","payload":{"t":%d},"signature":"0x%s"}' % (
        n,
        20 + n % 7,
        b"ab" * 64,
    )


@pytest.mark.parametrize("tls", [False, True])
def test_every_reading_arrives_in_nonce_order_and_acks_empty_the_outbox(
    device: RunDevice, broker: Broker, tmp_path: Path, tls: bool
) -> None:
    shutil.copy(broker.ca, tmp_path / "ca.pem")
    code = (
        SETUP
        + """
kw = {"tls": True, "ca": "ca.pem", "server_hostname": "localhost"} if cfg["tls"] else {}
d = delivery(cfg["tls_port"] if cfg["tls"] else cfg["port"], **kw)
for i in range(40):
    reading()
    d.step(20)
drain(d, 60000)
report(d)
"""
    )
    cfg = {"port": broker.port, "tls_port": broker.tls_port, "tls": tls, "addr": addr(1 + tls)}
    with Acker(broker.port, client_id=f"relay-order-{tls}") as acker:
        [res] = device(code, cfg, fs_dir=tmp_path)
        received = list(acker.received)
    assert [json.loads(p)["nonce"] for _, p in received] == list(range(1, 41))
    assert all(t == f"ioconnect/42/{addr(1 + tls)}/tasks" for t, _ in received)
    assert [p for _, p in received] == [expected_body(n) for n in range(1, 41)]
    st = res["stats"]
    assert (st["published"], st["acked"], st["rejected"], st["connects"]) == (40, 40, 0, 1)
    assert res["pending"] == [] and res["dropped"] == 0
    assert st["last_error"] is None
    assert list((tmp_path / "outbox").iterdir()) == []
    assert json.loads(received[0][1])["nonce"] == 1


def test_broker_restart_mid_run_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    code = (
        SETUP
        + """
d = delivery(cfg["port"])
for i in range(60):
    reading()
    d.step(50)
    print(json.dumps({"i": i, "connected": d.connected(), "pending": len(ob)}))
drain(d, 30000)
report(d)
"""
    )
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "cases.json").write_text(json.dumps({"port": broker.port, "addr": addr(12)}))
    with Acker(broker.port, client_id="relay-restart") as acker:
        dev = DeviceProcess(code, tmp_path / "fs")
        try:
            while dev.next_line()["i"] < 20:
                pass
            broker.restart(down_s=1.0)
            lines = dev.wait(120)
        finally:
            dev.kill()
        time.sleep(0.3)
        nonces = acker.nonces()
    res = lines[-1]
    steps = lines[:-1]
    # The device saw the broker go, kept producing, and came back.
    assert any(not s["connected"] for s in steps)
    assert res["stats"]["reconnects"] >= 1 and res["stats"]["last_error"]
    assert res["pending"] == [] and res["dropped"] == 0
    assert res["stats"]["acked"] == 60
    # Nothing lost; first arrivals in nonce order (republished ones come again later).
    assert set(nonces) == set(range(1, 61))
    first = list(dict.fromkeys(nonces))
    assert first == list(range(1, 61))


def test_no_ack_keeps_readings_and_resends_after_silence(
    device: RunDevice, broker: Broker, tmp_path: Path
) -> None:
    code = (
        SETUP
        + """
d = delivery(cfg["port"], window=8)
for i in range(5):
    reading()
t0 = time.ticks_ms()
while d.stats["published"] < 5 and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    d.step(100)
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 1000:  # no ack comes meanwhile
    d.step(100)
report(d)
d.client.disconnect()
d2 = delivery(cfg["port"], resend_s=1, window=8)
t0 = time.ticks_ms()
while d2.stats["published"] < 10 and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    d2.step(100)
report(d2)
"""
    )
    with Acker(broker.port, policy=lambda n, b: None, client_id="relay-silent") as acker:
        first, second = device(code, {"port": broker.port, "addr": addr(3)}, fs_dir=tmp_path)
        time.sleep(0.3)
        nonces = acker.nonces()
    # PUBACKs came from the broker, but no relay ack: every reading stays.
    assert first["pending"] == [1, 2, 3, 4, 5]
    assert first["stats"]["published"] == 5 and first["stats"]["acked"] == 0
    # Silence for resend_s: published again, in order, still kept.
    assert second["pending"] == [1, 2, 3, 4, 5]
    assert second["stats"]["published"] >= 10
    assert nonces[:10] == [1, 2, 3, 4, 5] * 2
    assert sorted((p.name for p in (tmp_path / "outbox").iterdir()), key=int) == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]


def test_rejections_counted_by_reason_and_removed(
    device: RunDevice, broker: Broker, tmp_path: Path
) -> None:
    def policy(n: int, body: dict[str, Any]) -> dict[str, Any] | None:
        if n % 3 == 0:
            return {"nonce": n, "status": "rejected", "reason": "device not approved"}
        if n == 4:
            return {"nonce": n, "status": "rejected", "reason": "bad signature"}
        if n == 5:
            return {"nonce": n, "status": "pending"}  # not final: kept
        return {"nonce": n, "status": "accepted", "taskID": "0x01"}

    code = (
        SETUP
        + """
d = delivery(cfg["port"], window=16)
for i in range(9):
    reading()
t0 = time.ticks_ms()
while len(ob) > 1 and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    d.step(200)
# Garbage on the acks topic is counted, never fatal.
while d.stats["bad_acks"] < 4 and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    d.step(200)
report(d)
"""
    )
    topic = f"ioconnect/42/{addr(4)}/acks"

    acker = Acker(broker.port, policy=policy, client_id="relay-reject")

    def garbage() -> None:
        # Once a reading came, the device has subscribed to its acks (it subscribes
        # before it publishes): what is published now reaches it.
        deadline = time.monotonic() + 60
        while not acker.nonces() and time.monotonic() < deadline:
            time.sleep(0.05)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id("garbage"))
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for payload in (b"not json", b'{"status": "accepted"}', b"[1, 2]"):
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()

    thread = threading.Thread(target=garbage)
    with acker:
        thread.start()
        [res] = device(code, {"port": broker.port, "addr": addr(4)}, fs_dir=tmp_path)
        thread.join()
    st = res["stats"]
    assert res["pending"] == [5]
    assert (st["acked"], st["rejected"]) == (4, 4)  # accepted 1, 2, 7, 8
    assert st["rejected_reasons"] == {"device not approved": 3, "bad signature": 1}
    assert st["bad_acks"] >= 4  # three pieces of garbage and the "pending" status


def test_full_outbox_while_offline_then_newest_delivered_in_order(
    device: RunDevice, broker: Broker, tmp_path: Path
) -> None:
    dead = free_port()
    code = (
        SETUP
        + """
from ioconnect.net import Backoff
off = delivery(cfg["dead"], backoff=Backoff(1, 1))
for i in range(10):
    reading()
    off.step(50)
    time.sleep_ms(2)
report(off)
d = delivery(cfg["port"])
drain(d, 10000)
report(d)
"""
    )
    with Acker(broker.port, client_id="relay-full") as acker:
        offline, online = device(
            code,
            {"port": broker.port, "dead": dead, "addr": addr(5), "capacity": 4},
            fs_dir=tmp_path,
        )
        time.sleep(0.3)
        nonces = acker.nonces()
    assert offline["pending"] == [7, 8, 9, 10] and offline["dropped"] == 6
    assert offline["stats"]["published"] == 0
    assert (
        offline["stats"]["last_error"] == f"cannot connect to 127.0.0.1:{dead}: connection refused"
    )
    assert online["pending"] == [] and online["dropped"] == 6
    assert nonces == [7, 8, 9, 10]


def test_delivery_keys_in_config(device: RunDevice) -> None:
    code = """
import json
from ioconnect import config
for key, value in json.load(open("cases.json")):
    try:
        print(json.dumps([key, config.put(key, value)]))
    except config.ConfigError as e:
        print(json.dumps([key, "error: " + str(e)]))
print(json.dumps(config.value("mqtt.password")))
"""
    cases = [
        ["mqtt.tls", True],
        ["mqtt.tls", 1],
        ["mqtt.ca", "ca.der"],
        ["mqtt.user", "dev"],
        ["mqtt.password", "s3cret"],
        ["mqtt.keepalive_s", 5],
        ["mqtt.keepalive_s", 120],
        ["outbox.capacity", 0],
        ["outbox.capacity", 256],
    ]
    out = device(code, cases)
    assert out == [
        ["mqtt.tls", True],
        ["mqtt.tls", "error: mqtt.tls must be true or false"],
        ["mqtt.ca", "ca.der"],
        ["mqtt.user", "dev"],
        ["mqtt.password", "<set>"],
        ["mqtt.keepalive_s", "error: mqtt.keepalive_s must be an integer in 10..3600"],
        ["mqtt.keepalive_s", 120],
        ["outbox.capacity", "error: outbox.capacity must be an integer in 1..1024"],
        ["outbox.capacity", 256],
        "s3cret",
    ]


# -- the virtual board's Wi-Fi ----------------------------------------------------


@pytest.fixture
def board(tmp_path: Path) -> Iterator[SimBoard]:
    b = SimBoard("esp32", tmp_path / "board", name="deliver-board")
    yield b
    b.close()


WIFI_SETUP = """
import json, time
from ioconnect.net import wifi_up, Station, Backoff, station_up
from ioconnect.outbox import Outbox
from ioconnect.deliver import Delivery
from ioconnect.nonce import NonceStore
st = Station("ioconnect-sim", "", Backoff(100, 400))
ob = Outbox("outbox", 32)
ns = NonceStore("nonce.dat", 8)
d = Delivery(ob, client_id="%s", host="127.0.0.1", port=%d,
             tasks_topic="ioconnect/42/%s/tasks", acks_topic="ioconnect/42/%s/acks",
             timeout_ms=10000, backoff=Backoff(100, 400))
def run(readings, ms):
    t0 = time.ticks_ms()
    for i in range(readings):
        n = ns.next()
        ob.put(n, b'{"nonce":%%d}' %% n)
    while time.ticks_diff(time.ticks_ms(), t0) < ms:
        st.up(500)
        d.step(100)
        if not len(ob):
            break
    # "up": the station is joined now (the last st.up() may have timed out on a
    # join that completed right after it, and delivery went on meanwhile).
    print(json.dumps({"up": station_up(), "connected": d.connected(), "pending": ob.pending(),
                      "stats": d.stats}))
"""


def test_delivery_survives_a_wifi_drop(board: SimBoard, broker: Broker) -> None:
    a = addr(6)
    with Acker(broker.port, client_id="relay-wifi") as acker:
        board.run(WIFI_SETUP % (client_id(a), broker.port, a, a))
        [before] = board.run("run(3, 30000)")
        assert before["up"] and before["connected"] and before["pending"] == []
        board.vb.set_fault(wifi="down")
        try:
            [down] = board.run("run(4, 1500)")
        finally:
            board.vb.set_fault(wifi="up")
        [after] = board.run("run(0, 30000)")
        time.sleep(0.3)
        nonces = acker.nonces()
    # While the AP is gone: no exception, readings kept, the error recorded.
    assert not down["up"] and not down["connected"]
    assert down["pending"] == [4, 5, 6, 7]
    assert down["stats"]["last_error"]
    # Back: rejoined, reconnected, everything delivered in order.
    assert after["up"] and after["connected"] and after["pending"] == []
    assert after["stats"]["reconnects"] >= 1 and after["stats"]["acked"] == 7
    assert list(dict.fromkeys(nonces)) == [1, 2, 3, 4, 5, 6, 7]


def test_no_connects_into_a_dead_network_and_at_once_when_it_is_back(
    board: SimBoard, broker: Broker
) -> None:
    # A 30 s first backoff: had the device tried (and failed) while the station
    # was down, it would not try again within the 15 s after the station returns.
    a = addr(7)
    with Acker(broker.port, client_id="relay-wifi-back") as acker:
        setup = WIFI_SETUP % (client_id(a), broker.port, a, a)
        board.run(setup.replace("backoff=Backoff(100, 400)", "backoff=Backoff(30000, 60000)"))
        [before] = board.run("run(2, 30000)")
        assert before["connected"] and before["pending"] == []
        board.vb.set_fault(wifi="down")
        try:
            [down] = board.run("run(2, 3000)")
        finally:
            board.vb.set_fault(wifi="up")
        [after] = board.run("run(0, 15000)")
        time.sleep(0.3)
        nonces = acker.nonces()
    assert not down["connected"] and down["pending"] == [3, 4]
    assert down["stats"]["failed_connects"] == 0  # nothing tried through a dead network
    assert after["connected"] and after["pending"] == []
    assert list(dict.fromkeys(nonces)) == [1, 2, 3, 4]


def test_link_dropped_while_the_app_slept_is_reconnected_in_the_same_step(
    device: RunDevice, broker: Broker, tmp_path: Path
) -> None:
    # keepalive 1 s and no step: the broker cuts the link (1.5 x keepalive).
    # The next step finds it dead, reconnects at once (the link had served > 5 s)
    # and delivers the new reading within its own budget.
    code = (
        SETUP
        + """
d = delivery(cfg["port"], keepalive_s=1)
d.step(100)
first = d.connected()
# Sleep (no step) until the broker has cut the link: its keepalive check runs
# on its own clock, later under load. Polling the socket reads nothing from it.
import select
p = select.poll()
p.register(d.client._sock, select.POLLIN)
t0 = time.ticks_ms()
while not p.poll(500) and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    pass
p = None
time.sleep_ms(5500)  # and past _STABLE_MS since the link came up
reading()
d.step(20000)  # returns as soon as the reading is acked
print(json.dumps({"first": first, "connected": d.connected(), "pending": ob.pending(),
                  "stats": d.stats}))
"""
    )
    with Acker(broker.port, client_id="relay-sleepy") as acker:
        [res] = device(code, {"port": broker.port, "addr": addr(7)}, fs_dir=tmp_path)
        time.sleep(0.3)
        nonces = acker.nonces()
    assert res["first"] and res["connected"]
    assert res["pending"] == [] and res["stats"]["reconnects"] == 1
    assert res["stats"]["last_error"].startswith("connection closed by the broker")
    assert nonces == [1]


def test_acks_sent_while_offline_arrive_with_the_persistent_session(
    broker: Broker, tmp_path: Path
) -> None:
    # The device publishes and drops the link before the relay's acks come back;
    # the broker keeps them for its session (clean session off) and hands them
    # over on reconnect: the outbox empties without the relay seeing a resend.
    code = (
        SETUP
        + """
import os
d = delivery(cfg["port"])
for i in range(5):
    reading()
d._connect()
for n in ob.pending():
    d._publish(n)  # PUBLISH and the broker's PUBACK; the relay's acks come later
d.client.close()  # gone without DISCONNECT
published = d.stats["published"]
print(json.dumps({"gone": True}))
# Offline until the host has seen the broker route all five acks (so they are
# queued for this session): the file "go" appears then.
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 60000:
    try:
        os.stat("go")
        break
    except OSError:
        time.sleep_ms(20)
t0 = time.ticks_ms()
while len(ob) and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    d.step(200)
print(json.dumps({"published_before": published, "pending": ob.pending(), "stats": d.stats}))
"""
    )

    def slow_relay(n: int, body: dict[str, Any]) -> dict[str, Any] | None:
        time.sleep(0.2)  # acks reach the broker after the device has left
        return accept_all(n, body)

    # Another subscriber to the device's acks topic: an ack it got, the broker has
    # also queued for the device's session.
    routed: list[bytes] = []
    ready = threading.Event()
    watch = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id("acks-watch"))
    watch.on_subscribe = lambda *a: ready.set()
    watch.on_message = lambda c, u, m: routed.append(bytes(m.payload))
    watch.connect("127.0.0.1", broker.port)
    watch.subscribe(f"ioconnect/42/{addr(8)}/acks", qos=1)
    watch.loop_start()
    fs = tmp_path / "fs"
    fs.mkdir()
    (fs / "cases.json").write_text(json.dumps({"port": broker.port, "addr": addr(8)}))
    try:
        assert ready.wait(30)
        with Acker(broker.port, policy=slow_relay, client_id="relay-offline-acks") as acker:
            dev = DeviceProcess(code, fs)
            try:
                assert dev.next_line() == {"gone": True}
                deadline = time.monotonic() + 60
                while len(routed) < 5 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert len(routed) == 5, routed
                (fs / "go").touch()
                [_, res] = dev.wait(120)
            finally:
                dev.kill()
            nonces = acker.nonces()
    finally:
        watch.disconnect()
        watch.loop_stop()
    assert res["published_before"] == 5
    assert res["pending"] == [] and res["stats"]["acked"] == 5
    assert res["stats"]["connects"] == 2
    # Applied from the session's queue before anything was published again.
    assert res["stats"]["published"] == 5 and nonces == [1, 2, 3, 4, 5]


def test_wrong_ca_is_an_error_in_stats_never_an_exception(
    device: RunDevice, broker: Broker, tmp_path: Path
) -> None:
    shutil.copy(broker.wrong_ca, tmp_path / "ca.pem")
    code = (
        SETUP
        + """
from ioconnect.net import Backoff
d = delivery(cfg["port"], tls=True, ca="ca.pem", server_hostname="localhost",
             backoff=Backoff(1, 1))
reading()
for i in range(3):
    d.step(100)
    time.sleep_ms(5)
report(d)
"""
    )
    [res] = device(code, {"port": broker.tls_port, "addr": addr(9)}, fs_dir=tmp_path)
    assert res["pending"] == [1]
    assert res["stats"]["connects"] == 0 and res["stats"]["published"] == 0
    assert res["stats"]["last_error"] == (
        "connect: TLS: server certificate rejected: "
        "The certificate is not correctly signed by the trusted CA"
    )


def test_from_config_builds_the_protocol_topics(device: RunDevice, broker: Broker) -> None:
    code = """
import json
from ioconnect import config
from ioconnect.deliver import from_config, topics, DeliveryError
from ioconnect.outbox import Outbox
ob = Outbox("ob")
try:
    from_config(ob, "0xAB", "42")
except DeliveryError as e:
    print(json.dumps(str(e)))
cfg = json.load(open("cases.json"))
config.put("mqtt.host", "127.0.0.1")
config.put("mqtt.port", cfg["port"])
config.put("mqtt.keepalive_s", 30)
d = from_config(ob, "0xAbCd", "42")
c = d.client
print(json.dumps([topics("7", "0xAB"), d.tasks_topic.decode(), d.acks_topic.decode(),
                  c.client_id.decode(), c.port, c.keepalive_s, d.tls]))
ob.put(1, b'{"nonce":1}')
d.step(2000)
print(json.dumps([d.stats["connects"], d.stats["published"], d.stats["last_error"]]))
config.put("mqtt.tls", True)
config.put("mqtt.port", None)
d = from_config(ob, "0xAbCd", "42")
print(json.dumps([d.tls, d.ca, d.client.port]))  # the CA `ioconnect provision --ca` wrote
"""
    out = device(code, {"port": broker.port})
    assert out == [
        "mqtt.host is not set",
        [
            ["ioconnect/7/0xab/tasks", "ioconnect/7/0xab/acks"],
            "ioconnect/42/0xabcd/tasks",
            "ioconnect/42/0xabcd/acks",
            "0xabcd",
            broker.port,
            30,
            False,
        ],
        [1, 1, None],
        [True, "ca.pem", 8883],
    ]


def test_device_to_relay_to_node_end_to_end(
    device: RunDevice, broker: Broker, tmp_path: Path
) -> None:
    # The real relay (tests/test_relay.py's Pipeline: MqttFront, Forwarder, node over
    # HTTP) answers the device firmware's Delivery: signed bodies (made here, as the
    # attestation layer would on the device) leave the outbox only on its acks.
    from relayparts import DEVICE, Pipeline, wait_tasks
    from relayparts import body as signed_body

    fs = tmp_path / "fs"
    (fs / "outbox").mkdir(parents=True)
    for n in range(1, 6):
        (fs / "outbox" / str(n)).write_bytes(signed_body(n, f'{{"t":{n}}}'))
    # A reading the relay must refuse: same device, a project it does not sign for.
    (fs / "outbox" / "6").write_bytes(signed_body(6, '{"t":6}', project="43"))
    code = """
import json, time
from ioconnect.outbox import Outbox
from ioconnect.deliver import Delivery, topics
cfg = json.load(open("cases.json"))
ob = Outbox("outbox")
tasks, acks = topics("42", cfg["addr"])
d = Delivery(ob, client_id=cfg["client"], host="127.0.0.1", port=cfg["port"],
             tasks_topic=tasks, acks_topic=acks, timeout_ms=10000)
t0 = time.ticks_ms()
while len(ob) and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    d.step(200)
print(json.dumps({"pending": ob.pending(), "stats": d.stats}))
"""
    (tmp_path / "relay").mkdir()
    pipe = Pipeline(tmp_path / "relay", broker.port)
    try:
        # A client id of its own: the broker is shared by the test session, and a
        # session another test left under the device's address would hand over
        # that test's acks (a full run once saw 3 refusals where 1 is due).
        client = f"{DEVICE}-{uuid.uuid4().hex[:8]}"
        [res] = device(code, {"port": broker.port, "addr": DEVICE, "client": client}, fs_dir=fs)
        tasks = wait_tasks(pipe.node, 5)
    finally:
        pipe.close()
    st = res["stats"]
    assert res["pending"] == []
    # The relay acks once stored ("queued"). A reading sent again (a reconnect on a
    # loaded machine) after the node took it is answered "accepted": one full CI run
    # saw (queued, acked) = (4, 1). Either way each left the outbox on a relay's ack.
    # (A cause that fits, reproduced in a fixed order: every Pipeline shared one MQTT
    # session, which brought earlier tests' copies of these very readings; see
    # relayparts.Pipeline.)
    assert (st["queued"] + st["acked"], st["rejected"]) == (5, 1)
    assert st["rejected_reasons"] == {"wrong_project": 1}
    assert [t["nonce"] for t in tasks] == [1, 2, 3, 4, 5]  # each reached the node once


def test_one_reading_out_at_a_time_by_default(
    device: RunDevice, broker: Broker, tmp_path: Path
) -> None:
    """Window 1: the next reading goes out only after the relay's ack of the last, so
    relays sharing a subscription never see one device's nonces out of order."""
    code = (
        SETUP
        + """
d = delivery(cfg["port"])
for i in range(4):
    reading()
t0 = time.ticks_ms()
while d.stats["queued"] < 2 and time.ticks_diff(time.ticks_ms(), t0) < 30000:
    d.step(100)
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 1500:  # 3 is out, unacked: 4 must wait
    d.step(100)
report(d)
"""
    )
    acked: list[int] = []

    def policy(n: int, body: dict[str, Any]) -> dict[str, Any] | None:
        if n <= 2:  # the relay stores 1 and 2, then stops answering
            acked.append(n)
            return {"nonce": n, "status": "queued"}
        return None

    with Acker(broker.port, policy=policy, client_id="relay-window") as acker:
        [res] = device(code, {"port": broker.port, "addr": addr(9)}, fs_dir=tmp_path)
        time.sleep(0.3)
        nonces = acker.nonces()
    assert nonces == [1, 2, 3]  # 4 waits for 3's ack
    assert res["pending"] == [3, 4]
    assert (res["stats"]["queued"], res["stats"]["published"]) == (2, 3)
