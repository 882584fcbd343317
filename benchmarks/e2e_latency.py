"""End-to-end latency, printed as JSON: a device publishes a signed reading ->
mosquitto -> the relay (verify, durable store, ack) -> the local W3bstream node
(POST /v1/task) -> the taskID stored by the relay. p50/p99/max per setup.

Two setups, named in the JSON:

- ``simulated_links``: N device links (default 100), each a paho MQTT client
  with its own key signing with coincurve (as tests/relayparts.py's
  FakeDeviceLink), all publishing at once every interval, one reading in flight
  each (as the firmware's window 1). The relay and the node run as separate
  ``ioconnect relay`` / ``ioconnect node`` processes. Latency: the link's
  publish call -> the relay store's ``finished`` time (taskID stored).
- ``virtual_boards``: M full virtual boards (the real firmware on the
  MicroPython VM, esp32-s3) provisioned and attesting in their own loop, via
  ``ioconnect demo``'s library (relay and node in its process). Latency: a
  plain subscriber's first sight of the device's publish at the broker ->
  taskID stored (the console's ``signed`` event, read late on a loaded host,
  is no good clock).

Each setup also counts readings lost (published, never given a taskID) and
stored twice. Machine facts (CPU count, load average) go in the JSON too.

    python benchmarks/e2e_latency.py [--links 100] [--rounds 20] [--boards 10]
        [--board-messages 10] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import coincurve
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from brokers import Broker, free_port
from ioconnect_host import w3bstream as w3b
from ioconnect_host.relay import ack_topic, tasks_topic

PROJECT = "42"


def _stats(latencies_s: list[float]) -> dict[str, Any]:
    if not latencies_s:
        return {"samples": 0}
    ms = sorted(x * 1000 for x in latencies_s)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {
        "samples": len(ms),
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
        "min_ms": round(ms[0], 1),
        "max_ms": round(ms[-1], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def _finished(store: Path) -> dict[tuple[str, int], tuple[float | None, str]]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT device, nonce, finished, status FROM messages").fetchall()
    return {(d, n): (f, s) for d, n, f, s in rows}


# --- simulated device links ------------------------------------------------------


class Link:
    """One device's MQTT side: its key, its client, one reading in flight."""

    def __init__(self, i: int, port: int) -> None:
        self.key = coincurve.PrivateKey(hashlib.sha256(b"e2e bench device %d" % i).digest())
        self.address = w3b.address_of(self.key.public_key.format())
        self.published: dict[int, float] = {}
        self.acked_at: dict[int, float] = {}
        self.acked = threading.Event()
        self.want = 0
        self.resent = 0
        ready = threading.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.address, clean_session=False
        )
        topic = ack_topic(PROJECT, self.address)
        c.on_connect = lambda cl, *a: (cl.subscribe(topic, 1), ready.set())
        c.on_message = self._ack
        c.connect("127.0.0.1", port)
        c.loop_start()
        if not ready.wait(30):
            raise RuntimeError(f"link {i} did not connect")
        self.client = c

    def _ack(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonce = json.loads(msg.payload).get("nonce")
        if nonce == self.want:
            self.acked_at.setdefault(nonce, time.time())
            self.acked.set()

    def body(self, nonce: int) -> bytes:
        payload = b'{"timestamp":%d,"t":21.5}' % int(time.time())
        unsigned = w3b.parse_task(
            b'{"nonce":%d,"projectID":"%s","payload":%s,"signature":"0x%s"}'
            % (nonce, PROJECT.encode(), payload, b"00" * 64)
        )
        sig = self.key.sign_recoverable(w3b.task_digest(unsigned), hasher=None)[:64]
        return w3b.signed_bytes(unsigned)[:-1] + b',"signature":"0x' + sig.hex().encode() + b'"}'

    def run(self, rounds: int, interval_s: float, start_at: float) -> None:
        topic = tasks_topic(PROJECT, self.address)
        for n in range(1, rounds + 1):
            body = self.body(n)  # signed before the clock starts: latency is transport
            time.sleep(max(0.0, start_at + (n - 1) * interval_s - time.time()))
            self.want = n
            self.acked.clear()
            self.published[n] = time.time()
            self.client.publish(topic, body, qos=1)
            while not self.acked.wait(10):  # as the firmware: resend when no ack
                self.resent += 1
                self.client.publish(topic, body, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def simulated_links(links: int, rounds: int, interval_s: float, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="e2e-links-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "mosquitto").mkdir()
        broker = Broker(tmp / "mosquitto")
        broker.start()
        node_port = free_port()
        cli = [sys.executable, "-m", "ioconnect_host.cli"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        procs: list[subprocess.Popen[bytes]] = []
        devices: list[Link] = []
        try:
            keys = [
                w3b.address_of(
                    coincurve.PrivateKey(
                        hashlib.sha256(b"e2e bench device %d" % i).digest()
                    ).public_key.format()
                )
                for i in range(links)
            ]
            approve = [a for k in keys for a in ("--approve", k)]
            procs.append(subprocess.Popen(
                [*cli, "node", "--port", str(node_port), "--db", str(tmp / "node.db"),
                 "--inventory", str(tmp / "none"), *approve],
                env=env, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            procs.append(subprocess.Popen(
                [*cli, "relay", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                 "--w3bstream", f"http://127.0.0.1:{node_port}", "--store", str(tmp / "relay.db"),
                 "--approve-all", "--client-id", "e2e-bench-relay", "--workers", str(workers)],
                env=env, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            time.sleep(3)  # both listening (the relay retries the node anyway)
            devices = [Link(i, broker.port) for i in range(links)]
            start_at = time.time() + 2
            threads = [
                threading.Thread(target=d.run, args=(rounds, interval_s, start_at))
                for d in devices
            ]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # Acked means stored; wait for the forwarder to get every taskID.
            deadline = time.monotonic() + 60
            want = links * rounds
            while time.monotonic() < deadline:
                done = _finished(tmp / "relay.db")
                if sum(1 for f, s in done.values() if f is not None) >= want:
                    break
                time.sleep(0.5)
            wall = time.monotonic() - t0
        finally:
            for d in devices:
                d.close()
            for p in procs:
                p.terminate()
                p.wait(30)
            broker.stop()
        done = _finished(tmp / "relay.db")
        latencies, lost = [], 0
        to_ack = [d.acked_at[n] - t for d in devices for n, t in d.published.items()]
        for d in devices:
            for n, t in d.published.items():
                f, status = done.get((d.address, n), (None, ""))
                if f is None or status != "accepted":
                    lost += 1
                else:
                    latencies.append(f - t)
        with sqlite3.connect(tmp / "node.db") as db:
            node_rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT device || nonce) FROM tasks")
            at_node, distinct = node_rows.fetchone()
        return {
            "what": "simulated device links: paho MQTT clients signing with coincurve "
            "(no MicroPython), all publishing at once each interval, window 1",
            "devices": links,
            "rounds": rounds,
            "interval_s": interval_s,
            "relay_workers": workers,
            "published": sum(len(d.published) for d in devices),
            "taskIDs": len(latencies),
            "lost": lost,
            "at_node": at_node,
            "stored_twice": at_node - distinct,
            "resent_after_10s_without_ack": sum(d.resent for d in devices),
            "wall_s": round(wall, 1),
            "latency_publish_to_taskID": _stats(latencies),
            "latency_publish_to_ack": _stats(to_ack),  # verified and stored durably
        }


# --- full virtual boards ----------------------------------------------------------


class _PublishWatch:
    """A plain (non-shared) subscriber that notes when each device's publish first
    comes out of the broker: the publish clock for boards, independent of consoles."""

    def __init__(self) -> None:
        self.first_seen: dict[tuple[str, int], float] = {}
        self._client: mqtt.Client | None = None

    def start(self, url: str) -> None:
        host, _, port = url.removeprefix("mqtt://").partition(":")
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"e2e-watch-{os.getpid()}")
        c.on_connect = lambda cl, *a: cl.subscribe("ioconnect/+/+/tasks", 0)
        c.on_message = self._seen
        c.connect(host, int(port or 1883))
        c.loop_start()
        self._client = c

    def _seen(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            nonce = json.loads(msg.payload)["nonce"]
        except (ValueError, KeyError, TypeError):
            return
        self.first_seen.setdefault((msg.topic.split("/")[2], nonce), now)

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()


def virtual_boards(boards: int, messages: int, interval_s: int) -> dict[str, Any]:
    from ioconnect_host.demo import DemoOptions, run_demo

    with tempfile.TemporaryDirectory(prefix="e2e-boards-") as tmp_name:
        work = Path(tmp_name)
        os.environ.setdefault("IOCONNECT_HOME", str(work / "home"))
        t0 = time.monotonic()
        opts = DemoOptions(
            devices=boards, messages=messages, interval_s=interval_s, workdir=work, settle_s=120.0
        )
        phases: dict[str, float] = {}
        watch = _PublishWatch()

        def progress(text: str) -> None:
            if text.startswith("MQTT broker"):  # "... on mqtt://host:port"
                watch.start(text.rsplit(" on ", 1)[1])
            if text == "attesting":  # every board started and provisioned
                phases["all_started"] = time.time()

        try:
            result = run_demo(opts, progress=progress)
        finally:
            watch.stop()
        wall = time.monotonic() - t0
        done = _finished(work / "relay.sqlite3")
        latencies, steady = [], []
        all_started = phases.get("all_started", float("inf"))
        for view in result.devices:
            for n in view.signed:
                f, status = done.get((view.address, n), (None, ""))
                seen = watch.first_seen.get((view.address, n))
                if f is not None and status == "accepted" and seen is not None:
                    latencies.append(f - seen)
                    if seen >= all_started:
                        steady.append(f - seen)
        return {
            "what": "full virtual boards: the real firmware on the MicroPython VM (esp32-s3), "
            "provisioned, attesting in their own loop over MQTT",
            "devices": boards,
            "messages_per_device": messages,
            "interval_s": interval_s,
            "ok_every_reading_accepted_once": result.ok,
            "totals": result.totals,
            "problems": result.problems[:5],
            "wall_s_including_startup": round(wall, 1),
            "clock_note": "start = when a plain MQTT subscriber got the device's publish "
            "from the broker (the console's signed event, read on a loaded host, lagged "
            "the publish by up to 0.2 s)",
            "latency_publish_to_taskID": _stats(latencies),
            # Only readings published once every board was up (no board starting,
            # compiling and provisioning beside them).
            "latency_publish_to_taskID_all_boards_up": _stats(steady),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--links", type=int, default=100, help="simulated device links (0: skip)")
    ap.add_argument("--rounds", type=int, default=20, help="readings per simulated link")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    ap.add_argument("--relay-workers", type=int, default=4, help="the relay's --workers")
    ap.add_argument("--boards", type=int, default=10, help="full virtual boards (0: skip)")
    ap.add_argument("--board-messages", type=int, default=10, help="readings per board")
    args = ap.parse_args()
    out: dict[str, Any] = {
        "benchmark": "e2e_latency",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    if args.links:
        out["simulated_links"] = simulated_links(
            args.links, args.rounds, args.interval, args.relay_workers
        )
    if args.boards:
        out["virtual_boards"] = virtual_boards(
            args.boards, args.board_messages, max(1, round(args.interval))
        )
    out["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
