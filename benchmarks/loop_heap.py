"""The attestation loop over MQTT on a virtual board at its heap (ESP32: 96 KB),
against a real mosquitto, printed as JSON: free heap every 100 cycles (after the
loop's own collection), the lowest seen, time per cycle split into read / sign /
store / publish / deliver, and the heap a TLS connection takes.

Each cycle is the loop's own ``Loop.run`` for one reading, then its Delivery is
stepped until the relay (a paho client acking every reading) has acknowledged it:
the interval's wait without the idle time (tests/loopheap.py has the driver).
Every reading the relay got is checked: signed by the device (recovered with
coincurve), nonces 1..N in order.

TLS: the same loop over mosquitto's TLS listener (self-signed CA on the board's
flash, server certificate checked), and, on a roomy heap, the least free heap
with which the loop's connect (TLS handshake + CONNECT + SUBSCRIBE) succeeds
(a ballast holds the rest; bisected to 256 bytes).

    python benchmarks/loop_heap.py [--board esp32] [--cycles 1000] [--tls-cycles 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from boardsetup import task_signers
from brokers import Broker
from ioconnect_host.boards import load_board
from ioconnect_sim import supervisor
from loopheap import LoopRun, probe_connect, run_loop

_PARTS = ("read", "sign", "store", "publish", "deliver")


def summary(run: LoopRun, wall_s: float) -> dict[str, Any]:
    dev = run.device
    n = max(1, dev["cycles"])
    nonces = [json.loads(body)["nonce"] for body in run.received]
    # Re-sent readings (after a reconnect) may arrive twice; each nonce once, in order.
    unique = list(dict.fromkeys(nonces))
    bad_sig = sum(run.address.lower() not in task_signers(body) for body in run.received)
    errors = [e for e in run.events if e.get("event") in ("error", "halted")]
    return {
        "cycles": dev["cycles"],
        "free_heap_after_build": dev["built"],
        "free_heap_after_connect": dev["after_connect"],
        "free_heap_per_100_cycles": dev["per_interval"],
        "lowest_free_heap_after_collect": dev["low_all"],
        "lowest_free_heap_seen_while_delivering": dev["low_uncollected"],
        "free_heap_first_window_min": dev["low_first"],
        "free_heap_last_window_min": dev["low_last"],
        **{f"{k}_ms_mean": round(dev["tot_us"][i] / n / 1000, 2) for i, k in enumerate(_PARTS)},
        **{f"{k}_ms_max": round(dev["top_us"][i] / 1000, 2) for i, k in enumerate(_PARTS)},
        "loop_errors": len(errors),
        "first_error": errors[0] if errors else None,
        "delivered": len(unique),
        "in_nonce_order": unique == list(range(1, len(unique) + 1)),
        "bad_signatures": bad_sig,
        "pending_at_end": dev["pending"],
        "delivery_stats": dev["stats"],
        "wall_s": round(wall_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", default="esp32")
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--tls-cycles", type=int, default=200, help="0: skip the TLS run")
    ap.add_argument("--heap", default=None, help="the board's budget unless given (e.g. 128K)")
    args = ap.parse_args()
    spec = load_board(args.board)
    out: dict[str, Any] = {
        "board": args.board,
        "heap": args.heap or spec.heap,
        "vm_heap_factor": supervisor.heap_factor(),
        "host": platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="loop-heap-") as tmp:
        root = Path(tmp)
        (root / "mosquitto").mkdir()
        broker = Broker(root / "mosquitto")
        broker.start()
        try:
            t0 = time.monotonic()
            run = run_loop(args.board, broker, root / "plain", cycles=args.cycles, heap=args.heap)
            out["mqtt"] = summary(run, time.monotonic() - t0)
            if args.tls_cycles:
                t0 = time.monotonic()
                run = run_loop(
                    args.board, broker, root / "tls", cycles=args.tls_cycles, heap=args.heap,
                    tls=True,
                )  # fmt: skip
                tls = summary(run, time.monotonic() - t0)
                plain_free = out["mqtt"]["free_heap_after_connect"]
                tls["heap_held_by_tls_session"] = plain_free - tls["free_heap_after_connect"]
                out["mqtt_tls"] = tls
                # The connect's own need, measured where the heap is not the limit.
                out["connect_least_free_heap"] = {
                    "plain": probe_connect(args.board, broker, root / "p1", tls=False, heap="1M"),
                    "tls": probe_connect(args.board, broker, root / "p2", tls=True, heap="1M"),
                }
        finally:
            broker.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
