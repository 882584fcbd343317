"""One flashable image per board: MicroPython, our firmware and its config in one file.

Mass production flashes a single file: MicroPython (the file the user gives)
plus a littlefs filesystem partition already holding our firmware (compiled
to .mpy for the board's architecture, with the deploy manifest, so a later
``ioconnect deploy`` sees it as its own) and, optionally, ``config.json``.

- ESP32 family: a merged .bin from flash offset 0: the firmware at
  ``[flash].firmware_offset``, the filesystem at ``[filesystem].offset``,
  0xFF (erased flash) between, written by ``esptool write_flash 0x0 FILE``.
- Pico family: a UF2: the firmware UF2's own blocks, then the whole
  filesystem partition as 256-byte pages, numbered as one set. Erased pages
  are written too: littlefs picks the newer half of each metadata pair by
  its revision count, so a stale half left over from an earlier filesystem
  on the board could otherwise win over the image's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .boards import Board
from .deploy import MANIFEST, firmware_files
from .errors import IoconnectError
from .uf2 import check_image, join_blocks, make_blocks, parse_uf2

__all__ = ["CONFIG_PATH", "BuiltImage", "ImageError", "build_image", "image_files"]

#: Where the firmware reads its settings (firmware/ioconnect/config.py PATH).
CONFIG_PATH = "config.json"
_ESP_IMAGE_MAGIC = 0xE9  # first byte of an ESP-IDF app/bootloader image (esptool docs)
_UF2_PAGE = 256  # RP2040 flash page: what picotool and the bootrom write per block
_CONFIG_MAX = 4096


class ImageError(IoconnectError):
    """The image cannot be built from these inputs."""


@dataclass(frozen=True)
class BuiltImage:
    """What :func:`build_image` made."""

    data: bytes
    format: str  # "bin" | "uf2"
    files: dict[str, bytes]  # the filesystem's contents
    fs_offset: int
    fs_size: int
    fs_used_bytes: int  # partition bytes that are not erased flash

    def to_json(self, out: Path) -> dict[str, object]:
        return {
            "image": str(out),
            "format": self.format,
            "bytes": len(self.data),
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "filesystem": {
                "offset": self.fs_offset,
                "size": self.fs_size,
                "used_bytes": self.fs_used_bytes,
                "files": sorted(self.files),
            },
        }


def _config_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) > _CONFIG_MAX:
        raise ImageError(f"--config {path} is {len(data)} bytes; a device config is at most 4 KB")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeError, ValueError) as exc:
        raise ImageError(f"--config {path} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ImageError(f"--config {path} must be a JSON object (as `ioconnect config set` keeps)")
    # The layout `config set` leaves on the board (MicroPython's json.dump).
    out = json.dumps(value, separators=(", ", ": ")).encode()
    problem = _device_config_problem(out)
    if problem:
        raise ImageError(f"--config {path}: {problem}")
    return out


# The firmware's own checks (firmware/ioconnect/config.py: strict JSON, then
# SCHEMA key by key), the ones `ioconnect config set` meets on the board: a
# typo here would otherwise be in every board flashed from the image.
_CHECK_SCRIPT = """
from ioconnect import config
try:
    d = config.load()
    for k in sorted(d):
        config.check(k, d[k])
    print("OK")
except config.ConfigError as e:
    print("BAD", e)
"""


def _device_config_problem(data: bytes) -> str:
    """What the device would refuse in config.json ``data`` ("" if nothing)."""
    import tempfile

    from .vm import run_script

    with tempfile.TemporaryDirectory(prefix="ioconnect-config-") as tmp:
        (Path(tmp) / CONFIG_PATH).write_bytes(data)
        out = run_script(_CHECK_SCRIPT, fs_dir=Path(tmp), timeout_s=120.0).strip()
    return "" if out == "OK" else out.removeprefix("BAD ")


def image_files(
    board: Board, config: Path | None = None, *, mpy_arch: str | None = None
) -> dict[str, bytes]:
    """The filesystem's files: firmware (.mpy for ``mpy_arch``, default the board's),
    the deploy manifest, the config."""
    arch = mpy_arch or board.mpy_arch
    files = {f.path: f.data for f in firmware_files(mpy_arch=arch)}
    manifest = [f"# ioconnect deploy manifest 1, mpy_arch {arch}"]
    manifest += [f"{hashlib.sha256(d).hexdigest()}  {p}" for p, d in sorted(files.items())]
    files[MANIFEST] = ("\n".join(manifest) + "\n").encode()
    if config is not None:
        files[CONFIG_PATH] = _config_bytes(config)
    return files


def build_image(
    board: Board, firmware: Path, *, config: Path | None = None, mpy_arch: str | None = None
) -> BuiltImage:
    """Build the image for ``board`` from the MicroPython ``firmware`` file.

    ``mpy_arch`` overrides the board's native-code architecture: a virtual
    board's VM runs the host's (``firmware.host_mpy_arch()``).

    Raises:
        ImageError: the firmware is not for this board family or does not fit
            below the filesystem, or the config is not a JSON object or holds
            a setting the firmware refuses (unknown key, wrong type, out of range).
        UF2Error: a Pico firmware UF2 that is malformed or for another chip.
        FlashFsError: the files do not fit the partition.
    """
    from ioconnect_sim.flashfs import lfs_image  # the one littlefs layout, shared with sims

    fw = firmware.read_bytes()
    fs = board.filesystem
    files = image_files(board, config, mpy_arch=mpy_arch)
    part = lfs_image(files, size=fs.size, block_size=fs.block_size)
    used = sum(
        fs.block_size
        for i in range(0, fs.size, fs.block_size)
        if part[i : i + fs.block_size].count(0xFF) != fs.block_size
    )
    if board.flash.firmware_format == "uf2":
        data = _uf2_image(board, fw, part, firmware.name)
    else:
        data = _bin_image(board, fw, part, firmware.name)
    return BuiltImage(data, board.flash.firmware_format, files, fs.offset, fs.size, used)


def _bin_image(board: Board, fw: bytes, part: bytes, name: str) -> bytes:
    start, fs = board.flash.firmware_offset, board.filesystem
    if not fw or fw[0] != _ESP_IMAGE_MAGIC:
        raise ImageError(
            f"{name} is not an ESP32 firmware image (first byte 0x{fw[:1].hex() or '--'}, "
            "expected 0xe9)"
        )
    if start + len(fw) > fs.offset:
        raise ImageError(
            f"{name} ({len(fw)} bytes at 0x{start:x}) runs into the filesystem at 0x{fs.offset:x}"
        )
    out = bytearray(b"\xff" * (fs.offset + fs.size))
    out[start : start + len(fw)] = fw
    out[fs.offset : fs.offset + fs.size] = part
    return bytes(out)


def _uf2_image(board: Board, fw: bytes, part: bytes, name: str) -> bytes:
    flash, fs = board.flash, board.filesystem
    blocks = parse_uf2(fw, name=name)
    # The firmware must end below the filesystem, or the two would overwrite each other.
    check_image(blocks, family=flash.uf2_family, base=flash.image_base, limit=fs.offset, name=name)
    base = flash.image_base + fs.offset
    blocks += make_blocks(part, base, flash.uf2_family, _UF2_PAGE)
    return join_blocks(blocks)
