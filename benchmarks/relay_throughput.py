"""Relay ingest throughput, printed as JSON: signed readings verified (parse,
digest, libsecp256k1 recovery the W3bstream way, device and nonce checks: the
``Relay.ingest_many`` path) and durably queued per second by one thread, into
SQLite (WAL, synchronous=FULL) and PostgreSQL (fsync and synchronous_commit
on): in batches of one transaction each (group commit, as the MQTT front
stores what arrived while the last commit ran) and one transaction per message;
beside the ceiling of coincurve recovery alone on the same machine.

Per store: ``per_s`` (wall clock) and ``per_cpu_s`` (readings per CPU second
of this process; for PostgreSQL also with its server process's CPU added:
``per_cpu_s_with_server``). On a shared machine the wall figures follow the
load (the load average before the run is in the output); the CPU figures are
what one core does.

PostgreSQL is a throwaway cluster started here (tests/pgcluster.py), unless
``--postgres URL`` names a database (its relay_* tables are dropped first).

    python benchmarks/relay_throughput.py [--messages 20000] [--devices 100] [--batch 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import coincurve
import psycopg
from ioconnect_host import w3bstream as w3b
from ioconnect_host.relay import Relay, tasks_topic
from ioconnect_host.relay_store import Admission, RelayStore, Submission, open_store
from ioconnect_host.relay_store_pg import PgStore
from relayparts import body

Message = tuple[str, bytes]


def make_messages(count: int, devices: int) -> list[Message]:
    """``count`` signed readings from ``devices`` devices, interleaved, nonces rising."""
    keys = [coincurve.PrivateKey(hashlib.sha256(b"bench %d" % i).digest()) for i in range(devices)]
    topics = [tasks_topic("42", w3b.address_of(k.public_key.format())) for k in keys]
    out = []
    for i in range(count):
        d, nonce = i % devices, i // devices + 1
        out.append((topics[d], body(nonce, '{"temp":21.5,"hum":40}', key=keys[d])))
    return out


def recovery_ceiling(messages: Sequence[Message]) -> dict[str, Any]:
    """One libsecp256k1 public key recovery per message, nothing else."""
    inputs = []
    for _, payload in messages:
        task = w3b.parse_task(payload)
        inputs.append((task.signature + b"\x00", w3b.task_digest(task)))
    clock = _Clock()
    for sig, digest in inputs:
        coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    return clock.rates(len(inputs))


class NoStore:
    """Takes every reading and keeps none: verification alone."""

    def admit_many(
        self, items: Sequence[Submission], *, rejected: Iterable[str] = ()
    ) -> list[Admission]:
        return [Admission("queued", status="queued") for _ in items]


def ingest(store: Any, messages: Sequence[Message], batch: int) -> dict[str, Any]:
    relay = Relay(store, approved=lambda project, address: True)
    server = _ServerCpu(store)
    clock = _Clock()
    for i in range(0, len(messages), batch):
        got = relay.ingest_many(messages[i : i + batch])
        if {g.kind for g in got} != {"stored"}:
            raise RuntimeError(f"not all stored: {got[0]}")
    rates = clock.rates(len(messages))
    spent = server.spent()
    if spent is not None:
        rates["server_cpu_s"] = round(spent, 3)
        rates["per_cpu_s_with_server"] = round(len(messages) / (clock.cpu_s + spent))
    return rates


def store_run(
    open_new: Callable[[], RelayStore], messages: Sequence[Message], batch: int, single: int
) -> dict[str, Any]:
    """Group commit on every message, then one transaction each on the first
    ``single`` (a fresh store each time)."""
    store = open_new()
    grouped = ingest(store, messages, batch)
    if store.stats()["queued"] != len(messages):
        raise RuntimeError("not everything is queued")
    store.close()
    store = open_new()
    alone = ingest(store, messages[:single], 1)
    store.close()
    return {"group_commit": {"batch": batch, **grouped}, "one_tx_per_message": alone}


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.cpu_s = 0.0

    def rates(self, n: int) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        self.cpu_s = time.process_time() - self.cpu
        return {
            "messages": n,
            "wall_s": round(wall, 3),
            "cpu_s": round(self.cpu_s, 3),
            "per_s": round(n / wall),
            "per_cpu_s": round(n / self.cpu_s) if self.cpu_s else None,
        }


class _ServerCpu:
    """CPU seconds of the PostgreSQL backend serving this thread (from /proc)."""

    def __init__(self, store: object) -> None:
        self.pid = None
        if isinstance(store, PgStore):
            # The benchmark's own look at the store's connection for this thread.
            self.pid = store._conn().info.backend_pid
        self.start = self._now()

    def _now(self) -> float:
        if self.pid is None:
            return 0.0
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime+stime

    def spent(self) -> float | None:
        return None if self.pid is None else self._now() - self.start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--batch", type=int, default=256, help="readings per transaction")
    ap.add_argument("--single", type=int, default=1000, help="readings stored one tx each")
    ap.add_argument("--postgres", default=None, help="postgresql://… (default: a throwaway)")
    args = ap.parse_args()

    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1_5_15_before": [round(x, 2) for x in os.getloadavg()],
        },
        "messages": args.messages,
        "devices": args.devices,
    }
    messages = make_messages(args.messages, args.devices)
    out["recovery_ceiling"] = recovery_ceiling(messages)
    out["verify_only"] = ingest(NoStore(), messages, args.batch)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        files = (Path(tmp) / f"relay{i}.db" for i in range(1000))
        out["sqlite"] = store_run(
            lambda: open_store(next(files)), messages, args.batch, args.single
        )

    cluster = None
    if args.postgres is None:
        from pgcluster import PgCluster

        cluster = PgCluster(fsync=True)

    def open_pg() -> RelayStore:
        if cluster is not None:
            return open_store(cluster.new_database())
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS relay_messages, relay_high_water, relay_rejections")
        return open_store(args.postgres)

    try:
        out["postgresql"] = store_run(open_pg, messages, args.batch, args.single)
    finally:
        if cluster is not None:
            cluster.stop()
    # Per CPU second (one core's work); the wall figures follow the machine's load.
    ceiling = out["recovery_ceiling"]["per_cpu_s"]
    pg = out["postgresql"]["group_commit"]
    out["per_cpu_s_vs_recovery_ceiling"] = {
        "sqlite": round(out["sqlite"]["group_commit"]["per_cpu_s"] / ceiling, 3),
        "postgresql": round(pg["per_cpu_s"] / ceiling, 3),
        "postgresql_with_server": round(pg["per_cpu_s_with_server"] / ceiling, 3),
    }
    out["aim_per_s"] = 5000
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
