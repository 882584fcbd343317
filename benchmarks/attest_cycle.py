"""The attestation loop's cycle on a virtual board at its heap (ESP32: 96 KB),
printed as JSON: free heap every 100 cycles (after the loop's own collect), the
lowest free heap seen, and time per cycle split into read / sign / store.

The board is provisioned (identity made by the device code, board.json,
config.json), its loop built by ioconnect.app.build() on a fresh heap and run
cycle by cycle without the interval wait; each message is printed as the
serial fallback prints it and then removed from the outbox as a host ack would.

    python benchmarks/attest_cycle.py [--board esp32] [--cycles 300] [--cose]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

from ioconnect_host import agent
from ioconnect_host.boards import board_json, load_board
from ioconnect_host.identity import new_identity
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board

DEVICE = """
import gc, json, time
from ioconnect import app
try:
    lp = app.build()
except MemoryError as e:
    lp = None
    print("RESULT " + json.dumps({"build_error": "MemoryError: %%s" %% e, "free": gc.mem_free()}))
# Running sums and maxima only: a list per cycle would itself fill the heap.
free = []
low = 1 << 30
tot = [0, 0, 0, 0]
top = [0, 0, 0, 0]
oom = 0
first = None
for i in range(%(cycles)d if lp else 0):
    t0 = time.ticks_us()
    try:  # as Loop.run: a MemoryError is reported and the loop goes on
        n = lp.cycle()
        lp.send_serial(n)
        low = min(low, gc.mem_free())
        gc.collect()  # the host's ack arrives through the agent, after a collect
        lp.outbox.remove(n)
    except MemoryError as e:
        if not oom:
            import io, sys
            buf = io.StringIO()
            sys.print_exception(e, buf)
            first = "cycle %%d: %%s" %% (i, buf.getvalue())
        oom += 1
    gc.collect()
    wall = time.ticks_diff(time.ticks_us(), t0)
    if i:  # the first cycle loads the sensor models
        r, s, w = lp.last_us
        for k, v in ((0, wall), (1, r), (2, s), (3, w)):
            tot[k] += v
            top[k] = max(top[k], v)
    if (i + 1) %% 100 == 0:
        free.append(gc.mem_free())
if lp is not None:
    res = {"free": free, "low": low, "tot": tot, "top": top, "oom": oom, "first": first}
    print("RESULT " + json.dumps(res))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", default="esp32")
    ap.add_argument("--cycles", type=int, default=300)
    ap.add_argument("--cose", action="store_true", help="also sign COSE_Sign1 each cycle")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="attest-bench-") as tmp:
        state = Path(tmp)
        flash = state / "flash"
        flash.mkdir()
        new_identity(flash, "secp256k1")
        (flash / "board.json").write_bytes(board_json(args.board))
        settings = {"w3bstream.project_id": "42", "attest.cose": int(args.cose)}
        (flash / "config.json").write_text(json.dumps(settings))
        vb = start_board(args.board, name="attest-bench", state_dir=state)
        try:
            with SerialTransport(vb.port) as t:
                # The board boots into its loop: stop it, and take the fresh heap
                # of a soft reset (no main.py), as the loop has at boot.
                t.enter_raw_repl(soft_reset=True)
                out = t.exec(DEVICE % {"cycles": args.cycles}, timeout_s=3600)
        finally:
            vb.stop()
    line = [x for x in out.decode().splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[7:])
    if "build_error" in res:
        print(
            json.dumps(
                {
                    "board": args.board,
                    "heap": load_board(args.board).heap,
                    "cose": args.cose,
                    "loop_built": False,
                    **res,
                }
            )
        )
        return
    frames = len(agent.parse_events(out))
    n = max(1, args.cycles - 1)
    names = ("cycle", "read", "sign", "store")
    print(
        json.dumps(
            {
                "board": args.board,
                "heap": load_board(args.board).heap,
                "cose": args.cose,
                "cycles": args.cycles,
                "frames_printed": frames,
                "free_heap_per_100_cycles": res["free"],
                "lowest_free_heap": res["low"],
                "cycles_with_memory_error": res["oom"],
                "first_memory_error": res["first"],
                **{f"{k}_ms_mean": round(res["tot"][i] / n / 1000, 2) for i, k in enumerate(names)},
                **{f"{k}_ms_max": round(res["top"][i] / 1000, 2) for i, k in enumerate(names)},
                "host": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
