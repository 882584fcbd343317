"""The MicroPython UF2 an rp2040-engine board runs: where the default comes from, and the
checks an image passes before a board is given it.

A UF2 is a run of 512-byte blocks, each carrying up to 476 bytes for one flash
address (github.com/microsoft/uf2). For the RP2040 every block names the family
0xe48bff56 and an address in the XIP window from 0x10000000; MicroPython's own
code must end below the filesystem region (0xA0000 on the Pico) that the board's
littlefs lives in.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ioconnect_host.errors import IoconnectError

from .rp2040_chip import FS_START

__all__ = [
    "FLASH_SIZE",
    "UF2_ENV",
    "XIP_BASE",
    "FirmwareError",
    "Uf2Image",
    "check_uf2",
    "code_region",
    "code_uf2",
    "default_uf2",
]

#: Environment variable naming the default UF2 (else the project's shared/firmware/).
UF2_ENV = "IOCONNECT_PICO_UF2"
RP2040_FAMILY = 0xE48BFF56
XIP_BASE = 0x10000000
FLASH_SIZE = 0x200000  # the Pico's 2 MiB W25Q16JV
_PAGE = 256  # what MicroPython's UF2s carry per block: one flash page
_MAGIC0, _MAGIC1, _MAGIC_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
_FLAG_NOT_MAIN_FLASH = 0x1
_FLAG_FAMILY = 0x2000
_BLOCK = 512
_MAX_PAYLOAD = 476
_DEFAULT_NAME = "micropython-v1.28.0-RPI_PICO.uf2"


class FirmwareError(IoconnectError):
    """A UF2 that an emulated RP2040 cannot boot, or none to be found."""


@dataclass(frozen=True)
class Uf2Image:
    """What a checked UF2 holds."""

    path: Path
    blocks: int
    flash_end: int  # first flash offset past the image's code


def check_uf2(path: Path) -> Uf2Image:
    """Check that ``path`` is an RP2040 UF2 that fits below the filesystem region.

    Raises:
        FirmwareError: unreadable, not UF2, another chip family, or too big.
    """
    where = f"--firmware {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FirmwareError(f"{where}: cannot read it: {exc.strerror}") from exc
    if not data or len(data) % _BLOCK:
        raise FirmwareError(
            f"{where}: {len(data)} bytes is not a whole number of 512-byte UF2 blocks",
            hint="give a .uf2 file built for the Raspberry Pi Pico",
        )
    count = len(data) // _BLOCK
    end = 0
    for i in range(count):
        block = data[i * _BLOCK : (i + 1) * _BLOCK]
        m0, m1, flags, addr, size, number, total, family = struct.unpack_from("<8I", block)
        (m_end,) = struct.unpack_from("<I", block, _BLOCK - 4)
        if (m0, m1, m_end) != (_MAGIC0, _MAGIC1, _MAGIC_END):
            raise FirmwareError(f"{where}: block {i} is not a UF2 block (bad magic numbers)")
        if flags & _FLAG_NOT_MAIN_FLASH:
            continue  # a comment block for the host, never written to flash
        if not flags & _FLAG_FAMILY or family != RP2040_FAMILY:
            raise FirmwareError(
                f"{where}: block {i} is for UF2 family {family:#010x}, not the RP2040's "
                f"{RP2040_FAMILY:#010x}",
                hint="this image is for another chip",
            )
        if size > _MAX_PAYLOAD or total != count or number != i:
            raise FirmwareError(f"{where}: block {i} is malformed (size/number/count)")
        offset = addr - XIP_BASE
        if offset < 0:
            raise FirmwareError(f"{where}: block {i} is for address {addr:#x}, below flash")
        end = max(end, offset + size)
    if end > FS_START:
        raise FirmwareError(
            f"{where}: the image runs to flash offset {end:#x}, into the filesystem at "
            f"{FS_START:#x}",
            hint="give a MicroPython build for the RPI_PICO board (its code ends below 640 KiB)",
        )
    if end == 0:
        raise FirmwareError(f"{where}: the image holds no flash data")
    return Uf2Image(path, count, end)


def default_uf2() -> Path:
    """The stock Pico UF2: ``$IOCONNECT_PICO_UF2``, else ``shared/firmware/`` beside the project.

    Raises:
        FirmwareError: none found (it is never downloaded).
    """
    env = os.environ.get(UF2_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for folder in here.parents:
        candidate = folder / "shared" / "firmware" / _DEFAULT_NAME
        if candidate.is_file():
            return candidate
    raise FirmwareError(
        f"no MicroPython UF2 for the rp2040 engine: {_DEFAULT_NAME} is not in a shared/firmware/ "
        "folder above the project",
        hint=f"give --firmware FILE.uf2 or set {UF2_ENV}",
    )


def code_region(uf2: Path) -> bytearray:
    """The flash below the filesystem as the (checked) ``uf2`` leaves it: erased (0xFF)
    where it writes nothing."""
    code = bytearray(b"\xff" * FS_START)
    data = uf2.read_bytes()
    for i in range(len(data) // _BLOCK):
        block = data[i * _BLOCK : (i + 1) * _BLOCK]
        flags, addr, size = struct.unpack_from("<3I", block, 8)
        offset = addr - XIP_BASE
        if not flags & _FLAG_NOT_MAIN_FLASH and 0 <= offset <= FS_START - size:
            code[offset : offset + size] = block[32 : 32 + size]
    return code


def code_uf2(code: bytes) -> bytes:
    """A UF2 that writes ``code`` (the flash below the filesystem): one block per page that
    is not erased, as MicroPython's own images are laid out."""
    pages = [o for o in range(0, len(code), _PAGE) if code[o : o + _PAGE] != b"\xff" * _PAGE]
    out = bytearray()
    for number, offset in enumerate(pages):
        out += struct.pack(
            "<8I", _MAGIC0, _MAGIC1, _FLAG_FAMILY, XIP_BASE + offset, _PAGE, number, len(pages),
            RP2040_FAMILY,
        )  # fmt: skip
        out += code[offset : offset + _PAGE].ljust(_MAX_PAYLOAD, b"\0")
        out += struct.pack("<I", _MAGIC_END)
    return bytes(out)
