"""Relays sharing one store: admission races between stores (each its own
connection, as two relay processes are), and two relay processes on one
mosquitto's shared subscription over PostgreSQL, SIGKILLed and restarted at
random while devices publish: every reading reaches the node exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import coincurve
from brokers import Broker, free_port
from ioconnect_host import w3bstream as w3b
from ioconnect_host.relay_store import Admission, Submission, open_store
from pgcluster import PgCluster
from relayparts import DEVICE, FakeDeviceLink, Pipeline, body, wait_tasks


def _together(n: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` in n threads released at once; their results (or exceptions)."""
    gate = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = work(i)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_the_same_reading_at_once_is_stored_by_one_relay(store_spec: str | Path) -> None:
    relays = [open_store(store_spec) for _ in range(4)]
    try:
        for nonce in range(1, 31):
            got = _together(4, lambda i, n=nonce: relays[i].admit(DEVICE, "42", n, b"r%d" % n))
            assert not [g for g in got if isinstance(g, Exception)], got
            kinds = sorted(g.kind for g in got)
            assert kinds == ["duplicate", "duplicate", "duplicate", "queued"], (nonce, got)
        assert relays[0].stats()["queued"] == 30
    finally:
        for r in relays:
            r.close()


def test_a_lower_nonce_after_a_higher_one_is_refused_between_relays(
    store_spec: str | Path,
) -> None:
    relays = [open_store(store_spec) for _ in range(2)]
    try:
        outcomes: list[tuple[int, Admission]] = []
        for hi in range(2, 80, 2):
            # Relay 0 gets hi, relay 1 the lower hi - 1, at the same moment.
            got = _together(2, lambda i, hi=hi: relays[i].admit(DEVICE, "42", hi - i, b"%d" % hi))
            assert not [g for g in got if isinstance(g, Exception)], got
            outcomes += [(hi, got[0]), (hi - 1, got[1])]
        for nonce, adm in outcomes:
            assert adm.kind in ("queued", "rejected"), (nonce, adm)
            if adm.kind == "rejected":
                assert (nonce % 2, adm.reason) == (1, "replayed_nonce"), (nonce, adm)
        assert all(adm.kind == "queued" for n, adm in outcomes if n % 2 == 0)
        # In the order they were stored, the device's nonces only grow: a lower one
        # never got in after a higher one.
        jobs = sorted(relays[0].claim(limit=1000, lease_s=60), key=lambda j: j.id)
        stored = [j.nonce for j in jobs]
        assert stored == sorted(stored) and len(stored) == len(set(stored)), stored
        assert len(stored) == sum(adm.kind == "queued" for _, adm in outcomes)
    finally:
        for r in relays:
            r.close()


def test_batches_of_two_relays_in_opposite_orders_do_not_deadlock(
    store_spec: str | Path,
) -> None:
    relays = [open_store(store_spec) for _ in range(2)]
    devices = [f"0x{i:040x}" for i in range(1, 21)]
    try:
        for nonce in range(1, 11):

            def batch(i: int, nonce: int = nonce) -> list[Admission]:
                order = devices if i == 0 else devices[::-1]
                return relays[i].admit_many(
                    [Submission(d, "42", nonce, b"%d" % nonce) for d in order],
                    rejected=["forged_signature", "malformed"][:: 1 if i == 0 else -1],
                )

            got = _together(2, batch)
            assert not [g for g in got if isinstance(g, Exception)], got
            # Per device, one relay stored it and the other found it; results come
            # back in the order asked.
            for k, d in enumerate(devices):
                pair = sorted([got[0][k].kind, got[1][len(devices) - 1 - k].kind])
                assert pair == ["duplicate", "queued"], (d, pair)
        stats = relays[0].stats()
        assert stats["queued"] == 200
        assert stats["rejections"] == {"forged_signature": 20, "malformed": 20}
    finally:
        for r in relays:
            r.close()


# --- two relay processes, one PostgreSQL, killed at random -------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ioconnect_host.cli", *args]


