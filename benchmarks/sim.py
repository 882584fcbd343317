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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board


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


def serve_fleet(board: str, root: Path, count: int) -> None:
    """Child process: start ``count`` boards, print their ports and pids, serve until stdin closes.

    The fleet lives in its own process, as ``ioconnect sim`` boards do, so that its
    clients (this benchmark's parent) open one port at a time.
    """
    boards = [
        start_board(board, name=f"fleet{i}", state_dir=root / f"fleet{i}") for i in range(count)
    ]
    try:
        info = [{"port": vb.port, "vm_pid": vb.vm_pid} for vb in boards]
        print(json.dumps(info), flush=True)
        sys.stdin.read()
    finally:
        for vb in boards:
            vb.stop()


def fleet(board: str, root: Path, count: int) -> dict[str, object]:
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-fleet",
            str(count),
            "--board",
            board,
            "--root",
            str(root),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        boards = json.loads(child.stdout.readline())
        started_s = time.perf_counter() - t0
        time.sleep(3.0)  # let every board finish booting and go idle
        alive = 0
        for b in boards:
            with SerialTransport(b["port"]) as t:
                alive += t.eval("1+1") == 2
        vm_pids = [b["vm_pid"] for b in boards if b["vm_pid"]]
        cpu0 = cpu_ticks([child.pid, *vm_pids])
        time.sleep(5.0)
        cpu1 = cpu_ticks([child.pid, *vm_pids])
        vm_pss = sum(pss_kb(p) for p in vm_pids)
        return {
            "boards": count,
            "answering": alive,
            "start_all_s": round(started_s, 2),
            "vm_pss_mb_total": round(vm_pss / 1024, 1),
            "pss_mb_per_board": round(vm_pss / 1024 / max(count, 1), 2),
            "supervisor_rss_mb": round(rss_kb(child.pid) / 1024, 1),
            "idle_cpu_percent_all_boards": round(
                100 * (cpu1 - cpu0) / os.sysconf("SC_CLK_TCK") / 5.0, 1
            ),
        }
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=120)


def cpu_ticks(pids: list[int]) -> int:
    """User + system clock ticks used so far by ``pids`` (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="rpi-pico")
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--execs", type=int, default=300)
    parser.add_argument("--fleet", type=int, default=100)
    parser.add_argument("--serve-fleet", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_fleet:
        serve_fleet(args.board, args.root, args.serve_fleet)
        return 0
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
