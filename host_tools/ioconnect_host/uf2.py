"""UF2 files: what a Pico's BOOTSEL drive takes (github.com/microsoft/uf2, the spec).

A UF2 file is a sequence of 512-byte blocks, each carrying up to 476 bytes of
payload for one target address. Every block says its number and how many the
file has, so a bootloader knows when it has them all; with flag 0x2000 the
word after them is a family id (the chip), not a file size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import IoconnectError

__all__ = [
    "BLOCK_SIZE",
    "FLAG_FAMILY_ID",
    "UF2Block",
    "UF2Error",
    "check_image",
    "join_blocks",
    "make_blocks",
    "parse_uf2",
]

BLOCK_SIZE = 512
PAYLOAD_MAX = 476
MAGIC_START0 = 0x0A324655  # "UF2\n"
MAGIC_START1 = 0x9E5D5157
MAGIC_END = 0x0AB16F30
FLAG_NOT_MAIN_FLASH = 0x00000001
FLAG_FAMILY_ID = 0x00002000
_HEAD = struct.Struct("<8I")  # magic0, magic1, flags, addr, size, block no, count, family


class UF2Error(IoconnectError):
    """A UF2 file that is malformed or not for this board."""


@dataclass(frozen=True)
class UF2Block:
    """One block: ``data`` for flash address ``addr`` (the XIP address on a Pico)."""

    addr: int
    data: bytes
    family: int
    flags: int = FLAG_FAMILY_ID


def parse_uf2(data: bytes, *, name: str = "UF2 file") -> list[UF2Block]:
    """The blocks of a UF2 file, in file order, checked against the spec.

    Raises:
        UF2Error: a size that is not whole blocks, a wrong magic number, a
            payload over 476 bytes, or numbering that does not make one
            complete set (a truncated or spliced file).
    """
    if not data:
        raise UF2Error(f"{name} is empty")
    if len(data) % BLOCK_SIZE:
        raise UF2Error(f"{name} is not whole 512-byte UF2 blocks ({len(data)} bytes): truncated?")
    blocks: list[UF2Block] = []
    count = -1
    for i in range(len(data) // BLOCK_SIZE):
        raw = data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
        m0, m1, flags, addr, size, no, total, family = _HEAD.unpack_from(raw)
        (end,) = struct.unpack_from("<I", raw, BLOCK_SIZE - 4)
        if (m0, m1, end) != (MAGIC_START0, MAGIC_START1, MAGIC_END):
            raise UF2Error(f"{name}: block {i} has no UF2 magic numbers: not a UF2 file")
        if size > PAYLOAD_MAX:
            raise UF2Error(f"{name}: block {i} claims {size} payload bytes (at most 476)")
        if count < 0:
            count = total
        if total != count or no != i:
            raise UF2Error(
                f"{name}: block {i} is numbered {no} of {total}, expected {i} of {count}"
            )
        blocks.append(UF2Block(addr, raw[32 : 32 + size], family, flags))
    if len(blocks) != count:
        raise UF2Error(f"{name} has {len(blocks)} of its {count} blocks: truncated")
    return blocks


def check_image(
    blocks: list[UF2Block],
    *,
    family: int,
    base: int,
    limit: int,
    name: str = "UF2 file",
) -> None:
    """Refuse blocks that are not for this chip or fall outside ``[base, base + limit)``.

    ``limit`` is the flash the image may fill: the whole flash for the BOOTSEL
    drive, the space below the filesystem partition for a firmware image.

    Raises:
        UF2Error: a block without the board's family id, or out of range.
    """
    for i, b in enumerate(blocks):
        if b.flags & FLAG_NOT_MAIN_FLASH:
            continue  # the spec: a bootloader skips these (comments, other targets)
        if not b.flags & FLAG_FAMILY_ID or b.family != family:
            got = f"0x{b.family:08x}" if b.flags & FLAG_FAMILY_ID else "none"
            raise UF2Error(f"{name} is for family id {got}, this board needs 0x{family:08x}")
        if not (base <= b.addr and b.addr + len(b.data) <= base + limit):
            raise UF2Error(
                f"{name}: block {i} writes 0x{b.addr:08x}..0x{b.addr + len(b.data):08x}, "
                f"outside 0x{base:08x}..0x{base + limit:08x}"
            )


def make_blocks(data: bytes, addr: int, family: int, payload: int = 256) -> list[UF2Block]:
    """``data`` for flash address ``addr`` as blocks of ``payload`` bytes (the Pico's page)."""
    return [
        UF2Block(addr + off, data[off : off + payload], family)
        for off in range(0, len(data), payload)
    ]


def join_blocks(blocks: Iterable[UF2Block]) -> bytes:
    """A UF2 file of ``blocks``, numbered as one set."""
    items = list(blocks)
    out = bytearray()
    for no, b in enumerate(items):
        head = _HEAD.pack(
            MAGIC_START0, MAGIC_START1, b.flags, b.addr, len(b.data), no, len(items), b.family
        )
        out += head + b.data.ljust(PAYLOAD_MAX, b"\0") + struct.pack("<I", MAGIC_END)
    return bytes(out)