class _Service:
    """A command in the background, its output in a log file per start."""

    def __init__(self, name: str, cmd: list[str], folder: Path) -> None:
        self.name, self.cmd, self.folder = name, cmd, folder
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / f"{name}.log"

    def start(self, ready: str, timeout_s: float = 60) -> None:
        self.starts += 1
        self.log = self.folder / f"{self.name}.{self.starts}.log"
        with self.log.open("wb") as out:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=out, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready: {self.log.read_text(errors='replace')}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _node_counts(port: int) -> dict[str, tuple[int, int]]:
    """Per device address: (tasks stored, highest nonce), from the node over HTTP."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/devices", timeout=10) as resp:
        devices = json.loads(resp.read())["devices"]
    return {d["address"]: (d["tasks"], d["last_nonce"]) for d in devices}


def test_two_relay_processes_killed_at_random_deliver_each_reading_once(
    tmp_path: Path, postgres_url: str
) -> None:
    kills_wanted, enough = 6, threading.Event()
    keys = [coincurve.PrivateKey(hashlib.sha256(b"pg relay %d" % i).digest()) for i in range(4)]
    addresses = [w3b.address_of(k.public_key.format()) for k in keys]
    (tmp_path / "mqtt").mkdir()
    broker = Broker(tmp_path / "mqtt")  # its own: no other test's relay in the share group
    broker.start()
    node_port = free_port()
    approve = [a for addr in addresses for a in ("--approve", addr)]
    node_args = ["--port", str(node_port), "--db", str(tmp_path / "n.db"),
                 "--inventory", str(tmp_path / "none"), *approve]  # fmt: skip
    node = _Service("node", _cli("node", *node_args), tmp_path)
    relay_args = ["--broker", f"mqtt://127.0.0.1:{broker.port}",
                  "--w3bstream", f"http://127.0.0.1:{node_port}",
                  "--store", postgres_url, "--approve-all"]  # fmt: skip
    relays = [
        _Service(name, _cli("relay", *relay_args, "--client-id", name), tmp_path)
        for name in ("relay-a", "relay-b")
    ]
    devices: list[FakeDeviceLink] = []
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    kills = 0
    try:
        node.start("W3bstream node on")
        for r in relays:
            r.start("relaying")
        devices = [FakeDeviceLink(broker.port, key=k) for k in keys]
        failures: list[BaseException] = []

        def publish(dev: FakeDeviceLink) -> None:
            n = 0
            try:
                while not enough.is_set():  # one in flight, as the firmware
                    n += 1
                    dev.send(body(n, f'{{"t":{n}}}', key=dev.key), timeout_s=180)
                    time.sleep(0.02)
            except BaseException as exc:
                failures.append(exc)

        publishers = [threading.Thread(target=publish, args=(d,)) for d in devices]
        for t in publishers:
            t.start()
        while kills < kills_wanted and not failures:
            time.sleep(rng.uniform(0.5, 3.0))
            victim = rng.choice(relays)
            victim.kill()  # SIGKILL: no goodbye, mid-batch or mid-post
            # Down for a while: its share of the readings waits at the broker, and
            # once down longer than the devices' 3 s patience: they publish again
            # (the copies the other relay stores), the broker redelivers the
            # originals when it is back (duplicates to answer, not to store).
            time.sleep(5.0 if kills == 0 else rng.uniform(0.0, 4.0))
            kills += 1
            victim.start("relaying")
        enough.set()
        for t in publishers:
            t.join(300)
        assert not failures, (seed, failures)
        sent = {dev.address: max(dev.sent) for dev in devices}
        assert sum(dev.resent for dev in devices) > 0  # the long outage was felt
        # Every reading at the node exactly once (its nonce is unique per device:
        # n tasks with the highest nonce n are 1..n).
        # A post cut by a kill is retried by the other relay after its lease (30 s).
        want = {a: (n, n) for a, n in sent.items()}
        deadline = time.monotonic() + 180
        while _node_counts(node_port) != want and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _node_counts(node_port) == want, seed
        for dev in devices:
            assert sorted(dev.acks) == list(range(1, sent[dev.address] + 1))
            assert {a["status"] for a in dev.acks.values()} <= {"queued", "accepted"}, seed
        store = open_store(postgres_url)
        try:
            deadline = time.monotonic() + 120  # the last taskIDs may still be on their way
            while store.stats()["queued"] and time.monotonic() < deadline:
                time.sleep(0.2)
            stats = store.stats()
        finally:
            store.close()
        total = sum(sent.values())
        assert (stats["accepted"], stats["queued"], stats["dead_letters"]) == (total, 0, 0), seed
        assert stats["rejections"] == {}, seed  # nothing refused as a replay or reorder
    finally:
        for dev in devices:
            dev.close()
        for s in (*relays, node):
            s.stop()
        broker.stop()


# --- the store itself goes away ----------------------------------------------------


def test_a_postgresql_outage_holds_acks_and_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    cluster = PgCluster()  # its own: this test stops and starts it
    pipe = Pipeline(tmp_path, broker.port, store=cluster.new_database())
    dev = FakeDeviceLink(broker.port)
    try:
        for n in (1, 2, 3):
            dev.send(body(n, f'{{"t":{n}}}'))
        wait_tasks(pipe.node, 3)
        cluster.pause()
        dev.publish(body(4, '{"t":4}'))
        # The relay got it and failed to store it twice (it tries again after 1 s):
        # an ack wrongly sent on the first try has had that second to arrive.
        deadline = time.monotonic() + 60
        while pipe.front.errors < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipe.front.errors >= 2
        assert 4 not in dev.acks  # so acknowledged nothing: no "queued" before a commit
        cluster.resume()  # the relay's connections come back by themselves
        dev.wait_acks(4, timeout_s=60)
        for n in (5, 6):
            dev.send(body(n, f'{{"t":{n}}}'), timeout_s=60)
        tasks = wait_tasks(pipe.node, 6, timeout_s=60)
        assert [t["nonce"] for t in tasks] == [1, 2, 3, 4, 5, 6]
        assert {a["status"] for a in dev.acks.values()} <= {"queued", "accepted"}
    finally:
        dev.close()
        pipe.close()
        cluster.stop()
