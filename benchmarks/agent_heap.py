"""Agent heap figures on a virtual board, printed as JSON: for N mixed agent calls
(seeded), the free heap and the largest contiguous free block before and after
each call, per operation, plus the interned-name (qstr) count first and last.

Between calls the board runs ``gc.collect()`` and ``micropython.mem_info()``
over the same raw REPL; "largest block" is mem_info's "max free sz" (in GC
blocks) times the block size read off ``mem_info(1)``'s map. The snippet is the
same every time, so its own cost is the same in every figure.

    python benchmarks/agent_heap.py [--board esp32] [--calls 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ioconnect_host import agent
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board

_PROBE = "import gc,micropython\ngc.collect()\nmicropython.mem_info()\nmicropython.qstr_info()"
_MAP = "import gc,micropython\ngc.collect()\nmicropython.mem_info(1)"
_CURVES = ("secp256k1", "p256", "ed25519")
_ECDSA_ONLY = ("w3bstream", "sprout", "ioid", "eip191")


def probe(board: SerialTransport) -> dict[str, int]:
    """free bytes, largest free run (blocks) and qstr count, right now."""
    out, err = board.exec_raw(_PROBE)
    text = out.decode()
    free = re.search(r"GC: total: \d+, used: \d+, free: (\d+)", text)
    run = re.search(r"max free sz: (\d+)", text)
    names = re.search(r"n_qstr=(\d+)", text)
    if not (free and run and names):
        raise SystemExit(f"unexpected mem_info output: {text!r} {err!r}")
    return {"free": int(free[1]), "run": int(run[1]), "qstr": int(names[1])}


def block_size(board: SerialTransport) -> int:
    """Bytes per GC block: two consecutive map lines are 64 blocks apart."""
    out, _ = board.exec_raw(_MAP)
    offsets = [int(m[1], 16) for m in re.finditer(r"^([0-9a-f]{8}): ", out.decode(), re.M)]
    steps = [b - a for a, b in itertools.pairwise(offsets) if b > a]
    return min(steps) // 64


def workload(rng: random.Random, n: int) -> list[tuple[str, dict[str, Any]]]:
    """n agent calls: create first, then every operation in a seeded mix."""
    calls: list[tuple[str, dict[str, Any]]] = [("identity.create", {"curve": "secp256k1"})]
    curve = "secp256k1"
    kinds = ["info", "identity.show", "identity.rotate", "diddoc", "sign", "sign", "sign"]
    kinds += ["config.get", "config.set"]
    for i in range(1, n):
        kind = rng.choice(kinds)
        if kind == "identity.rotate":
            curve = rng.choice(_CURVES)
            calls.append((kind, {"curve": curve}))
        elif kind == "sign":
            calls.append((kind, sign_args(rng, curve, i)))
        elif kind == "config.set":
            calls.append((kind, config_args(rng)))
        elif kind == "config.get":
            calls.append((kind, {"key": rng.choice([None, "device.name", "mqtt.port"])}))
        else:
            calls.append((kind, {}))
    return calls


def sign_args(rng: random.Random, curve: str, i: int) -> dict[str, Any]:
    profiles = ("cose", *_ECDSA_ONLY) if curve == "secp256k1" else ("cose",)
    profile = rng.choice(profiles)
    # Readings as a sensor sends them, now and then with non-ASCII text.
    label = rng.choice(["t", "temp", "温度", "température"])
    reading = json.dumps(
        {label: round(rng.uniform(-20, 40), 2), "ts": 1700000000 + i}, ensure_ascii=False
    )
    args: dict[str, Any] = {"payload": reading}
    if profile == "w3bstream":
        args.update(nonce=i, project_id=str(rng.randint(1, 9999)), signed_keys=["ts"])
    elif profile == "sprout":
        args.update(project_id=rng.randint(1, 9999), project_version="0.1")
    elif profile == "ioid":
        args = {"owner": "0x" + rng.randbytes(20).hex(), "nonce": i, "chain_id": 4690}
    elif profile == "cose":
        args = {"payload_hex": reading.encode().hex(), "kid": f"dev{i % 7}"}
    return {"profile": profile, "args": args}


def config_args(rng: random.Random) -> dict[str, Any]:
    key, value = rng.choice(
        [
            ("device.name", f"node-{rng.randint(0, 999)}"),
            ("mqtt.port", rng.randint(1, 65535)),
            ("w3bstream.project_id", str(rng.randint(1, 10**9))),
            ("sample.interval_s", rng.randint(1, 3600)),
            ("mqtt.topic", rng.choice(["readings", "dévices/ß", "a/b/c"])),
        ]
    )
    return {"key": key, "value": value}


def run(board_name: str, n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    calls = workload(rng, n)
    per_op: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IOCONNECT_HOME"] = tmp
        with (
            start_board(board_name, name="bench-heap", state_dir=Path(tmp) / "state") as vb,
            SerialTransport(vb.port) as board,
        ):
            block = block_size(board)
            boot = probe(board)
            before = boot
            trail = []
            for op, args in calls:
                start = time.perf_counter()
                agent.call(board, op, **args)  # AgentError: a failed call ends the run
                took_ms = (time.perf_counter() - start) * 1000
                after = probe(board)
                per_op.setdefault(op, []).append(
                    {
                        "ms": took_ms,
                        "free_before": before["free"],
                        "free_after": after["free"],
                        "largest_before": before["run"] * block,
                        "largest_after": after["run"] * block,
                    }
                )
                trail.append(after)
                before = after
    ops = {}
    for op, rows in sorted(per_op.items()):
        ops[op] = {
            "calls": len(rows),
            "median_ms": round(statistics.median(r["ms"] for r in rows), 1),
            "free_before_min": min(r["free_before"] for r in rows),
            "free_after_min": min(r["free_after"] for r in rows),
            "free_after_max": max(r["free_after"] for r in rows),
            "largest_before_min": min(r["largest_before"] for r in rows),
            "largest_after_min": min(r["largest_after"] for r in rows),
        }
    # Warm-up: the first call interns the firmware's names and loads the
    # resident modules; from the second call on the figures should not move.
    steady = trail[1:]
    return {
        "board": board_name,
        "calls": n,
        "seed": seed,
        "block_bytes": block,
        "boot": {"free": boot["free"], "largest": boot["run"] * block, "qstr": boot["qstr"]},
        "after_first_call": {
            "free": trail[0]["free"],
            "largest": trail[0]["run"] * block,
            "qstr": trail[0]["qstr"],
        },
        "steady": {
            "free_min": min(s["free"] for s in steady),
            "free_max": max(s["free"] for s in steady),
            "free_last": steady[-1]["free"],
            "largest_min": min(s["run"] for s in steady) * block,
            "largest_last": steady[-1]["run"] * block,
            "qstr_last": steady[-1]["qstr"],
        },
        "ops": ops,
    }


def main_bench() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--board", default="esp32")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(json.dumps(run(args.board, max(args.calls, 2), args.seed), indent=2))


if __name__ == "__main__":
    main_bench()
