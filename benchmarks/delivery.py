"""Delivery layer figures, printed as JSON: thousands of reading cycles (outbox
put -> MQTT publish QoS 1 -> relay ack -> outbox remove) on the MicroPython VM
at the ESP32 heap (96 KB) against a real mosquitto and a paho acker, over plain
TCP and TLS. Reports gc.mem_free() after a collection every 100 cycles (flat
means no leak), bytes allocated per cycle and per publish, and cycle times.

    python benchmarks/delivery.py [--cycles 2000] [--tls-cycles 500] [--heap 96K]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from brokers import Acker, Broker, DeviceProcess

DEVICE = """
import array, gc, json, time
from ioconnect.outbox import Outbox
from ioconnect.deliver import Delivery
from ioconnect.nonce import NonceStore
cfg = json.load(open("cases.json"))
A = "0x00000000000000000000000000000000000000be"
ob = Outbox("outbox", 64)
ns = NonceStore("nonce.dat", 32)
kw = {}
if cfg["tls"]:
    kw = {"tls": True, "ca": "ca.pem", "server_hostname": "localhost"}
d = Delivery(ob, client_id=A, host="127.0.0.1", port=cfg["port"],
             tasks_topic="ioconnect/42/%s/tasks" % A, acks_topic="ioconnect/42/%s/acks" % A,
             timeout_ms=5000, **kw)
gc.collect()
free_before_connect = gc.mem_free()
d.step(0)
gc.collect()
session_heap = free_before_connect - gc.mem_free()
sig = "ab" * 64
# Preallocated result arrays: the benchmark itself must not eat the heap it measures.
N = cfg["cycles"]
samples = array.array("i", [0] * (N // 100 + 2))
cycle_us = array.array("i", [0] * N)
alloc = array.array("i", [0] * N)
ns_ = 0
gc.collect()
for i in range(N):
    t0 = time.ticks_us()
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    n = ns.next()
    ob.put(n, b'{"nonce":%d,"projectID":"42","payload":{"t":21.5},"signature":"0x%s"}' % (n, sig))
    while len(ob):
        d.step(1000)
        if d.stats["last_error"]:
            raise SystemExit("delivery failed: " + d.stats["last_error"])
    alloc[i] = gc.mem_alloc() - a0
    gc.enable()
    cycle_us[i] = time.ticks_diff(time.ticks_us(), t0)
    if i % 100 == 0 or i == N - 1:
        gc.collect()
        samples[ns_] = gc.mem_free()
        ns_ += 1
# The publish alone: PUBLISH + PUBACK wait, on the preallocated buffers.
buf = bytearray(200)
gc.collect()
a0 = gc.mem_alloc()
gc.disable()
for i in range(100):
    d.client.publish(b"ioconnect/42/bench/publish-only", buf, 1, 200)
publish_alloc = (gc.mem_alloc() - a0) / 100
gc.enable()
# Raw figures in chunks (a list of N ints would not fit the heap); the host sorts.
for k in range(0, N, 200):
    print(json.dumps({"cycle_us": list(cycle_us[k:k + 200]), "alloc": list(alloc[k:k + 200])}))
print(json.dumps({"mem_free": list(samples[:ns_]), "session_heap": session_heap,
                  "publish_alloc_bytes": publish_alloc, "stats": d.stats}))
"""


def pct(values: list[int], p: int) -> int:
    return values[min(len(values) - 1, len(values) * p // 100)]


def run(broker: Broker, cycles: int, heap: str, tls: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        fs = Path(tmp)
        port = broker.tls_port if tls else broker.port
        (fs / "cases.json").write_text(json.dumps({"port": port, "cycles": cycles, "tls": tls}))
        shutil.copy(broker.ca, fs / "ca.pem")
        with Acker(broker.port, client_id=f"bench-relay-{int(tls)}"):
            dev = DeviceProcess(DEVICE, fs, heap=heap)
            try:
                *chunks, res = dev.wait(timeout_s=900)
            finally:
                dev.kill()
    free = res.pop("mem_free")
    cycle_us = sorted(v for c in chunks for v in c["cycle_us"])
    alloc = sorted(v for c in chunks for v in c["alloc"])
    return {
        "transport": "tls" if tls else "tcp",
        "cycles": cycles,
        "heap": heap,
        "mem_free_after_gc": {
            "first": free[0],
            "last": free[-1],
            "min": min(free),
            "max": max(free),
            "samples": len(free),
            "stdev": round(statistics.pstdev(free), 1),
        },
        "cycle_us": {"median": cycle_us[len(cycle_us) // 2], "p95": pct(cycle_us, 95)},
        "alloc_bytes_per_cycle": {"median": alloc[len(alloc) // 2], "max": alloc[-1]},
        **res,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--tls-cycles", type=int, default=500)
    ap.add_argument("--heap", default="96K")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-mosquitto-") as tmp:
        broker = Broker(Path(tmp))
        broker.start()
        try:
            out = [run(broker, args.cycles, args.heap, tls=False)]
            if args.tls_cycles:
                out.append(run(broker, args.tls_cycles, args.heap, tls=True))
        finally:
            broker.stop()
    print(json.dumps({"benchmark": "delivery", "runs": out}, indent=2))


if __name__ == "__main__":
    main()
