"""A virtual ESP32-family board in download mode: its ROM bootloader on the serial port.

The supervisor (supervisor.py) hands the host's bytes here instead of to the
MicroPython VM while the board is in download mode, and boots MicroPython again
when the host leaves the loader.

The flash is ``flash.bin`` in the state folder (flashfs.py), the size of the
board's chip. A board that never had one keeps its filesystem in the ``flash/``
folder; the first time it enters download mode its flash file is made: erased,
with the folder's files in the ``[filesystem]`` partition as littlefs (so esptool
reads back what the board holds, and a firmware-only flash keeps the identity).
From then on the board boots with that partition mounted (vm/_flashbd.py): what
esptool writes there is what MicroPython finds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from .flashfs import erased, flash_path, has_flash, lfs_image, write_flash
from .romboot import FlashFile, RomBootloader, chip_for

__all__ = ["DownloadMode", "board_mac", "supports_download"]


def supports_download(board: dict[str, object]) -> bool:
    """True if the board's chip has a ROM serial bootloader modelled here."""
    return chip_for(str(board.get("chip", ""))) is not None


def board_mac(board: dict[str, object], name: str, seed: int) -> bytes:
    """The base MAC in the board's eFuse: what its machine.unique_id() returns.

    The same bytes as vm/machine.py's unique_id(): the board's OUI and three
    bytes of its seed/name digest (vm/_sensors.py digest("mac")).
    """
    oui = bytes(int(x, 16) for x in str(board.get("mac_oui", "24:0a:c4")).split(":"))
    digest = hashlib.sha256(f"{seed}|{name}|mac".encode()).digest()
    return oui + digest[:3]


def _folder_files(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _make_flash(board: dict[str, object], state_dir: Path, folder: Path) -> None:
    flash, fs = board["flash"], board["filesystem"]
    assert isinstance(flash, dict) and isinstance(fs, dict)
    data = bytearray(erased(int(flash["size"])))
    offset, size = int(fs["offset"]), int(fs["size"])
    image = lfs_image(_folder_files(folder), size=size, block_size=int(fs["block_size"]))
    data[offset : offset + size] = image
    write_flash(state_dir, bytes(data))


class DownloadMode:
    """One stay in the ROM loader, from entering download mode to the next boot."""

    def __init__(
        self,
        board: dict[str, object],
        name: str,
        seed: int,
        state_dir: Path,
        flash_dir: Path,
        tty_fd: int,
        on_exit: Callable[[str], None],
        max_baud: int = 0,
    ) -> None:
        chip = chip_for(str(board["chip"]))
        assert chip is not None
        flash = board["flash"]
        assert isinstance(flash, dict)
        #: True if this stay made the board's flash file (it boots from it now).
        self.created = not has_flash(state_dir)
        if self.created:
            _make_flash(board, state_dir, flash_dir)
        self.flash = FlashFile(flash_path(state_dir), int(flash["size"]))
        mac = board_mac(board, name, seed)
        self.rom = RomBootloader(chip, self.flash, mac, on_exit, tty_fd, max_baud)

    def banner(self) -> bytes:
        return self.rom.banner()

    def feed(self, data: bytes) -> bytes:
        return self.rom.feed(data)

    def close(self) -> None:
        self.flash.close()
