"""The smallest ``--heap`` on which a virtual board boots the firmware and serves the agent.

For each board, bisects the heap (in KiB) between a size that fails and one that
works. "Works": on each of ``--trials`` fresh boards (each makes its own random
key, so the heap needed varies a little) the board boots, the agent answers
``info``, creates a secp256k1 identity and signs an EIP-191 message
(``--info-only``: boots and answers ``info``). Prints one JSON object per board:
the minimum in KiB and what failed just below it. ``sim start --heap`` refuses
sizes below ``supervisor.MIN_HEAP_KIB``, which is taken from this.

    python benchmarks/min_heap.py [--boards esp32 rpi-pico] [--lo 4] [--hi 96] [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from ioconnect_host import agent
from ioconnect_host.errors import IoconnectError
from ioconnect_host.transport import SerialTransport
from ioconnect_sim import supervisor
from ioconnect_sim.launch import start_board


def works(board: str, heap_kib: int, root: Path, *, info_only: bool = False) -> str | None:
    """None if the board serves the agent on this heap, else what went wrong."""
    state = root / f"{board}-{heap_kib}"
    try:
        vb = start_board(board, name=f"minheap-{board}-{heap_kib}", state_dir=state,
                         heap=f"{heap_kib}K")  # fmt: skip
    except IoconnectError as err:
        return f"start: {err}"
    try:
        with SerialTransport(vb.port, byte_timeout_s=5.0) as t:
            agent.info(t)
            if info_only:
                return None
            agent.identity_create(t, "secp256k1")
            agent.sign(t, "eip191", payload="min heap")
        return None
    except (IoconnectError, OSError) as err:
        return f"{type(err).__name__}: {str(err)[:120]}"
    finally:
        vb.stop()


def works_every_time(
    board: str, heap_kib: int, root: Path, *, info_only: bool, trials: int
) -> str | None:
    """None if ``trials`` fresh boards (fresh random keys) all serve on this heap."""
    for trial in range(trials):
        failure = works(board, heap_kib, root / f"t{trial}", info_only=info_only)
        if failure is not None:
            return f"trial {trial + 1}/{trials}: {failure}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", nargs="+", default=["esp32", "rpi-pico"])
    parser.add_argument("--lo", type=int, default=4, help="KiB known (or assumed) to fail")
    parser.add_argument("--hi", type=int, default=96, help="KiB known to work")
    parser.add_argument("--info-only", action="store_true", help="only boot and answer info")
    parser.add_argument(
        "--trials", type=int, default=10, help="fresh boards that must all work (keys differ)"
    )
    args = parser.parse_args()
    supervisor.MIN_HEAP_KIB = 1  # the floor `sim start` enforces is what this measures
    os.environ.setdefault("IOCONNECT_HOME", tempfile.mkdtemp(prefix="minheap-home-"))
    with tempfile.TemporaryDirectory(prefix="minheap-") as tmp:
        for board in args.boards:
            lo, hi = args.lo, args.hi
            if (
                works_every_time(board, hi, Path(tmp), info_only=args.info_only, trials=args.trials)
                is not None
            ):
                print(json.dumps({"board": board, "error": f"{hi} KiB does not work"}))
                continue
            below = works_every_time(
                board, lo, Path(tmp), info_only=args.info_only, trials=args.trials
            )
            if below is None:
                print(json.dumps({"board": board, "min_heap_kib": f"<= {lo}"}))
                continue
            while hi - lo > 1:
                mid = (lo + hi) // 2
                failure = works_every_time(
                    board, mid, Path(tmp), info_only=args.info_only, trials=args.trials
                )
                if failure is None:
                    hi = mid
                else:
                    lo, below = mid, failure
            result = {"board": board, "info_only": args.info_only, "trials": args.trials}
            result["min_heap_kib"] = hi
            print(json.dumps({**result, "below_fails_with": below}))


if __name__ == "__main__":
    main()
