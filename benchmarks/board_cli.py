"""Board command figures, printed as JSON: ``info`` (select, open, raw REPL, agent),
``provision`` first and again (idempotent), and how long a port where nothing
answers takes to fail. All in-process through ``main()``, on virtual boards.

    python benchmarks/board_cli.py [--board esp32] [--runs 10]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from ioconnect_host.cli import main
from ioconnect_sim.launch import start_board


def timed(argv: list[str], expect_exit: int = 0) -> float:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    elapsed = time.perf_counter() - start
    if code != expect_exit:
        raise SystemExit(f"{argv}: exit {code}: {err.getvalue()}")
    return elapsed


def ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": round(statistics.median(s) * 1000, 1),
        "max_ms": round(s[-1] * 1000, 1),
        "runs": len(s),
    }


def main_bench() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--board", default="esp32")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IOCONNECT_HOME"] = tmp
        vb = start_board(args.board, name="bench", state_dir=Path(tmp) / "state")
        try:
            info = [timed(["info", "--port", vb.port, "--json"]) for _ in range(args.runs)]
            common = ["provision", "--port", vb.port, "--project-id", "42"]
            common += ["--out", f"{tmp}/b.json", "--inventory", f"{tmp}/i.sqlite3", "--json"]
            first = timed(common)
            again = [timed(common) for _ in range(args.runs)]
        finally:
            vb.stop()
        master, slave = os.openpty()
        try:
            silent = timed(["info", "--port", os.ttyname(slave)], expect_exit=1)
        finally:
            os.close(master)
            os.close(slave)
    print(
        json.dumps(
            {
                "board": args.board,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "info": ms(info),
                "provision_first_ms": round(first * 1000, 1),
                "provision_again": ms(again),
                "silent_port_error_ms": round(silent * 1000, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main_bench()
