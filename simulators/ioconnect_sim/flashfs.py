"""A board's flash as a file, and the littlefs filesystem in its partition.

One module for every board family: ``image build`` makes filesystem images
here, a virtual board keeps its whole flash chip in ``<state>/flash.bin``
once something was flashed to it (a UF2 on the BOOTSEL drive, esptool's
writes), and boots with the littlefs partition of that file mounted as its
filesystem (vm/_flashbd.py; writes land in the file as they happen, so a
power cut keeps what littlefs had committed). A board without ``flash.bin``
keeps its filesystem in the ``flash/`` folder as before.

The littlefs layout is MicroPython's (extmod/vfs_lfs.c, littlefs v2): the
partition's blocks are the flash's 4 KiB erase sectors, on-disk version 2.0
(what MicroPython v1.2x reads), names up to 255 bytes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ioconnect_host.errors import IoconnectError

if TYPE_CHECKING:
    import littlefs

__all__ = [
    "FLASH_FILE",
    "FlashFsError",
    "Partition",
    "erased",
    "flash_path",
    "has_flash",
    "lfs_image",
    "lfs_read",
    "mount_config",
    "read_flash",
    "read_flash_files",
    "write_flash",
]

#: The flash chip's contents, in a virtual board's state folder.
FLASH_FILE = "flash.bin"
_DISK_VERSION = 0x00020000  # littlefs 2.0: MicroPython's littlefs does not read 2.1
_PROG_SIZE = 256  # the rp2 port's progsize (and a page of NOR flash)
_READ_SIZE = 32  # MicroPython's VfsLfs2 default readsize
_LFS_ERR_NOSPC = -28


class FlashFsError(IoconnectError):
    """A filesystem image that cannot be made or read."""


class Partition(Protocol):
    """Where the filesystem sits: ``boards.Filesystem`` has these."""

    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def block_size(self) -> int: ...


def _fs(image: bytearray | None, size: int, block: int, mount: bool) -> littlefs.LittleFS:
    import littlefs  # only image building and flashed boards need it

    fs = littlefs.LittleFS(
        block_size=block,
        block_count=size // block,
        read_size=_READ_SIZE,
        prog_size=_PROG_SIZE,
        lookahead_size=32,
        # Images we make are 2.0, which every MicroPython reads; when reading, a
        # board's newer littlefs may have moved its partition on to 2.1.
        disk_version=_DISK_VERSION if image is None else 0,
        mount=False,
    )
    if image is not None:
        fs.context.buffer = image
    if mount:
        fs.mount()
    return fs


def lfs_image(files: Mapping[str, bytes], *, size: int, block_size: int) -> bytes:
    """A littlefs partition of ``size`` bytes holding ``files`` (path -> bytes).

    Raises:
        FlashFsError: the files do not fit, or a path is not a plain relative path.
    """
    import littlefs

    fs = _fs(None, size, block_size, mount=False)
    fs.format()
    fs.mount()
    try:
        for path, data in sorted(files.items()):
            parts = path.split("/")
            if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise FlashFsError(f"{path!r} is not a path on the board's filesystem")
            if len(parts) > 1:
                fs.makedirs("/".join(parts[:-1]), exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(data)
    except littlefs.errors.LittleFSError as exc:
        if exc.code == _LFS_ERR_NOSPC:
            need = sum(len(d) for d in files.values())
            raise FlashFsError(
                f"the files ({need} bytes) do not fit the {size} byte filesystem partition"
            ) from exc
        raise FlashFsError(f"littlefs: {exc}") from exc
    fs.unmount()
    return bytes(fs.context.buffer)


def lfs_read(image: bytes, *, block_size: int) -> dict[str, bytes]:
    """Every file of the littlefs partition ``image`` (path -> bytes), as a board sees it.

    Raises:
        FlashFsError: ``image`` holds no littlefs filesystem (erased, or damaged).
    """
    import littlefs

    try:
        fs = _fs(bytearray(image), len(image), block_size, mount=True)
    except littlefs.errors.LittleFSError as exc:
        raise FlashFsError(f"no littlefs filesystem in the partition ({exc})") from exc
    out: dict[str, bytes] = {}
    for root, _dirs, names in fs.walk("/"):
        for n in names:
            path = f"{root.rstrip('/')}/{n}".lstrip("/")
            with fs.open(path, "rb") as f:
                out[path] = f.read()
    return out


def erased(size: int) -> bytes:
    """Flash as it leaves the factory: every bit set."""
    return b"\xff" * size


def flash_path(state_dir: Path) -> Path:
    """The flash file of the virtual board whose state folder is ``state_dir``."""
    return state_dir / FLASH_FILE


def has_flash(state_dir: Path) -> bool:
    """True once something was flashed: the board then boots from ``flash.bin``."""
    return flash_path(state_dir).is_file()


def read_flash(state_dir: Path, size: int) -> bytearray:
    """The board's flash (erased if never flashed), ``size`` bytes."""
    try:
        data = bytearray(flash_path(state_dir).read_bytes())
    except FileNotFoundError:
        return bytearray(erased(size))
    return data[:size] + erased(size - len(data)) if len(data) < size else data[:size]


def write_flash(state_dir: Path, data: bytes) -> None:
    """Replace the board's flash with ``data``: all of it or none (temp file + rename)."""
    path = flash_path(state_dir)
    fd, tmp = tempfile.mkstemp(prefix=".flash-", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_flash_files(state_dir: Path, part: Partition) -> dict[str, bytes]:
    """The files in the filesystem partition of a board's flash file.

    Raises:
        FlashFsError: no flash file, or no littlefs in its partition.
    """
    if not has_flash(state_dir):
        raise FlashFsError(f"{state_dir} holds no flashed image ({FLASH_FILE})")
    with flash_path(state_dir).open("rb") as f:
        f.seek(part.offset)
        image = f.read(part.size)
    return lfs_read(image, block_size=part.block_size)


def mount_config(state_dir: Path, part: Partition) -> dict[str, object] | None:
    """What the VM needs to mount the flashed filesystem (None: boot from the folder).

    Read by vm/_simboard.py at power-on; the VM formats the partition when it
    holds no littlefs, as the rp2 and esp32 ports do on first boot.
    """
    if not has_flash(state_dir):
        return None
    return {
        "path": str(flash_path(state_dir).absolute()),
        "offset": part.offset,
        "size": part.size,
        "block_size": part.block_size,
    }
