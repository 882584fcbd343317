"""``ioconnect flash`` and esptool ``read-flash`` against a virtual board's ROM, as JSON.

A merged image (an ESP app and the board's whole littlefs partition holding the
firmware) is flashed with ``ioconnect flash --json`` (its own process, start-up
counted); then esptool reads the filesystem partition back. By default the
board's wire is lifted (--fast): the protocol's and the tools' costs alone.
With --wire the download-mode line runs at the baud rate the host set on the
pty (esptool: 115200 to connect, then ioconnect's 460800), as a UART does.

    python benchmarks/flash_esp.py [--board esp32] [--runs 3] [--wire]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ioconnect_host.boards import load_board
from ioconnect_host.firmware import host_build
from ioconnect_sim.launch import start_board

BIN = Path(sys.executable).parent


def image_for(board_name: str) -> bytes:
    """What `ioconnect image build` makes: an ESP image (a minimal valid one, see
    tests/espimage.py) at the firmware offset, the firmware's littlefs partition."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from espimage import merged_image

    board = load_board(board_name)
    root = host_build()
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return merged_image(board, files)


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--board", default="esp32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--wire", action="store_true", help="the line at its baud rate")
    args = parser.parse_args()
    board = load_board(args.board)
    flash_s, read_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "merged.bin"
        image.write_bytes(image_for(args.board))
        state = Path(tmp) / "s"
        with start_board(args.board, name="bench-flash", state_dir=state, fast=not args.wire) as vb:
            for _ in range(args.runs):
                flash = [str(BIN / "ioconnect"), "flash", "--board", args.board]
                flash += ["--firmware", str(image), "-p", "sim:bench-flash", "--json"]
                flash_s.append(timed(flash))
                deadline = time.monotonic() + 60
                while vb.in_download_mode and time.monotonic() < deadline:
                    time.sleep(0.05)
                vb.enter_download_mode()
                while not vb.in_download_mode and time.monotonic() < deadline:
                    time.sleep(0.05)
                fs = board.filesystem
                read = [sys.executable, "-m", "esptool", "--port", vb.port]
                read += ["--before", "no-reset", "--after", "no-reset", "read-flash"]
                read += [hex(fs.offset), hex(fs.size), str(Path(tmp) / "fs.bin")]
                read_s.append(timed(read))
                vb.reset()
        size = image.stat().st_size
    print(
        json.dumps(
            {
                "benchmark": "flash_esp",
                "board": args.board,
                "wire": "baud rate" if args.wire else "fast",
                "image_bytes": size,
                "runs": args.runs,
                "flash_median_s": round(statistics.median(flash_s), 3),
                "flash_mb_per_s": round(size / statistics.median(flash_s) / 1e6, 2),
                "read_fs_bytes": board.filesystem.size,
                "read_fs_median_s": round(statistics.median(read_s), 3),
                "machine": platform.machine(),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
