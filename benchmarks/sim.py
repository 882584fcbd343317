"""Virtual board figures, printed as JSON: boot-to-REPL time, raw-REPL exec round
trip, and how many idle boards one machine holds (memory per board).

    python benchmarks/sim.py [--board rpi-pico] [--fleet 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard


def rss_kb(pid: int) -> int:
    """Resident memory of one process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split between the processes sharing them."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return rss_kb(pid)
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def boot_to_repl(board: str, root: Path, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        vb = start_board(board, name=f"boot{i}", state_dir=root / f"boot{i}")
        with SerialTransport(vb.port) as t:
            t.enter_raw_repl()
            times.append((time.perf_counter() - t0) * 1000)
        vb.stop()
    return times


def exec_round_trip(board: str, root: Path, n: int) -> list[float]:
    vb = start_board(board, name="rtt", state_dir=root / "rtt")
    try:
        with SerialTransport(vb.port) as t:
            t.enter_raw_repl()
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                t.exec("pass")
                samples.append((time.perf_counter() - t0) * 1000)
        return samples
    finally:
        vb.stop()


def fleet(board: str, root: Path, count: int) -> dict[str, object]:
    boards: list[VirtualBoard] = []
    t0 = time.perf_counter()
    try:
        for i in range(count):
            boards.append(start_board(board, name=f"fleet{i}", state_dir=root / f"fleet{i}"))
        started_s = time.perf_counter() - t0
        time.sleep(2.0)  # let every board finish booting and go idle
        alive = 0
        for vb in boards:
            with SerialTransport(vb.port) as t:
                alive += t.eval("1+1") == 2
        vm_pids = [vb.vm_pid for vb in boards if vb.vm_pid]
        cpu0 = os.times()
        time.sleep(5.0)
        cpu1 = os.times()
        vm_rss = sum(rss_kb(p) for p in vm_pids)
        vm_pss = sum(pss_kb(p) for p in vm_pids)
        sup_rss = rss_kb(os.getpid())
        return {
            "boards": count,
            "answering": alive,
            "start_all_s": round(started_s, 2),
            "vm_rss_mb_total": round(vm_rss / 1024, 1),
            "vm_pss_mb_total": round(vm_pss / 1024, 1),
            "pss_mb_per_board": round(vm_pss / 1024 / max(count, 1), 2),
            "supervisor_rss_mb": round(sup_rss / 1024, 1),
            "supervisor_cpu_percent_idle": round(
                100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / 5.0, 1
            ),
        }
    finally:
        for vb in boards:
            vb.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="rpi-pico")
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--execs", type=int, default=300)
    parser.add_argument("--fleet", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="simbench-") as tmp:
        root = Path(tmp)
        os.environ["IOCONNECT_HOME"] = str(root / "home")
        boots = boot_to_repl(args.board, root, args.boots)
        rtt = exec_round_trip(args.board, root, args.execs)
        print(f"boot and exec done; starting {args.fleet} boards", file=sys.stderr)
        many = fleet(args.board, root, args.fleet)
    report = {
        "board": args.board,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "boot_to_raw_repl_ms": {
            "median": round(statistics.median(boots), 1),
            "max": round(max(boots), 1),
            "note": "first run includes compiling the firmware to .mpy",
        },
        "exec_round_trip_ms": {
            "median": round(statistics.median(rtt), 3),
            "p95": round(sorted(rtt)[int(len(rtt) * 0.95)], 3),
        },
        "fleet": many,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
