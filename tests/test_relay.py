"""The relay: store rules, ingest verdicts, and the whole path over a real mosquitto
and real HTTP to the local node, with faults and exact accounting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import Broker
from ioconnect_host import w3bstream as w3b
from ioconnect_host.relay import Relay, tasks_topic
from ioconnect_host.relay_store import RelayStore, open_store
from relayparts import (
    DEVICE,
    OTHER,
    FakeDeviceLink,
    Pipeline,
    approve_device,
    body,
    wait_tasks,
)

# --- the store (SQLite and PostgreSQL: store_spec, tests/pgcluster.py) -------------


def test_store_admits_once_and_keeps_the_high_water_mark(store_spec: str | Path) -> None:
    store = open_store(store_spec, max_queue=2)
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
    again = open_store(store_spec)  # persisted
    dup = again.admit(DEVICE, "42", 5, b"a")
    assert (dup.kind, dup.status, dup.task_id) == ("duplicate", "accepted", "0xaa")
    again.count_rejection("forged_signature")
    assert again.stats()["rejections"] == {"replayed_nonce": 1, "forged_signature": 1}
    assert again.stats()["queued"] == 1
    again.close()


# --- ingest verdicts ------------------------------------------------------------


@pytest.fixture
def relay(store_spec: str | Path) -> Iterator[Relay]:
    store: RelayStore = open_store(store_spec)
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
    elif kind == "stored":  # durably queued: the device may let it go
        assert json.loads(got.ack or b"") == {"nonce": 1, "status": "queued"}
    else:
        assert got.ack is None  # never answer a device for a message it did not sign
    if reason:
        assert relay.store.stats()["rejections"] == {reason: 1}


def test_replays_and_reorders(relay: Relay) -> None:
    assert relay.ingest(topic(), body(2)).kind == "stored"
    again = relay.ingest(topic(), body(2))  # a lost ack: the same answer again
    assert again.kind == "duplicate"
    assert json.loads(again.ack or b"") == {"nonce": 2, "status": "queued"}
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


@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
def test_every_reading_reaches_the_node_once_through_faults(
    tmp_path: Path,
    broker: Broker,
    mqtt_version: str,
) -> None:
    pipe = Pipeline(tmp_path, broker.port, mqtt_version)
    dev = FakeDeviceLink(broker.port)
    try:
        for n in range(1, 6):
            dev.send(body(n, f'{{"t":{n}}}'))
        # The node is down: readings queue and are retried, not lost or refused.
        pipe.node_down()
        for n in range(6, 11):
            dev.send(body(n, f'{{"t":{n}}}'))  # stored by the relay while the node is down
        deadline = time.monotonic() + 30
        while pipe.fwd.retries == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        pipe.node_up()
        wait_tasks(pipe.node, 10)
        assert pipe.fwd.retries > 0  # the outage was felt and ridden out
        # The relay is killed; the device publishes 11 meanwhile (one in flight).
        pipe.stop_relay()
        dev.publish(body(11, '{"t":11}'))
        pipe.start_relay()
        dev.wait_acks(11)
        for n in range(12, 14):
            dev.send(body(n, f'{{"t":{n}}}'))
        # A copy of 10 (its ack was lost): answered again, not forwarded again.
        dev.publish(body(10, '{"t":10}'))
        # The broker restarts mid-stream.
        broker.restart()
        for n in range(14, 17):
            dev.send(body(n, f'{{"t":{n}}}'), timeout_s=60)
        acks = dev.wait_acks(16, timeout_s=60)
        assert sorted(acks) == list(range(1, 17))
        assert {a["status"] for a in acks.values()} <= {"queued", "accepted"}
        tasks = wait_tasks(pipe.node, 16)
        assert [t["nonce"] for t in tasks] == list(range(1, 17))  # each exactly once
        deadline = time.monotonic() + 60  # the last answer may still be on its way
        while pipe.store.stats()["queued"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = pipe.store.stats()
        assert (stats["accepted"], stats["queued"], stats["dead_letters"]) == (16, 0, 0)
    finally:
        dev.close()
        pipe.close()


# --- the commands, as a user runs them --------------------------------------------


def _wait_line(proc: subprocess.Popen[str], words: str, timeout_s: float = 60) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if words in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {words!r} in the output: {''.join(seen)!r}")


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
        return str(resp.read().decode())


def test_node_and_relay_commands(tmp_path: Path, broker: Broker) -> None:
    from brokers import free_port

    node_port, metrics_port = free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "ioconnect_host.cli"]
    node = subprocess.Popen(
        [*cmd, "node", "--port", str(node_port), "--db", str(tmp_path / "n.db"),
         "--approve", DEVICE, "--inventory", str(tmp_path / "none")],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    relay = subprocess.Popen(
        [*cmd, "relay", "--broker", f"mqtt://127.0.0.1:{broker.port}",
         "--w3bstream", f"http://127.0.0.1:{node_port}", "--store", str(tmp_path / "r.db"),
         "--approve-all", "--metrics-port", str(metrics_port), "--client-id", "cli-relay"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    dev = None
    try:
        _wait_line(node, "W3bstream node on")
        _wait_line(relay, "relaying")
        dev = FakeDeviceLink(broker.port)
        for n in (1, 2, 3):
            dev.publish(body(n))
        dev.publish(body(1, key=OTHER), keep=False)  # forged: names DEVICE, signed by another
        acks = dev.wait_acks(3)
        assert {a["status"] for a in acks.values()} == {"queued"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 'accepted"} 3' not in metrics_text(metrics_port):
            time.sleep(0.1)
        metrics = metrics_text(metrics_port)
        assert 'ioconnect_relay_messages{status="accepted"} 3' in metrics
        assert 'ioconnect_relay_rejections_total{reason="forged_signature"} 1' in metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{node_port}/v1/devices") as resp:
            assert json.loads(resp.read())["devices"][0]["tasks"] == 3
    finally:
        if dev:
            dev.close()
        for proc in (relay, node):
            proc.send_signal(signal.SIGTERM)
    assert relay.wait(20) == 0
    assert node.wait(20) == 0
    assert "stopped" in (relay.stderr.read() if relay.stderr else "")


def test_relay_command_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from ioconnect_host.cli import main

    common = ["--w3bstream", "http://127.0.0.1:9", "--store", str(tmp_path / "r.db")]
    cases = [
        (["relay", "--broker", "ftp://x", *common, "--approve-all"], "is not mqtt://"),
        (["relay", "--broker", "mqtt://127.0.0.1:1", *common,
          "--inventory", str(tmp_path / "none.db")], "no inventory at"),
        (["relay", "--broker", "mqtt://h", "--w3bstream", "ftp://x", "--approve-all",
          "--store", str(tmp_path / "r.db")], "is not http(s)://"),
        (["relay", "--broker", "mqtt://h", *common, "--approve-all", "--signed-keys", "x"],
         "is not PROJECT=key"),
        (["relay", "--broker", "mqtt://h", "--w3bstream", "http://127.0.0.1:9",
          "--approve-all", "--store", "postgresql://relay:secret@127.0.0.1:1/relay"],
         "cannot open the relay store postgresql://relay@127.0.0.1:1/relay"),
        (["node", "--db", str(tmp_path), "--approve", DEVICE], "is a folder"),
        (["node", "--approve", "0x12"], "is not a 0x address"),
    ]  # fmt: skip
    for argv, words in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (argv, err)
