"""``ioconnect image build`` and ``ioconnect flash`` (UF2) timings and sizes, as JSON.

Builds the Pico image from shared/firmware's MicroPython UF2 and an ESP32
image from a 1.6 MB stand-in (no ESP32 build may be fetched here), then flashes
the Pico image onto a virtual Pico through its BOOTSEL drive: bootloader
request, copy, reboot into the flashed littlefs, serial port answering. Each
CLI run is a subprocess (start-up counted); medians of ``--runs``.

    python benchmarks/image.py [--runs 3] [--firmware PATH.uf2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ioconnect_sim.launch import start_board

BIN = Path(sys.executable).parent


def pico_firmware() -> Path:
    for folder in Path(__file__).resolve().parents:
        path = folder / "shared" / "firmware" / "micropython-v1.28.0-RPI_PICO.uf2"
        if path.is_file():
            return path
    raise SystemExit("shared/firmware/micropython-v1.28.0-RPI_PICO.uf2 not found; give --firmware")


def timed(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed: {done.stderr.strip()}")
    return seconds, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--firmware", type=Path)
    args = ap.parse_args()
    fw = args.firmware or pico_firmware()
    cli = str(BIN / "ioconnect")
    os.environ.setdefault("IOCONNECT_HOME", tempfile.mkdtemp(prefix="bench-image-"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        esp = tmp / "ESP32_GENERIC-standin.bin"
        esp.write_bytes(b"\xe9" + hashlib.shake_256(b"stand-in").digest(1_600_000 - 1))
        result: dict[str, object] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_avg_1m": os.getloadavg()[0],
            "runs": args.runs,
        }
        for board, firmware, out, extra in (
            ("rpi-pico", fw, tmp / "pico.uf2", []),
            ("esp32", esp, tmp / "esp32.bin", []),
            ("rpi-pico", fw, tmp / "pico-host.uf2", ["--mpy-arch", "host"]),
        ):
            argv = [cli, "image", "build", "--board", board, "--firmware", str(firmware)]
            argv += [*extra, "-o", str(out), "--json"]
            times, report = [], {}
            for _ in range(args.runs):
                s, text = timed(argv)
                times.append(s)
                report = json.loads(text)
            key = out.stem
            fs = report["filesystem"]
            result[key] = {
                "build_s": round(statistics.median(times), 3),
                "image_bytes": report["bytes"],
                "fs_used_bytes": fs["used_bytes"],
                "fs_size": fs["size"],
                "files": len(fs["files"]),
            }
        flash_times = []
        with start_board("rpi-pico", name="bench-flash", state_dir=tmp / "st"):
            for _ in range(args.runs):
                argv = [
                    cli,
                    "flash",
                    "-p",
                    "sim:bench-flash",
                    "--firmware",
                    str(tmp / "pico-host.uf2"),
                ]
                s, _ = timed([*argv, "--json", "--erase-identity"])
                flash_times.append(s)
        result["flash_uf2_virtual_pico_s"] = round(statistics.median(flash_times), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
