"""The rp2040 engine: the stock MicroPython Pico firmware on an emulated RP2040.

Same contract as the unix-port engine (:class:`ioconnect_sim.supervisor.VirtualBoard`):
a pty is the board's USB serial port, the state folder (locked while the board
runs, with the control FIFO ``sim stop`` and ``sim fault --power-cut`` write to)
holds everything the board keeps, and the board is recorded in the registry.

The state folder holds:

- ``firmware.uf2``: the MicroPython image, checked before it is copied in;
- ``flash.lfs``: the littlefs filesystem region of the flash (352 blocks of
  4 KiB), written as the firmware programs it (see ``rp2040_chip``), so it
  survives stop, start and power cuts, and ``rp2040py --littlefs`` or
  littlefs-python read it as it is;
- ``console.log``: what the board printed.

Each power-on is one ``rp2040_chip`` process; this supervisor owns the pty, so
the port stays the same when the chip is killed and powered on again.
``machine.reset()`` and the watchdog reset the chip inside that process, as
rp2040py models them.

``machine.bootloader()`` ends that process with ``EXIT_BOOTSEL``: the board is
in BOOTSEL, its RPI-RP2 drive is the folder ``<state>/RPI-RP2`` as on the unix
engine (``bootsel.Drive``), and the serial port stays silent. A UF2 copied
there is checked (UF2 format, the RP2040 family id, inside the 2 MiB flash),
written as the boot ROM writes it (4 KiB sectors erased, then programmed) over
this board's flash, which is ``firmware.uf2`` below the filesystem and
``flash.lfs`` in it, so the filesystem survives a firmware update unless the
UF2 writes there too; and the new firmware must boot to a MicroPython REPL on
a scratch chip before it replaces the old one (``flash_from_drive``). Then the
drive goes and the chip powers on. A refused file leaves the board in BOOTSEL
with its old flash and the reason in ``REFUSED.TXT`` on the drive and in
``console.log``; a reset or power cut boots the old firmware. The 1200 baud
touch is not modelled: stock MicroPython for the Pico does not honour it
(ports/rp2 leaves ``MICROPY_HW_USB_CDC_1200BPS_TOUCH`` off; measured: the
emulated firmware ignores SET_LINE_CODING 1200 with DTR dropped).

Device time is cycle-counted at 125 MHz; wall time runs 20-50 times slower, so
the board announces :data:`SLOWNESS` in its registry record and host limits
scale by it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from ioconnect_host.errors import IoconnectError
from ioconnect_host.uf2 import UF2Block

from .boardlog import RotatingLog
from .bootsel import Drive, drive_path, program
from .rp2040_chip import EXIT_BOOTSEL, FS_SIZE, FS_START
from .rp2040_firmware import (
    FLASH_SIZE,
    RP2040_FAMILY,
    XIP_BASE,
    FirmwareError,
    check_uf2,
    code_region,
    code_uf2,
    default_uf2,
)
from .statelock import StateLockedError, hold_state_lock, open_control
from .supervisor import StateInUseError, write_faults

__all__ = [
    "SLOWNESS",
    "Rp2040Board",
    "Rp2040Config",
    "flash_from_drive",
    "install_uf2",
    "prepare_state",
]

#: Wall time per device time on this emulator (measured 20x for plain loops, 50x
#: for bigint code on a 2-core x86-64), with room for a loaded machine.
SLOWNESS = 60.0
_DIE_WITH_US = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
_BOOT_CHECK_S = 60.0
#: The drive's own check: short of `ioconnect flash`'s 60 s wait for the drive to go (a
#: boot to the REPL takes about 2 s here; the rest is room for a loaded machine).
_DRIVE_CHECK_S = 30.0


@dataclass
class Rp2040Config:
    """One rp2040-engine board."""

    name: str
    state_dir: Path

    @property
    def firmware(self) -> Path:
        return self.state_dir / "firmware.uf2"

    @property
    def flash_image(self) -> Path:
        return self.state_dir / "flash.lfs"

    @property
    def faults(self) -> Path:
        return self.state_dir / "faults.json"


def _temperature_c() -> float:
    """What the Pico's on-chip sensor reads while healthy: its board file's mean."""
    from ioconnect_host.boards import load_board

    sensors = [s for s in load_board("rpi-pico").sensors if s.name == "temperature"]
    return sensors[0].mean_c if sensors else 27.0


def install_uf2(uf2: Path, state_dir: Path, *, boot_check: bool = True) -> None:
    """Check ``uf2`` (format, family, size, and that it boots to a REPL) and make it the
    firmware of the board in ``state_dir`` (copied, then renamed in).

    Raises:
        FirmwareError: the image fails a check.
    """
    check_uf2(uf2)
    if boot_check:
        boots_to_repl(uf2)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".firmware-", suffix=".uf2", dir=state_dir)
    os.close(fd)
    try:
        shutil.copyfile(uf2, tmp)
        os.replace(tmp, state_dir / "firmware.uf2")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def boots_to_repl(uf2: Path, timeout_s: float = _BOOT_CHECK_S, *, label: str = "") -> None:
    """Boot ``uf2`` on a scratch flash and ask its REPL for ``sys.platform``.

    ``label`` names the image in the error (default: ``--firmware PATH``).

    Raises:
        FirmwareError: no MicroPython REPL answered ``rp2`` within ``timeout_s``.
    """
    where = label or f"--firmware {uf2}"
    from ioconnect_host.transport import SerialTransport, TransportError

    with tempfile.TemporaryDirectory(prefix="ioc-uf2-check-") as scratch:
        board = Rp2040Board(Rp2040Config("uf2-check", Path(scratch)), firmware=uf2)
        try:
            board.start()
            with SerialTransport(board.port, byte_timeout_s=timeout_s) as t:
                t.enter_raw_repl(timeout_s=timeout_s)
                platform = t.eval("__import__('sys').platform", timeout_s=timeout_s)
        except (TransportError, IoconnectError) as exc:
            raise FirmwareError(f"{where}: it did not boot to a MicroPython REPL: {exc}") from exc
        finally:
            board.stop()
    if platform != "rp2":
        raise FirmwareError(f"{where}: it boots, but sys.platform is {platform!r}")


def flash_from_drive(
    state_dir: Path, blocks: list[UF2Block], name: str, *, boot_timeout_s: float = _DRIVE_CHECK_S
) -> None:
    """Write a UF2 taken from the BOOTSEL drive (``blocks``, already checked for family and
    range) over the flash of the board in ``state_dir``, if the firmware it leaves there
    boots to a REPL: ``firmware.uf2`` below the filesystem, ``flash.lfs`` in it.

    Raises:
        FirmwareError: the firmware would not boot, or the state folder cannot be
            written; the old firmware stays.
    """
    fw, lfs = state_dir / "firmware.uf2", state_dir / "flash.lfs"
    flash = bytearray(b"\xff" * FLASH_SIZE)
    try:
        if fw.is_file():
            flash[:FS_START] = code_region(fw)
        if lfs.is_file():
            flash[FS_START : FS_START + FS_SIZE] = lfs.read_bytes()
        old_fs = bytes(flash[FS_START : FS_START + FS_SIZE])
        program(flash, blocks, XIP_BASE)
        new_fs = bytes(flash[FS_START : FS_START + FS_SIZE])
        fd, tmp = tempfile.mkstemp(prefix=".firmware-", suffix=".uf2", dir=state_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(code_uf2(bytes(flash[:FS_START])))
            boots_to_repl(Path(tmp), boot_timeout_s, label=name)
            if new_fs != old_fs:  # the UF2 brought a filesystem: it replaces the files
                _replace(lfs, new_fs)
            os.replace(tmp, fw)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:
        raise FirmwareError(f"{name}: cannot write the board's flash: {exc}") from exc


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class Rp2040Board:
    """An emulated Pico: start() it, give ``port`` to any serial tool, stop() it.

    ``firmware``: a UF2 to use instead of the state folder's ``firmware.uf2``
    (already checked by the caller, e.g. :func:`install_uf2`).
    """

    engine = "rp2040"
    slowness = SLOWNESS

    def __init__(self, config: Rp2040Config, *, firmware: Path | None = None) -> None:
        self.config = config
        self.port = ""
        self.uart_port = ""  # UART(1) is not wired on this engine
        self.boots = 0
        self._firmware = firmware
        self._master = self._slave = -1
        self._lock_fd = -1
        self._ctl = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._running = False
        self._claim = threading.Lock()  # one stop() wins
        self._power = threading.Lock()  # one power-on or power cut at a time
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._drive: Drive | None = None  # the RPI-RP2 drive while in BOOTSEL

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> str:
        """Create the serial port and power the board on."""
        if self._running:
            return self.port
        cfg = self.config
        image = self._firmware or cfg.firmware
        if not image.is_file():
            raise FirmwareError(f"{cfg.state_dir} has no firmware.uf2", hint="give --firmware")
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cfg.state_dir.chmod(0o700)  # the flash holds the identity key
        try:
            self._lock_fd = hold_state_lock(cfg.state_dir, cfg.name)
        except StateLockedError:
            raise StateInUseError(
                f"{cfg.state_dir} is in use by another virtual board",
                hint="stop it first, or give this one its own --state folder",
            ) from None
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.fchmod(self._slave, 0o600)
        self.port = os.ttyname(self._slave)
        self._ctl = open_control(cfg.state_dir)
        # A fresh start clears faults injected into an earlier run, as on the unix engine;
        # a power cut keeps them (the chip reads this file, rewritten in place).
        cfg.faults.unlink(missing_ok=True)
        write_faults(cfg.state_dir, {})
        shutil.rmtree(drive_path(cfg.state_dir), ignore_errors=True)  # left by a killed run
        self._stopped.clear()
        self._running = True
        self._power_on()
        self._thread = threading.Thread(target=self._watch, name=f"rp2040-{cfg.name}", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Power off and close the port (a no-op when not running)."""
        with self._claim:
            if not self._running:
                return
            self._running = False
        self._stopped.set()
        with self._power:
            self._kill()
            self._close_drive()  # unplugged: the drive goes with the board
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for fd in (self._master, self._slave, self._ctl, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = self._ctl = self._lock_fd = -1

    def wait(self) -> None:
        """Block until stop() (the foreground mode of ``sim start``)."""
        self._stopped.wait()

    def power_cut(self) -> None:
        """Kill the chip where it stands, then power on again from the same flash."""
        with self._power:
            if not self._running:
                return
            self._kill()
            self._close_drive()  # out of BOOTSEL: the flash boots as it is
            self._power_on()

    @property
    def in_bootsel(self) -> bool:
        """True while the board shows its RPI-RP2 drive (no chip process runs)."""
        return self._drive is not None

    @property
    def vm_pid(self) -> int | None:
        """Process id of the current chip (None while powered off)."""
        proc = self._proc
        return proc.pid if proc else None

    def __enter__(self) -> Rp2040Board:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- chip process ------------------------------------------------------
    def _power_on(self) -> None:
        cfg = self.config
        argv = [*_DIE_WITH_US, sys.executable, "-m", "ioconnect_sim.rp2040_chip"]
        argv += ["--image", str(self._firmware or cfg.firmware), "--flash", str(cfg.flash_image)]
        argv += ["--serial-fd", str(self._master), "--log", str(cfg.state_dir / "console.log")]
        argv += ["--faults", str(cfg.faults), "--temperature-c", str(_temperature_c())]
        err = os.open(cfg.state_dir / "chip.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=(self._master,),
                start_new_session=True,  # a Ctrl-C in the user's terminal is not the board's
                umask=0o077,
            )
        finally:
            os.close(err)
        self.boots += 1

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # the flash image already holds every completed write
            proc.wait()

    def _watch(self) -> None:
        """Serve the control FIFO; power on again a chip that died on its own."""
        sel = selectors.DefaultSelector()
        sel.register(self._ctl, selectors.EVENT_READ)
        try:
            while not self._stopped.is_set():
                if sel.select(timeout=0.2):
                    try:
                        words = os.read(self._ctl, 512).split()
                    except BlockingIOError:
                        words = []
                    for word in words:
                        if word == b"stop":
                            threading.Thread(target=self.stop, daemon=True).start()
                        elif word in (b"power-cut", b"reset"):
                            # RESET (the RUN pin) restarts the chip from flash, RAM
                            # lost: MicroPython on rp2 reports it as a power-on.
                            self.power_cut()
                self._check_chip()
                self._check_drive()
        except OSError:
            if not self._stopped.is_set():
                raise
        finally:
            sel.close()

    def _check_chip(self) -> None:
        with self._power:
            proc = self._proc
            if self._running and proc is not None and proc.poll() is not None:
                self._proc = None
                if proc.returncode == EXIT_BOOTSEL:
                    self._open_drive()
                    return
                # Crashed (an emulator error, see chip.log): reboot like a watchdog.
                time.sleep(0.5)
                self._power_on()

    # -- BOOTSEL -----------------------------------------------------------
    def _open_drive(self) -> None:
        state = self.config.state_dir
        drive = Drive(
            state,
            family=RP2040_FAMILY,
            base=XIP_BASE,
            flash_size=FLASH_SIZE,
            install=lambda blocks, name: flash_from_drive(state, blocks, name),
        )
        drive.open()
        self._drive = drive
        self._log(f"[sim] BOOTSEL: drive {drive.path}")

    def _close_drive(self) -> None:
        drive, self._drive = self._drive, None
        if drive is not None:
            drive.close()

    def _check_drive(self) -> None:
        # A file is taken in this thread: its boot check (a scratch chip) takes a
        # while, and a power cut or stop meanwhile waits for it.
        with self._power:
            drive = self._drive
            if drive is None or not self._running:
                return
            outcome = drive.poll()
            if outcome is None:
                return
            if outcome.error is not None:
                self._log(f"[sim] BOOTSEL: refused {outcome.name}: {outcome.error}")
                return
            self._log(f"[sim] BOOTSEL: flashed {outcome.name} ({outcome.blocks} blocks)")
            self._firmware = None  # the state folder's firmware.uf2 is the new one
            self._close_drive()  # the boot ROM reboots once the last block is written
            self._power_on()

    def _log(self, line: str) -> None:
        # No chip process writes the log meanwhile: in BOOTSEL none runs.
        log = RotatingLog(self.config.state_dir / "console.log")
        log.write(f"\r\n{line}\r\n".encode())
        log.close()


def prepare_state(state_dir: Path, firmware: Path | None) -> None:
    """Give a board in ``state_dir`` its firmware: ``firmware`` (checked), or on a new
    board the default UF2; an existing board keeps the one it has.

    Raises:
        FirmwareError: the image fails a check, or there is none.
    """
    if firmware is not None:
        install_uf2(firmware, state_dir)
    elif not (state_dir / "firmware.uf2").is_file():
        install_uf2(default_uf2(), state_dir, boot_check=False)  # the project's own image

