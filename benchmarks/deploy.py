"""``ioconnect deploy`` against ``mpremote fs cp -r`` of the same files, printed as JSON.

Both run as subprocesses (their start-up counted) against blank virtual boards
of the same kind: a first deploy, then a re-deploy with nothing changed. The
ratios are mpremote's time over ours, medians of ``--runs`` rounds, all
measured in this one run. Our compiled build is cached by content; the cold
build time is reported apart (``build_cold_s``).

    python benchmarks/deploy.py [--board esp32] [--runs 5] [--fast]

Boards move bytes at their wire's speed (the board file's ``[console]``) unless
``--fast``: the ratios then say how the tools do on the desk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ioconnect_host.boards import load_board
from ioconnect_host.deploy import firmware_files
from ioconnect_host.firmware import host_mpy_arch
from ioconnect_sim.launch import start_board

BIN = Path(sys.executable).parent


def timed(argv: list[str], cwd: Path | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
    return seconds, done.stdout


def round_ours(board: str, root: Path, fast: bool) -> dict[str, float]:
    out = {}
    with start_board(
        board, name="bench-ours", state_dir=root, install_firmware=False, fast=fast
    ) as vb:
        for kind in ("first", "no_change"):
            seconds, text = timed([str(BIN / "ioconnect"), "deploy", "--port", vb.port, "--json"])
            summary = json.loads(text)
            if (kind == "no_change") != (summary["bytes_sent"] == 0):
                raise SystemExit(f"unexpected {kind} deploy: {summary}")
            out[kind] = seconds
            out[kind + "_library"] = summary["seconds"]
    shutil.rmtree(root)
    return out


def round_mpremote(board: str, root: Path, tree: Path, fast: bool) -> dict[str, float]:
    out = {}
    argv = [str(BIN / "mpremote"), "connect", "PORT", "fs", "cp", "-r", *sorted(
        p.name for p in tree.iterdir()), ":"]  # fmt: skip
    with start_board(
        board, name="bench-mpr", state_dir=root, install_firmware=False, fast=fast
    ) as vb:
        argv[2] = vb.port
        for kind in ("first", "no_change"):
            out[kind], _ = timed(argv, cwd=tree)
        flash = vb.config.flash_dir
        copied = sum(1 for p in flash.rglob("*") if p.is_file())
        expected = sum(1 for p in tree.rglob("*") if p.is_file())
        if copied != expected:
            raise SystemExit(f"mpremote copied {copied} files, not {expected}")
    shutil.rmtree(root)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--board", default="esp32")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--fast", action="store_true", help="no wire speed limit")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        base = Path(tmp)
        os.environ["IOCONNECT_HOME"] = str(base / "home")  # cold cache, own registry
        t0 = time.perf_counter()
        files = firmware_files(mpy_arch=host_mpy_arch())
        build_cold_s = time.perf_counter() - t0
        tree = base / "tree"
        for f in files:
            (tree / f.path).parent.mkdir(parents=True, exist_ok=True)
            (tree / f.path).write_bytes(f.data)
        ours, theirs = [], []
        for i in range(args.runs):  # interleaved: both see the same machine load
            ours.append(round_ours(args.board, base / f"ours{i}", args.fast))
            theirs.append(round_mpremote(args.board, base / f"mpr{i}", tree, args.fast))

    def med(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    print(
        json.dumps(
            {
                "board": args.board,
                "machine": platform.machine(),
                "wire_bytes_per_s": 0 if args.fast else load_board(args.board).console.bytes_per_s,
                "runs": args.runs,
                "files": len(files),
                "bytes": sum(len(f.data) for f in files),
                "build_cold_s": round(build_cold_s, 3),
                "ioconnect_first_s": med(ours, "first"),
                "ioconnect_no_change_s": med(ours, "no_change"),
                "ioconnect_first_library_s": med(ours, "first_library"),
                "ioconnect_no_change_library_s": med(ours, "no_change_library"),
                "mpremote_first_s": med(theirs, "first"),
                "mpremote_no_change_s": med(theirs, "no_change"),
                "ratio_first": round(med(theirs, "first") / med(ours, "first"), 2),
                "ratio_no_change": round(med(theirs, "no_change") / med(ours, "no_change"), 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
