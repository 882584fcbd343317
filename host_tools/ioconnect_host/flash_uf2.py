"""Flash a Pico-family board through its BOOTSEL drive (RPI-RP2), as a user would by hand.

1. Check the UF2 before anything touches the board: magic numbers, a complete
   block set, the board's family id, every block inside the flash.
2. Ask the running MicroPython for its bootloader (``machine.bootloader()``
   at the REPL); if it does not answer, the 1200 baud touch (MicroPython's USB
   serial enters the bootloader when the host sets 1200 baud).
3. Wait for the drive: a virtual board's ``<state>/RPI-RP2`` folder, or a
   mounted FAT volume whose ``INFO_UF2.TXT`` says ``Board-ID: RPI-RP2``. If
   none appears, say how to hold BOOTSEL by hand.
4. Copy the file. A FAT drive takes no rename, so the copy is written
   straight, synced, and then the drive must vanish: the boot ROM reboots
   once it has every block. A virtual drive that refuses the file says why in
   its ``REFUSED.TXT`` (a real boot ROM just ignores it).
5. Wait for the board's serial port to answer again.

An emulated board (``BoardRef.slowness`` > 1) boots slowly and checks a UF2
before it takes it: it gets the whole ``timeout_s`` for each step and its
REPL is asked with limits scaled by its slowness.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .boards import Board
from .doctor import _unescape as unescape_mount_field  # /proc/mounts octal escapes
from .errors import IoconnectError
from .ports import BoardRef, find_again, probe
from .uf2 import check_image, parse_uf2

__all__ = [
    "BOOTSEL_STEPS",
    "FlashUF2Error",
    "UF2FlashResult",
    "check_uf2_for",
    "find_rp2_drive",
    "flash_uf2",
]

_BOOTLOADER_CMD = b"\r\x03\x03\x02import machine\r\nmachine.bootloader()\r\n"
#: What a user does when the board cannot be asked (no MicroPython, a crashed one).
BOOTSEL_STEPS = (
    "unplug the board, hold its BOOTSEL button while plugging it back in, release it; "
    "an RPI-RP2 drive appears (mount it if your system does not), then run this again"
)
_INFO = "INFO_UF2.TXT"
_REFUSED = "REFUSED.TXT"  # a virtual drive's reason for refusing a file


class FlashUF2Error(IoconnectError):
    """The board could not be flashed through its BOOTSEL drive."""


@dataclass
class UF2FlashResult:
    """What :func:`flash_uf2` did."""

    firmware: str
    bytes: int
    blocks: int
    drive: str
    how: str  # "bootloader call" | "1200 baud touch" | "already in BOOTSEL"
    port: str | None
    seconds: float

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def check_uf2_for(board: Board, data: bytes, name: str) -> tuple[int, bool]:
    """Refuse a UF2 that is not a complete image for ``board``.

    Returns:
        The block count, and whether it writes into the filesystem partition
        (an ``image build`` image: it replaces the files, the identity with them).

    Raises:
        UF2Error: see :func:`~ioconnect_host.uf2.parse_uf2` and ``check_image``.
        FlashUF2Error: ``board`` does not take UF2 files.
    """
    flash = board.flash
    if flash.firmware_format != "uf2":
        raise FlashUF2Error(f"{board.name} is not flashed with UF2 files")
    blocks = parse_uf2(data, name=name)
    check_image(blocks, family=flash.uf2_family, base=flash.image_base, limit=flash.size, name=name)
    fs_start = flash.image_base + board.filesystem.offset
    return len(blocks), any(b.addr + len(b.data) > fs_start for b in blocks)


def _is_rp2_drive(path: Path) -> bool:
    try:
        return "Board-ID: RPI-RP2" in (path / _INFO).read_text(errors="replace")
    except OSError:
        return False


def find_rp2_drive(mounts: Path = Path("/proc/mounts")) -> Path | None:
    """A mounted RPI-RP2 drive of a real board (first found), or None."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or fields[2] not in ("vfat", "msdos", "fuseblk", "exfat"):
            continue
        point = Path(unescape_mount_field(fields[1]))
        if _is_rp2_drive(point):
            return point
    return None


def _sim_drive(ref: BoardRef) -> Path | None:
    from ioconnect_sim.bootsel import drive_path
    from ioconnect_sim.registry import find_running

    return drive_path(Path(find_running(str(ref.sim_name)).state_dir))


def _drive_now(ref: BoardRef | None, given: Path | None) -> Path | None:
    if given is not None:
        return given if _is_rp2_drive(given) else None
    if ref is not None and ref.sim_name is not None:
        path = _sim_drive(ref)
        return path if path is not None and _is_rp2_drive(path) else None
    return find_rp2_drive()


def _ask_bootloader(port: str) -> bool:
    """``machine.bootloader()`` at the REPL; False if the port could not be written."""
    import serial

    try:
        with serial.Serial(port, 115200, timeout=1, write_timeout=2) as s:
            s.write(_BOOTLOADER_CMD)
            s.flush()
    except (OSError, serial.SerialException):
        return False
    return True


def _touch_1200(port: str) -> bool:
    import serial

    try:
        with serial.Serial(port, 1200):
            pass
    except (OSError, serial.SerialException):
        return False
    return True


