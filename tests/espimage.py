"""Test images in esptool's firmware image format, for flashing virtual boards.

No MicroPython build for the ESP32 runs here (the virtual board runs the unix
port's VM whatever it is flashed with), so the tests flash a small but valid
ESP image: header (magic 0xE9, one segment, entry point), extended header with
the chip id, one segment, the XOR checksum byte (seed 0xEF) padded to 16 bytes,
and SHA-256 appended as ESP-IDF does. esptool's own parser (``image-info``)
reads it back in the tests.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import time
from collections.abc import Callable

from ioconnect_host.boards import Board
from ioconnect_host.flash_esp import CHIP_IDS
from ioconnect_sim.flashfs import lfs_image

__all__ = ["app_image", "esptool", "merged_image", "wait_until"]


def app_image(chip: str, payload: bytes = b"\x00" * 1024) -> bytes:
    """An ESP image for esptool chip ``chip`` with one DRAM segment of ``payload``."""
    payload = payload + b"\x00" * (-len(payload) % 4)
    header = struct.pack("<BBBBI", 0xE9, 1, 2, 0x20, 0x40080000)  # DIO, 4MB@40MHz
    # WP pin (0xEE: none), 3 drive bytes, chip id, min rev, min/max rev full,
    # 4 reserved bytes, hash appended.
    ext = struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", CHIP_IDS[chip], 0, 0, 0xFFFF, b"\0" * 4, 1)
    segment = struct.pack("<II", 0x3FFB0000, len(payload)) + payload
    checksum = 0xEF
    for b in payload:
        checksum ^= b
    body = header + ext + segment
    body += b"\0" * (15 - len(body) % 16) + bytes([checksum])
    return body + hashlib.sha256(body).digest()


def merged_image(board: Board, files: dict[str, bytes], app: bytes | None = None) -> bytes:
    """A merged image as ``ioconnect image build`` makes one for an ESP32 board:
    from flash offset 0, the app at ``firmware_offset``, the filesystem partition
    (littlefs holding ``files``) at ``[filesystem].offset``, erased flash between."""
    app = app if app is not None else app_image(board.chip)
    fs = board.filesystem
    image = bytearray(b"\xff" * (fs.offset + fs.size))
    image[board.flash.firmware_offset : board.flash.firmware_offset + len(app)] = app
    image[fs.offset :] = lfs_image(files, size=fs.size, block_size=fs.block_size)
    return bytes(image)


def esptool(port: str, *args: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    """Real esptool, its own process, as a user runs it against a board in download mode."""
    argv = [sys.executable, "-m", "esptool", "--port", port, "--before", "no-reset"]
    return subprocess.run(
        [*argv, "--after", "no-reset", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def wait_until(test: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``test`` until true (generous deadline: the machine is shared)."""
    deadline = time.monotonic() + timeout_s
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
