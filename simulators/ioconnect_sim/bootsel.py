"""The RP2040 boot ROM's USB drive (BOOTSEL mode), as a folder in the state folder.

A Pico held in BOOTSEL shows a FAT drive labelled RPI-RP2 holding INFO_UF2.TXT
and INDEX.HTM; a UF2 file copied onto it is written to flash block by block,
and once every block of the file has arrived the chip reboots into it. Here
the drive is ``<state>/RPI-RP2``; a file copied there is taken once no
process has it open any more (the writer closed it), checked as a whole (UF2
magic numbers, the board's family id, addresses inside the flash, a complete
block set), and its pages are written into the board's flash, erasing each
4 KiB sector they touch as the boot ROM does; the rest of the flash keeps what
it held. Where the flash is depends on the engine: the unix engine's flash
file (``flashfs``, the default here), or the rp2040 engine's firmware and
filesystem images (it passes its own ``install``). A file that fails a check
is removed and the reason logged and written to ``REFUSED.TXT`` on the drive
(a virtual drive's own: the boot ROM has no way to say why); the drive stays.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ioconnect_host.errors import IoconnectError
from ioconnect_host.uf2 import FLAG_NOT_MAIN_FLASH, UF2Block, check_image, parse_uf2

from .flashfs import read_flash, write_flash

__all__ = ["DRIVE", "INFO_UF2", "REFUSED", "Drive", "Install", "Outcome", "drive_path", "program"]

DRIVE = "RPI-RP2"
#: Written on the drive when a copied file is refused: the reason (it names the file).
REFUSED = "REFUSED.TXT"
#: Writes a checked file's blocks into the board's flash; raises IoconnectError to refuse it.
Install = Callable[[list[UF2Block], str], None]
#: The RP2040 boot ROM's INFO_UF2.TXT (RP2040 datasheet 2.8.4.1.2).
INFO_UF2 = "UF2 Bootloader v3.0\r\nModel: Raspberry Pi RP2\r\nBoard-ID: RPI-RP2\r\n"
_INDEX = (
    '<html><head><meta http-equiv="refresh" content="0;URL=\'https://raspberrypi.com/'
    "device/RP2?version=E0C9125B0D9B'\"/></head><body>Redirecting to "
    "<a href='https://raspberrypi.com/device/RP2?version=E0C9125B0D9B'>raspberrypi.com</a>"
    "</body></html>\r\n"
)
_SECTOR = 4096  # the flash's erase unit


def _closed(path: Path) -> bool | None:
    """True when no process has ``path`` open; None where the kernel cannot tell.

    A write lease is granted only while nobody else holds the file open, so
    a copy that pauses mid-way (page cache flushing) is never taken as done.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        # EAGAIN: still open elsewhere; otherwise no leases here (then: unchanged
        # size and time across two looks).
        return False if exc.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    finally:
        os.close(fd)


def drive_path(state_dir: Path) -> Path:
    """Where a virtual Pico's BOOTSEL drive appears."""
    return state_dir / DRIVE


@dataclass(frozen=True)
class Outcome:
    """A file the drive took (``error`` is None: it is now the flash) or refused."""

    name: str
    error: str | None
    blocks: int = 0


class Drive:
    """The BOOTSEL drive of one virtual board while it is in BOOTSEL mode."""

    def __init__(
        self,
        state_dir: Path,
        *,
        family: int,
        base: int,
        flash_size: int,
        install: Install | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.path = drive_path(state_dir)
        self._family, self._base, self._size = family, base, flash_size
        self._install = install or self._write_flash_file
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (size, mtime) at the last look

    def open(self) -> None:
        """Show the drive with the boot ROM's two files; leftovers of a last time go."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(mode=0o700)
        (self.path / "INFO_UF2.TXT").write_text(INFO_UF2)
        (self.path / "INDEX.HTM").write_text(_INDEX)
        self._seen.clear()

    def close(self) -> None:
        """The drive vanishes (the board left BOOTSEL)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def poll(self) -> Outcome | None:
        """Take the first copied file that its writer has closed."""
        try:
            entries = sorted(self.path.iterdir())
        except FileNotFoundError:
            return None
        now: dict[str, tuple[int, int]] = {}
        for entry in entries:
            if entry.name in ("INFO_UF2.TXT", "INDEX.HTM", REFUSED) or not entry.is_file():
                continue
            st = entry.stat()
            now[entry.name] = (st.st_size, st.st_mtime_ns)
            closed = _closed(entry)
            if closed or (closed is None and self._seen.get(entry.name) == now[entry.name]):
                return self._take(entry)
        self._seen = now
        return None

    def _take(self, entry: Path) -> Outcome:
        data = entry.read_bytes()
        with contextlib.suppress(OSError):
            entry.unlink()
        with contextlib.suppress(OSError):
            (self.path / REFUSED).unlink()  # about an earlier file
        self._seen.pop(entry.name, None)
        try:
            blocks = parse_uf2(data, name=entry.name)
            check_image(
                blocks, family=self._family, base=self._base, limit=self._size, name=entry.name
            )
            self._install(blocks, entry.name)
        except IoconnectError as exc:
            reason = str(exc).replace("\n", " ")
            with contextlib.suppress(OSError):
                (self.path / REFUSED).write_text(f"{reason}\r\n")
            return Outcome(entry.name, reason)
        return Outcome(entry.name, None, len(blocks))

    def _write_flash_file(self, blocks: list[UF2Block], name: str) -> None:
        flash = read_flash(self.state_dir, self._size)
        program(flash, blocks, self._base)
        write_flash(self.state_dir, bytes(flash))


def program(flash: bytearray, blocks: list[UF2Block], base: int) -> None:
    """Write checked ``blocks`` into ``flash`` (its first byte at address ``base``) as the
    boot ROM does: each 4 KiB sector a block touches is erased once, then programmed."""
    erased: set[int] = set()
    for b in blocks:
        if b.flags & FLAG_NOT_MAIN_FLASH:
            continue
        off = b.addr - base
        for sector in range(off // _SECTOR, (off + len(b.data) - 1) // _SECTOR + 1):
            if sector not in erased:
                flash[sector * _SECTOR : (sector + 1) * _SECTOR] = b"\xff" * _SECTOR
                erased.add(sector)
        flash[off : off + len(b.data)] = b.data