def _wait(check: Callable[[], Path | None], timeout_s: float) -> Path | None:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def flash_uf2(
    board: Board,
    firmware: Path,
    *,
    ref: BoardRef | None,
    drive: Path | None = None,
    timeout_s: float = 30.0,
    erase_identity: bool = False,
    say: Callable[[str], None] = lambda text: None,
) -> UF2FlashResult:
    """Put ``firmware`` (a UF2) on the board ``ref`` through its BOOTSEL drive.

    Args:
        board: the board definition (family id, flash size).
        firmware: the UF2 file (MicroPython, or an ``image build`` image).
        ref: the board's serial port (None: it is in BOOTSEL already).
        drive: the RPI-RP2 drive's mount point (default: found by itself).
        timeout_s: for each wait (drive appearing, vanishing, port answering).
        erase_identity: allow an image that replaces the filesystem of a board
            that holds an identity (its key is then gone for good).
        say: progress lines for a person.

    Raises:
        UF2Error: the file is not a complete UF2 for this board (nothing was touched).
        FlashUF2Error: no drive appeared (with the steps to do by hand), or the
            drive or the port did not come back.
    """
    start = time.monotonic()
    data = firmware.read_bytes()
    blocks, writes_fs = check_uf2_for(board, data, firmware.name)
    slowness = ref.slowness if ref is not None else 1.0
    how = "already in BOOTSEL"
    found = _drive_now(ref, drive)
    if found is None and ref is not None and writes_fs:
        _keep_identity(ref, firmware.name, erase_identity, say, slowness)
    if found is None and ref is not None:
        # Ask the firmware first (it answers on a board running MicroPython); the
        # touch also works where the REPL is busy or hung.
        for name, action in (
            ("bootloader call", _ask_bootloader),
            ("1200 baud touch", _touch_1200),
        ):
            if not action(ref.port):
                continue
            say(f"asked for the bootloader ({name}); waiting for the RPI-RP2 drive")
            wait_s = min(timeout_s, 10.0) if slowness <= 1 else timeout_s
            found = _wait(lambda: _drive_now(ref, drive), wait_s)
            if found is not None:
                how = name
                break
    if found is None:
        raise FlashUF2Error("no RPI-RP2 drive appeared", hint=BOOTSEL_STEPS)
    say(f"copying {firmware.name} ({len(data)} bytes, {blocks} blocks) to {found}")
    target = found / "FIRMWARE.UF2"
    with contextlib.suppress(OSError):
        (found / _REFUSED).unlink()  # about an earlier copy
    with open(target, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _wait_taken(found, firmware.name, ref, timeout_s)
    port = None
    if ref is not None:
        say("waiting for the board's serial port")
        port = _wait_port(ref, timeout_s, slowness)
    return UF2FlashResult(
        str(firmware), len(data), blocks, str(found), how, port, time.monotonic() - start
    )


def _wait_taken(found: Path, name: str, ref: BoardRef | None, timeout_s: float) -> None:
    """Until the drive vanishes (the board took the file); a refusal or the time is an error."""
    deadline = time.monotonic() + timeout_s
    while (found / _INFO).exists():
        try:
            reason = (found / _REFUSED).read_text(errors="replace").strip()
        except OSError:
            reason = ""
        if reason:
            back = f"`ioconnect sim reset {ref.sim_name}`" if ref and ref.sim_name else "unplug it"
            raise FlashUF2Error(
                f"the board refused {name}: {reason}",
                hint=f"it is in BOOTSEL with its old firmware: copy a good UF2, or {back} "
                "to run the old one",
            )
        if time.monotonic() >= deadline:
            raise FlashUF2Error(
                f"the RPI-RP2 drive {found} is still there after the copy: "
                "the board did not take it",
                hint="copy again, or unplug the board and hold BOOTSEL while plugging it in",
            )
        time.sleep(0.1)


def _wait_port(ref: BoardRef, timeout_s: float, slowness: float = 1.0) -> str:
    deadline = time.monotonic() + timeout_s
    back = find_again(ref, timeout_s=timeout_s)
    while True:
        try:
            probe(back.port, timeout_s=2.0, slowness=slowness)
            return back.port
        except IoconnectError as exc:
            if time.monotonic() >= deadline:
                raise FlashUF2Error(
                    f"the board did not answer on {back.port} after flashing",
                    hint="the new firmware may not start a REPL there",
                ) from exc
            time.sleep(0.2)


def _keep_identity(
    ref: BoardRef, name: str, erase: bool, say: Callable[[str], None], slowness: float
) -> None:
    # The identity key lives in the filesystem: an image that brings its own
    # filesystem destroys it. Only a board that does not answer is taken as blank.
    try:
        did = probe(ref.port, timeout_s=3.0, slowness=slowness).get("did")
    except IoconnectError:
        return
    if did and not erase:
        raise FlashUF2Error(
            f"{name} replaces the filesystem of the board on {ref.port}, which holds the "
            f"identity {did}: the key would be lost",
            hint="flash MicroPython alone to keep it, or give --erase-identity",
        )
    if did:
        say(f"WARNING: erasing the identity {did} of the board on {ref.port}: its key is lost")
