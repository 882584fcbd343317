"""An independent UF2 reader for tests, written from the UF2 spec (microsoft/uf2
README: 32-byte header of eight little-endian words, 476 data bytes, end magic),
sharing no code with ioconnect_host.uf2 so a shared mistake cannot pass both."""

from __future__ import annotations

import struct
from pathlib import Path

SPEC_MAGIC = (0x0A324655, 0x9E5D5157, 0x0AB16F30)
SPEC_FAMILY_FLAG = 0x00002000


def uf2_blocks(data: bytes) -> list[dict[str, int | bytes]]:
    """Every block of ``data`` as a dict; asserts each field the spec fixes."""
    assert len(data) % 512 == 0, "UF2 files are whole 512-byte blocks"
    out: list[dict[str, int | bytes]] = []
    for off in range(0, len(data), 512):
        words = struct.unpack("<8I", data[off : off + 32])
        end = struct.unpack("<I", data[off + 508 : off + 512])[0]
        assert (words[0], words[1], end) == SPEC_MAGIC, f"bad magic in block at {off}"
        out.append(
            {
                "flags": words[2],
                "addr": words[3],
                "size": words[4],
                "no": words[5],
                "count": words[6],
                "family": words[7],
                "data": data[off + 32 : off + 32 + words[4]],
            }
        )
    return out


def uf2_flash(data: bytes, base: int, size: int) -> bytearray:
    """The flash a bootloader makes of ``data``: erased bytes where no block writes."""
    flash = bytearray(b"\xff" * size)
    for b in uf2_blocks(data):
        addr, payload = b["addr"], b["data"]
        assert isinstance(addr, int) and isinstance(payload, bytes)
        assert base <= addr and addr + len(payload) <= base + size, hex(addr)
        flash[addr - base : addr - base + len(payload)] = payload
    return flash


PICO_UF2_NAME = "micropython-v1.28.0-RPI_PICO.uf2"


def pico_firmware() -> Path:
    """shared/firmware's MicroPython for the Pico (beside the clone in CI, above a worktree)."""
    for folder in Path(__file__).resolve().parents:
        path = folder / "shared" / "firmware" / PICO_UF2_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"shared/firmware/{PICO_UF2_NAME} not found above {__file__}")
