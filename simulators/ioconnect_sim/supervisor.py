"""The virtual board: a MicroPython VM behind a pseudo-terminal.

The VM runs ``console.py`` (friendly REPL, raw REPL, raw-paste) over plain
pipes, so nothing is echoed or translated by a tty line discipline. This
supervisor sits between the pty and the VM and does what a board's USB stack
and reset circuit do:

- a Ctrl-C byte from the host becomes SIGINT, raised in the VM as
  KeyboardInterrupt wherever it is;
- bare ``\\n`` in the VM's output becomes ``\\r\\n``, as a board's stdout does;
- soft reset, ``machine.reset()``, a crash or a power cut end the VM process;
  a new one boots from the same flash folder, with the reset cause set.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import selectors
import shutil
import struct
import subprocess
import termios
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from ioconnect_host.errors import IoconnectError
from ioconnect_host.vm import micropython_command

from . import download
from .boardlog import DEFAULT_LOG_LIMIT, RotatingLog
from .bootsel import Drive
from .flashfs import has_flash, mount_config
from .interrupt import interrupt_safely
from .linerate import Line
from .statelock import StateLockedError, hold_state_lock, open_control
from .vmlib import compile_vm_lib, vm_dir

__all__ = [
    "MAX_HEAP_KIB",
    "MIN_HEAP_KIB",
    "RESET_CAUSES",
    "WORD_SIZE_FACTOR",
    "HeapError",
    "SimConfig",
    "StateInUseError",
    "VirtualBoard",
    "compile_vm_lib",
    "drive_pin",
    "heap_factor",
    "vm_dir",
    "write_faults",
]

# Exit codes of console.py: a soft reset, back in the friendly or the raw REPL.
_EXIT_SOFT_FRIENDLY = 10
_EXIT_SOFT_RAW = 11

#: machine.*_RESET values as on the ports (esp32/rp2 agree on these names).
RESET_CAUSES = {"power_on": 1, "hard": 2, "wdt": 3, "deepsleep": 4, "soft": 5}

_CTL_PREFIX = b"\x1b[ioc "
_OUT_LIMIT = 1 << 16  # bytes kept for a host that is not reading
# A native USB console (CDC) has flow control: while the host's driver has no room
# it stops asking for data and the board's print waits, giving up (dropping) only
# after this long without the host taking anything (MicroPython's
# MICROPY_HW_USB_CDC_TX_TIMEOUT, 500 ms). A UART never waits.
_USB_TX_TIMEOUT_S = 0.5
_IN_LIMIT = 1 << 16  # host bytes held for a VM that is not reading; then the pty waits
_ERR_LINE_LIMIT = 4096  # longest stderr line of the VM kept whole (control lines are short)
_FAULTS_SIZE = 1024
_SIGINT_GAP_S = 0.05
# A VM must not outlive its supervisor (killed by a timeout, or SIGKILLed): the
# kernel kills it when the thread that started it (the relay thread) ends.
_DIE_WITH_US = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
_HEAP_SLACK = 2048  # the shims' heap blocks are not packed as tightly as C statics
_OVERHEAD: dict[tuple[str, tuple[str, ...], bool, str, int], int] = {}  # see _vm_heap


#: The firmware's heap on this VM is the board's budget times this factor. The
#: unix port here is a 64-bit build: every pointer, object word and GC block is
#: twice as wide as on the boards' 32-bit MicroPython (byte data is not), so the
#: same firmware takes more of the same heap. Calibrated against the stock
#: RPI_PICO firmware (MicroPython 1.28, 32-bit) in the rp2040py emulator running
#: the same workload as this VM (benchmarks/heap_factor.py: the attestation
#: loop's modules and objects, then signing and storing readings). Measured
#: (rp2040py 0.3.6, x86-64 unix port 1.28): the loop's modules and objects
#: hold 64,896 bytes on the Pico and 89,984 here (1.387); with 96 KB free,
#: building the same loop took 64,800 bytes there and 89,536 here (1.382), and
#: 20 readings were signed and stored after it on both. Rounded down, so a
#: virtual board is never roomier than the measured ratio says.
#: IOCONNECT_SIM_HEAP_FACTOR overrides it (1 gives the bare 64-bit heap).
WORD_SIZE_FACTOR = 1.35
_FACTOR_ENV = "IOCONNECT_SIM_HEAP_FACTOR"


def heap_factor() -> float:
    """How much more heap the firmware takes on this VM than on a 32-bit board.

    Raises:
        HeapError: IOCONNECT_SIM_HEAP_FACTOR is set but not a number from 1 to 3.
    """
    text = os.environ.get(_FACTOR_ENV)
    if text is None:
        return WORD_SIZE_FACTOR if struct.calcsize("P") == 8 else 1.0
    try:
        factor = float(text)
    except ValueError:
        factor = 0.0
    if not 1.0 <= factor <= 3.0:
        raise HeapError(f"{_FACTOR_ENV}={text!r} is not a number from 1 to 3")
    return factor


#: Smallest heap (KiB) a board may be given. benchmarks/min_heap.py (10 fresh
#: boards per size: each makes its own random key) found the firmware booting,
#: creating an identity and signing from 64-78 KiB on esp32 and 64-73 KiB on
#: rpi-pico across this week's firmware; booting alone needs 22-25 KiB. Below
#: about 2 KiB the VM reboots in a loop and a serial tool waits forever.
MIN_HEAP_KIB = 80
#: Largest heap (KiB): the board files' limit (boards.py ``heap_kib``).
MAX_HEAP_KIB = 8192
_HEAP_TEXT = re.compile(r"([0-9]{1,10})([KM]?)")


class HeapError(IoconnectError):
    """A heap size that is malformed or outside what a virtual board can run."""


def parse_heap(text: str) -> int:
    """``"96K"`` / ``"2M"`` / ``"98304"`` -> bytes, within the range the firmware runs in.

    Raises:
        HeapError: not a size, or below ``MIN_HEAP_KIB`` / above ``MAX_HEAP_KIB``.
    """
    match = _HEAP_TEXT.fullmatch(text.strip().upper())
    if match is None:
        raise HeapError(
            f"heap {text!r} is not a size", hint="give bytes, or KiB/MiB as in 96K or 2M"
        )
    size = int(match[1]) * {"K": 1024, "M": 1024 * 1024}.get(match[2], 1)
    if size < MIN_HEAP_KIB * 1024:
        raise HeapError(
            f"heap {text} is below the {MIN_HEAP_KIB}K the firmware needs",
            hint=f"give at least {MIN_HEAP_KIB}K, or leave --heap out for the board's budget",
        )
    if size > MAX_HEAP_KIB * 1024:
        raise HeapError(f"heap {text} is above the largest board heap", hint="give at most 8M")
    return size


@dataclass
class SimConfig:
    """Everything one virtual board needs; written as JSON for the VM to read."""

    name: str
    board: dict[str, object]
    state_dir: Path
    heap: str
    seed: int = 0
    preload: list[str] = field(default_factory=list)
    vm_cache: Path | None = None  # compiled console/shims; shared by a fleet (default: state_dir)
    bootsel: bool = False  # power on held in BOOTSEL (a UF2 board): the drive, no VM
    download: bool = False  # power on in the ROM's download mode (ESP32: BOOT held)
    log_limit: int = DEFAULT_LOG_LIMIT  # bytes per console.log file (one rotated file kept)
    line_rate: int = 0  # the console wire's bytes/s each way (boards.Console); 0: no limit
    usb_console: bool = False  # the console is the chip's own USB: output waits for the host

    @property
    def flash_dir(self) -> Path:
        return self.state_dir / "flash"


def write_faults(state_dir: Path, changes: dict[str, object]) -> dict[str, object]:
    """Merge ``changes`` into a board's fault state (running or not); returns the new state.

    The VM keeps faults.json open and re-reads it, so it is rewritten in place as
    one fixed-size record rather than replaced by a rename.
    """
    path = state_dir / "faults.json"
    try:
        state: dict[str, object] = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        state = {}
    state.update(changes)
    text = json.dumps(state).encode()
    if len(text) > _FAULTS_SIZE:
        raise ValueError("fault state too large")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, text.ljust(_FAULTS_SIZE), 0)
    finally:
        os.close(fd)
    return state


def drive_pin(state_dir: Path, pin: int | str, level: int) -> dict[str, int]:
    """Drive input ``pin`` of a board to ``level`` (0/1) from the host; returns all driven pins.

    The VM's Pin.value() reads it, and a Pin.irq handler on that pin runs when
    the level changes (its ticker thread watches faults.json every 5 ms).
    """
    path = state_dir / "faults.json"
    try:
        state = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        state = {}
    pins = state.get("pins")
    levels = dict(pins) if isinstance(pins, dict) else {}
    levels[str(pin)] = 1 if level else 0
    write_faults(state_dir, {"pins": levels})
    return levels


class StateInUseError(IoconnectError):
    """Another virtual board runs on this state folder."""


class VirtualBoard:
    """One virtual board: start() it, give ``port`` to any serial tool, stop() it."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.port = ""
        self.uart_port = ""  # UART(1)'s pins: a second pty (see start())
        self.boots = 0
        self.last_exit: int | None = None
        self.heap_overhead = 0  # bytes the console and shims hold inside the VM
        self._heap = config.heap
        self._master = -1
        self._slave = -1
        self._uart_master = self._uart_slave = -1
        self._running = False
        self._stop_claim = threading.Lock()
        self._lock_fd = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._sel = selectors.DefaultSelector()
        self._to_vm = bytearray()
        self._to_host = bytearray()
        self._stderr_buf = bytearray()
        self._stderr_dropped = 0  # bytes dropped of the VM's current overlong stderr line
        self._host_paused = False  # the pty is not read: the VM has not taken what it got
        self._host_dropped = 0  # output dropped since the host last read
        self._host_took_at = 0.0  # when the pty last took output from us
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1  # made by start()
        self._pending_boot: tuple[bool, str] | None = None
        self._log: RotatingLog | None = None
        self._ctl = -1  # the state folder's control FIFO (statelock.open_control)
        self._vmlib = Path()
        self._cr = False
        self._ready = False  # the console in the current VM is running
        self._dying = False  # the current VM is being killed
        self._user_running = False  # user code (not the console) is running in the VM
        self._last_sigint = 0.0
        self._retry_at = 0.0
        self._stdin_r = self._stdin_w = -1
        self._pending: list[bytes | None] = []  # host input not yet given to the VM; None = Ctrl-C
        self._deepsleep_ms = 0
        self._next = (False, "power_on")
        self._boot_at: float | None = None  # when a sleeping/crashed board powers on again
        self._wdt_timeout_s = 0.0
        self._wdt_deadline = 0.0
        self._powered_on_us = 0  # monotonic time of the last power-on or hard reset
        self._line_in = Line(config.line_rate)  # host -> board
        self._line_out = Line(config.line_rate)  # board -> host
        self._out_resume = 0.0  # the VM's output waits for the wire until then (0: reading)
        self._drive: Drive | None = None  # the BOOTSEL drive while the board is in BOOTSEL
        self._download: download.DownloadMode | None = None  # the ESP32 ROM loader has the port
        # In download mode the wire runs at the baud rate the host set on the pty
        # (esptool changes it); the host's bytes wait in the pty until they may cross.
        self._rom_in = Line(0)
        self._rom_out = Line(0)
        self._rom_resume = 0.0  # the pty is read again from then (0: it is read)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> str:
        """Create the serial port, power the board on, and relay in a thread."""
        cfg = self.config
        if self._running:
            return self.port
        parse_heap(cfg.heap)  # a bad heap is refused before anything is taken
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cfg.state_dir.chmod(0o700)  # flash holds the identity key, the log what the board printed
        self._lock_state()
        # Fresh plumbing on every start, so a stopped board can be powered on again.
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._to_vm.clear()
        self._to_host.clear()
        self._pending.clear()
        self._host_paused = False  # a fresh selector, with the pty registered below
        self._running = True
        cfg.flash_dir.mkdir(parents=True, exist_ok=True)
        self._log = RotatingLog(cfg.state_dir / "console.log", cfg.log_limit)
        self._vmlib = compile_vm_lib(cfg.vm_cache or cfg.state_dir / "vmlib")
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no newline translation, no signals
        os.fchmod(self._slave, 0o600)  # not the tty group's to write: keys pass through here
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._open_uart()
        # A fresh start clears faults injected into an earlier run.
        (cfg.state_dir / "faults.json").write_bytes(b"{}".ljust(_FAULTS_SIZE))
        self._write_sim_json()
        self._heap = self._vm_heap()
        self._sel.register(self._master, selectors.EVENT_READ, "host")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._ctl = open_control(cfg.state_dir)  # `sim stop` / `sim fault --power-cut`
        self._sel.register(self._ctl, selectors.EVENT_READ, "ctl")
        # Every VM is started by the relay thread (see _boot: it dies with it).
        first = "download" if cfg.download and self.can_download else "power_on"
        self._next, self._boot_at = (False, first), time.monotonic()
        if cfg.bootsel and self._uf2_board():
            self._boot_at = None
            self._open_drive()
        self._thread = threading.Thread(target=self._run, name=f"sim-{cfg.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while self.boots == 0 and self._drive is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.port

    def _lock_state(self) -> None:
        # One board per state folder, across processes: two VMs writing one
        # flash (an identity key!) would lose data. The kernel drops the lock
        # when this process dies.
        # The lock also tells other processes which process runs this board
        # (statelock.lock_holder): `sim list` and `sim stop` trust nothing else.
        try:
            self._lock_fd = hold_state_lock(self.config.state_dir, self.config.name)
        except StateLockedError:
            raise StateInUseError(
                f"{self.config.state_dir} is in use by another virtual board",
                hint="stop it first, or give this one its own --state folder",
            ) from None

    def stop(self) -> None:
        """Power off and close the port (a no-op when not running)."""
        with self._stop_claim:  # `sim stop` runs this from its own thread (_from_control)
            if not self._running:
                return
            self._running = False
        self._stop.set()
        self._wake()
        if self._thread:
            self._thread.join(timeout=5)
        self._kill()
        self._stop_download()
        for fd in (self._master, self._slave, self._wake_r, self._wake_w, self._ctl):
            with contextlib.suppress(OSError):
                os.close(fd)
        # Closed numbers get reused by other files: never write to them again.
        self._master = self._slave = self._wake_r = self._wake_w = self._ctl = -1
        self._close_uart()
        if self._drive:  # unplugged: the drive goes with the board
            self._drive.close()
            self._drive = None
        if self._log:
            self._log.close()
            self._log = None
        self._sel.close()
        os.close(self._lock_fd)  # releases the state folder
        self._lock_fd = -1

    def _open_uart(self) -> None:
        # UART(1): the VM itself reads and writes this pty's master (passed to
        # every VM it boots), so nothing is relayed here. The master is
        # non-blocking for the VM too (one open file): a full buffer drops
        # bytes as a UART's TX line does when nobody listens. We keep the slave
        # open so the VM reads "nothing yet" rather than EIO while no host
        # program has the port open, and bytes typed during a reboot wait in
        # the pty for the next VM.
        self._uart_master, self._uart_slave = os.openpty()
        tty.setraw(self._uart_slave)
        os.set_blocking(self._uart_master, False)
        self.uart_port = os.ttyname(self._uart_slave)

    def _close_uart(self) -> None:
        for fd in (self._uart_master, self._uart_slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._uart_master = self._uart_slave = -1

    @property
    def vm_pid(self) -> int | None:
        """Process id of the current MicroPython VM (None while rebooting)."""
        proc = self._proc
        return proc.pid if proc else None

    def wait(self) -> None:
        """Block until stop() is called (the foreground mode of ``sim start``)."""
        self._stop.wait()

    def power_cut(self) -> None:
        """Kill the VM where it stands, then boot again from the same flash."""
        if not self._running:
            return
        self._restart(False, "power_on")
        self._wake()

    @property
    def can_download(self) -> bool:
        """True if the board's chip has a ROM serial bootloader (the ESP32 family)."""
        return download.supports_download(self.config.board)

    @property
    def in_download_mode(self) -> bool:
        """True while the ROM bootloader, not MicroPython, answers on the port."""
        return self._download is not None

    def enter_download_mode(self) -> None:
        """Reset into the ROM's download mode, as holding BOOT while pressing EN does."""
        if self._running and self.can_download:
            self._restart(False, "download")
            self._wake()

    def reset(self) -> None:
        """Press EN: the chip powers on again and boots its firmware (leaves download mode)."""
        if self._running:
            self._restart(False, "power_on")
            self._wake()

    def __enter__(self) -> VirtualBoard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- VM process --------------------------------------------------------
    def _write_sim_json(self) -> None:
        cfg = self.config
        fs = cfg.board.get("filesystem")
        data = {
            "name": cfg.name,
            "board": cfg.board,
            "seed": cfg.seed,
            "preload": cfg.preload,
            "state_dir": str(cfg.state_dir),
            "faults_path": str(cfg.state_dir / "faults.json"),
            "uart_fd": self._uart_master,  # UART(1), inherited by every VM (pass_fds)
            "build_date": "2026-07-05",
            "started_at": time.time(),
            # Once something was flashed, the VM mounts the littlefs in that flash.
            "flash_image": mount_config(cfg.state_dir, _partition(fs)) if fs else None,
        }
        tmp = cfg.state_dir / "sim.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(cfg.state_dir / "sim.json")

    def _env(self, cause: str) -> dict[str, str]:
        # A board's tick counters start at power-on and any reset but a soft one;
        # the VM's time module counts from this moment (vm/time.py). Python's
        # monotonic clock is the unix port's (CLOCK_MONOTONIC).
        if cause != "soft" or not self._powered_on_us:
            self._powered_on_us = time.monotonic_ns() // 1000
        return dict(
            os.environ,
            MICROPYPATH=str(self._vmlib),
            IOCONNECT_SIM=str(self.config.state_dir / "sim.json"),
            IOCONNECT_RESET_CAUSE=str(RESET_CAUSES[cause]),
            IOCONNECT_BOOT_US=str(self._powered_on_us),
        )

    def _vm_heap(self) -> str:
        """The board's budget plus what console and shims hold (C code on a board)."""
        cfg = self.config
        # The flashed littlefs (C, plus a small block device) holds less than the
        # folder's Python VFS: each is calibrated on its own. So are board kinds and
        # state paths of other lengths (the shims keep both): a board's heap must not
        # depend on which board a process started first (a few hundred bytes moved
        # the free-block layout of a 96 KB esp32 enough to matter).
        key = (
            str(self._vmlib),
            tuple(cfg.preload),
            has_flash(cfg.state_dir),
            str(cfg.board.get("name")),
            len(str(cfg.state_dir)),
        )
        overhead = _OVERHEAD.get(key)
        if overhead is None:
            code = f"import console; console.calibrate({str(cfg.flash_dir)!r})"
            done = subprocess.run(
                [*micropython_command("4M"), "-c", code],
                capture_output=True,
                env=self._env("power_on"),
                cwd=cfg.state_dir,
                timeout=60,
                check=False,
                umask=0o077,
            )
            for line in done.stderr.splitlines():
                if line.startswith(_CTL_PREFIX + b"overhead "):
                    overhead = int(line.split()[-1])
            if overhead is None:
                raise RuntimeError(f"virtual board calibration failed: {done.stderr[-300:]!r}")
            _OVERHEAD[key] = overhead
        self.heap_overhead = overhead
        return f"{int(parse_heap(cfg.heap) * heap_factor()) + overhead + _HEAP_SLACK}"

    def _boot(self, raw: bool, cause: str) -> None:
        cfg = self.config
        soft = cause == "soft"
        code = f"import console; console.start({str(cfg.flash_dir)!r}, {raw}, {soft})"
        # Our own stdin pipe, whose read end we keep too: bytes the VM never read
        # before it died are taken back and given to the next VM (a board's USB
        # buffer survives its soft reset); nothing the host typed is lost.
        self._stdin_r, self._stdin_w = os.pipe()
        self._proc = subprocess.Popen(
            [*_DIE_WITH_US, *micropython_command(self._heap), "-c", code],
            stdin=self._stdin_r,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cfg.state_dir,
            env=self._env(cause),
            start_new_session=True,  # a Ctrl-C in the user's terminal is not the board's
            umask=0o077,  # files the board writes (identity.key) are this user's only
            pass_fds=(self._uart_master,),
        )
        assert self._proc.stdout and self._proc.stderr
        for stream, what in ((self._proc.stdout, "out"), (self._proc.stderr, "err")):
            os.set_blocking(stream.fileno(), False)
            self._sel.register(stream.fileno(), selectors.EVENT_READ, what)
        os.set_blocking(self._stdin_w, False)  # not the read end: the VM shares its flags
        self._ready = False
        self._dying = False
        self._user_running = False
        self._wdt_timeout_s = 0.0  # a reset stops the watchdog, as on the chips
        self.boots += 1

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        self._reap()

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdout and proc.stderr
        for stream in (proc.stdout, proc.stderr):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(stream.fileno())
        # Output already written by the VM still reaches the host, as a UART drains.
        with contextlib.suppress(OSError, ValueError):
            self._host_out(proc.stdout.read() or b"")
        unread = bytearray()
        with contextlib.suppress(OSError):
            os.set_blocking(self._stdin_r, False)  # the VM is gone: nobody else reads it
            while chunk := os.read(self._stdin_r, 65536):
                unread += chunk
        self._to_vm[:0] = unread
        for fd in (self._stdin_r, self._stdin_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for stream in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        self._proc = None

    # -- relay loop --------------------------------------------------------
    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._flush()
            self._throttle_host()
            timeout = 0.2
            if self._download is not None and self._to_host:
                # The ROM's reply did not fit in the pty (or the wire): esptool
                # waits for the rest of a packet before it answers.
                timeout = max(0.001, self._rom_out.wait_s())
            if self._rom_resume:
                timeout = min(timeout, self._resume_host_reads())
            if self._boot_at is not None:
                timeout = max(0.0, min(timeout, self._boot_at - time.monotonic()))
            if self._pending:
                self._pump()
                timeout = max(0.0, min(timeout, self._retry_at - time.monotonic()))
            if self._to_vm:
                timeout = min(timeout, self._line_in.wait_s())
            if self._out_resume:
                timeout = min(timeout, self._resume_vm_out())
            for key, _ in self._sel.select(timeout=timeout):
                what = key.data
                if what == "wake":
                    os.read(self._wake_r, 512)
                elif what == "host":
                    self._from_host()
                elif what == "out":
                    self._from_vm()
                elif what == "err":
                    self._from_vm_err()
                elif what == "ctl":
                    self._from_control()
            self._check_wdt()
            self._check_touch()
            self._check_drive()
            self._check_vm()

    def _check_wdt(self) -> None:
        if self._wdt_timeout_s and time.monotonic() > self._wdt_deadline:
            self._wdt_timeout_s = 0.0
            self._restart(False, "wdt")

    def _throttle_host(self) -> None:
        # Input is bounded by backpressure, as a board's USB CDC NAKs the host while
        # its buffer is full: while the VM leaves its input unread, the pty is not
        # read either, so the host's write blocks (pyserial: write timeout, "the board
        # stopped reading"). Nothing the host sent is dropped; a Ctrl-C waits in line
        # as it would on the board.
        backlog = len(self._to_vm) + sum(1 if p is None else len(p) for p in self._pending)
        pause = backlog >= _IN_LIMIT
        if pause == self._host_paused:
            return
        if pause:
            self._sel.unregister(self._master)
        else:
            self._sel.register(self._master, selectors.EVENT_READ, "host")
        self._host_paused = pause

    def _from_host(self) -> None:
        rom = self._download
        room = self._rom_wire_room() if rom is not None else 4096
        if not room:
            return
        try:
            data = os.read(self._master, room)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):  # EIO: no client has the port open
                time.sleep(0.01)
                return
            raise
        if rom is not None:  # download mode: the ROM loader reads the line, bytes as they are
            self._rom_in.spend(len(data))
            self._to_host += rom.feed(data)
            return
        # Keep bytes and Ctrl-Cs in order: nothing typed after a Ctrl-C reaches the
        # VM before that interrupt has been delivered.
        parts = data.split(b"\x03")
        for i, part in enumerate(parts):
            if part:
                self._pending.append(part)
            if i < len(parts) - 1:
                self._pending.append(None)
        self._pump()

    def _pump(self) -> None:
        while self._pending:
            item = self._pending[0]
            if item is None:
                # Until the console is up, SIGINT would hit the launcher, not the VM.
                if not (self._ready and self._proc) or self._dying:
                    return
                if not self._user_running:
                    # The console is reading input: Ctrl-C is a character there,
                    # and in band it keeps its place after what was typed before.
                    self._to_vm += b"\x03"
                    self._pending.pop(0)
                    continue
                # The unix port exits on a second SIGINT that lands before the first
                # was handled (a board just keeps one pending): space them out.
                wait = self._last_sigint + _SIGINT_GAP_S - time.monotonic()
                if wait > 0:
                    self._retry_at = time.monotonic() + wait
                    return
                self._flush()
                with contextlib.suppress(ProcessLookupError):
                    interrupt_safely(self._proc.pid)
                self._last_sigint = time.monotonic()
            else:
                self._to_vm += item
            self._pending.pop(0)

    def _from_vm(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        if self._usb_holds_output():
            # The host is reading, only slower than the board prints: the print waits.
            self._sel.unregister(proc.stdout.fileno())
            self._out_resume = time.monotonic() + 0.005
            return
        room = self._line_out.allowed(4096)
        if not room:
            # The wire is busy: leave the VM's output in its pipe (its print waits,
            # as on a UART whose FIFO is full) until the line has room again.
            self._sel.unregister(proc.stdout.fileno())
            self._out_resume = time.monotonic() + self._line_out.wait_s()
            return
        try:
            data = os.read(proc.stdout.fileno(), room)
        except BlockingIOError:
            return
        self._line_out.spend(len(data))
        self._host_out(data)

    def _usb_holds_output(self) -> bool:
        """On a USB console, whether the VM's output must wait for the host: what is
        held is near the bound (one more read, its newlines cooked, must fit) and
        the host took output within the CDC timeout (a host that stopped reading
        is not waited for: the oldest is dropped then, as on a UART)."""
        return (
            self.config.usb_console
            and len(self._to_host) + 2 * 4096 > _OUT_LIMIT
            and time.monotonic() - self._host_took_at < _USB_TX_TIMEOUT_S
        )

    def _resume_vm_out(self) -> float:
        """Read the VM's output again once the wire has room; seconds left to wait."""
        left = self._out_resume - time.monotonic()
        if left > 0:
            return left
        self._out_resume = 0.0
        proc = self._proc
        if proc is not None and proc.stdout is not None and not proc.stdout.closed:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "out")
        return 0.2

    def _host_out(self, data: bytes) -> None:
        # Cook newlines like a board's stdout: a bare LF becomes CR LF.
        out = bytearray()
        prev_cr = self._cr
        for b in data:
            if b == 10 and not prev_cr:
                out += b"\r"
            out.append(b)
            prev_cr = b == 13
        self._cr = prev_cr
        if self._log:
            self._log.write(bytes(out))
        self._to_host += out
        # Output is not held back: a UART console never waits for a host, and a board
        # with no terminal attached must not hang in print(). The oldest is dropped,
        # saying so in the log (which keeps all of it).
        excess = len(self._to_host) - _OUT_LIMIT
        if excess > 0:
            del self._to_host[:excess]
            if not self._host_dropped:
                self._log_line("\r\n[sim] the host is not reading: dropping the oldest output\r")
            self._host_dropped += excess

    def _from_vm_err(self) -> None:
        proc = self._proc
        if proc is None or proc.stderr is None:
            return
        try:
            data = os.read(proc.stderr.fileno(), 4096)
        except BlockingIOError:
            return
        self._stderr_buf += data
        while b"\n" in self._stderr_buf:
            line, _, rest = bytes(self._stderr_buf).partition(b"\n")
            self._stderr_buf = bytearray(rest)
            if self._stderr_dropped:  # the end of a line cut below
                self._log_line(f"[sim] {self._stderr_dropped + len(line)} more bytes dropped")
                self._stderr_dropped = 0
            elif line.startswith(_CTL_PREFIX):
                self._control(line[len(_CTL_PREFIX) :].decode())
            else:
                self._log_line("[vm stderr] ", line)
        # A line without end (user code writing to stderr) must not grow without bound.
        if len(self._stderr_buf) > _ERR_LINE_LIMIT:
            if not self._stderr_dropped:
                head = bytes(self._stderr_buf[:_ERR_LINE_LIMIT])
                self._log_line("[vm stderr] ", head + b" [cut]")
                del self._stderr_buf[:_ERR_LINE_LIMIT]
            self._stderr_dropped += len(self._stderr_buf)
            self._stderr_buf.clear()

    def _log_line(self, head: str, line: bytes = b"") -> None:
        if self._log:
            self._log.write(head.encode() + line + b"\n")

    def _from_control(self) -> None:
        try:
            words = os.read(self._ctl, 512).split()
        except BlockingIOError:
            return
        for word in words:
            if word == b"stop":
                # stop() joins this relay thread, so another thread runs it.
                threading.Thread(target=self.stop, name="sim-stop", daemon=True).start()
            elif word == b"power-cut":
                self.power_cut()
            elif word == b"reset":
                self.reset()
            elif word == b"download":
                self.enter_download_mode()

    def _control(self, msg: str) -> None:
        # Lines from the VM's shims (see vm/_simboard.py ctl()).
        word, _, arg = msg.partition(" ")
        if word == "up":
            self._ready = True
            self._pump()
        elif word in ("run", "idle"):
            self._user_running = word == "run"
        elif word in ("reset", "soft", "deepsleep"):
            # machine.reset()/soft_reset()/deepsleep() never return on a board:
            # the shim blocks and the board is rebooted from here.
            self._deepsleep_ms = int(arg) if word == "deepsleep" else 0
            cause = {"reset": "hard", "soft": "soft", "deepsleep": "deepsleep"}[word]
            self._restart(False, cause)
        elif word == "bootloader":
            # machine.bootloader(): the rp2 boot ROM's USB drive. (ESP32 download
            # mode is not emulated here: the board resets.)
            # ESP32: the ROM's serial download mode.
            cause = "download" if self.can_download else "hard"
            self._restart(False, "bootsel" if self._uf2_board() else cause)
        elif word == "wdt":
            self._wdt_timeout_s = int(arg) / 1000
            self._wdt_deadline = time.monotonic() + self._wdt_timeout_s
        elif word == "intr" and self._user_running:
            # A Ctrl-C landed in a machine.Timer/Pin.irq callback, which the VM's
            # scheduler swallows: interrupt the program once more.
            self._pending.append(None)
            self._pump()
        elif word == "feed" and self._wdt_timeout_s:
            self._wdt_deadline = time.monotonic() + self._wdt_timeout_s

    def _restart(self, raw: bool, cause: str) -> None:
        with self._lock:
            if self._proc is None and cause == "bootsel":  # off: straight into BOOTSEL
                self._boot_at = None
                self._open_drive()
                return
            if self._proc is None:  # asleep or between boots: power on now
                self._next, self._boot_at = (raw, cause), time.monotonic()
                self._wake()
                return
            self._pending_boot = (raw, cause)
            # Hold the host's input and Ctrl-Cs for the next VM, not this dying one.
            self._ready = False
            self._dying = True
            if self._proc:
                self._proc.kill()

    def set_fault(self, **faults: object) -> None:
        """Change what the board's hardware does, e.g. ``set_fault(wifi="down")``.

        Keys: ``wifi`` ("up"/"down"), ``sensors`` ({name: "fail"|"ok"}), ``flash``
        (None/"eio"/"enospc"). The VM re-reads them on its next hardware access.
        ``line_max_baud`` (int, 0: none): in download mode the line garbles
        everything above that baud rate (read on entering download mode).
        """
        write_faults(self.config.state_dir, faults)

    def _flush(self) -> None:
        if self._to_vm and self._proc and not self._dying:
            room = self._line_in.allowed(len(self._to_vm))
            try:
                n = os.write(self._stdin_w, self._to_vm[:room]) if room else 0
                del self._to_vm[:n]
                self._line_in.spend(n)
            except (BlockingIOError, BrokenPipeError):
                pass
        if self._to_host:
            room = len(self._to_host)
            if self._download is not None:
                room = self._rom_out.allowed(room)
            try:
                n = os.write(self._master, self._to_host[:room]) if room else 0
                del self._to_host[:n]
                if n:
                    self._host_took_at = time.monotonic()
                if self._download is not None:
                    self._rom_out.spend(n)
            except BlockingIOError:
                pass
            else:
                if self._host_dropped:
                    dropped, self._host_dropped = self._host_dropped, 0
                    self._log_line(f"\r\n[sim] the host reads again; {dropped} bytes dropped\r")

    def _check_vm(self) -> None:
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                self.last_exit = code
                self._reap()
                pending, self._pending_boot = self._pending_boot, None
                raw, cause, delay_s = self._next_boot(code, pending)
                self._next = (raw, cause)
                self._boot_at = time.monotonic() + delay_s if delay_s >= 0 else None
            due = self._proc is None and self._boot_at is not None
            if not due or self._stop.is_set() or time.monotonic() < (self._boot_at or 0):
                return
            self._boot_at = None
        if self._drive:  # powered on again (a power cut): out of BOOTSEL
            self._drive.close()
            self._drive = None
        raw, cause = self._next
        if cause == "download":
            self._start_download()
            return
        self._stop_download()  # may take a while (the heap calibrated anew)
        with self._lock:
            if self._boot_at is not None:  # reset again meanwhile: the next turn obeys that
                return
        self._boot(raw=raw, cause=cause)

    def _next_boot(self, code: int, pending: tuple[bool, str] | None) -> tuple[bool, str, float]:
        """(raw REPL?, reset cause, seconds until power-on; -1: only a power cut wakes it)."""
        if pending is not None:
            raw, cause = pending
            if cause == "bootsel":
                self._open_drive()
                return raw, cause, -1
            if cause == "deepsleep":
                return raw, cause, self._deepsleep_ms / 1000 if self._deepsleep_ms else -1
            return raw, cause, 0
        if code == _EXIT_SOFT_FRIENDLY:
            return False, "soft", 0
        if code == _EXIT_SOFT_RAW:
            return True, "soft", 0
        # The VM died (console bug, killed): reboot like a watchdog, not in a tight loop.
        if self._log:
            self._log.write(f"[sim] VM exited with status {code}; rebooting\n".encode())
        return False, "hard", 0.5


    # -- download mode (ESP32 family) ----------------------------------------
    def _start_download(self) -> None:
        cfg = self.config
        self._stop_download()
        try:
            self._download = download.DownloadMode(
                cfg.board,
                cfg.name,
                cfg.seed,
                cfg.state_dir,
                cfg.flash_dir,
                self._master,
                self._leave_download,
                self._line_max_baud(),
            )
        except (OSError, IoconnectError) as exc:  # e.g. no room for the flash file
            self._log_line(f"[sim] download mode failed: {exc}; booting instead")
            self._boot(False, "hard")
            return
        if self._download.created:
            self._log_line("[sim] flash.bin made from the filesystem: the board boots from it")
        self._log_line("[sim] download mode: the ROM bootloader has the serial port")
        # A reset empties the board's input buffers: nothing typed before reaches the ROM.
        self._pending.clear()
        self._to_vm.clear()
        self._to_host += self._download.banner()
        self.boots += 1

    def _line_max_baud(self) -> int:
        try:
            faults = json.loads((self.config.state_dir / "faults.json").read_bytes() or b"{}")
        except (OSError, ValueError):
            return 0
        value = faults.get("line_max_baud") if isinstance(faults, dict) else None
        return value if isinstance(value, int) else 0

    def _leave_download(self, how: str) -> None:
        # Called by the ROM loader (relay thread) when the host runs the firmware:
        # "run" (FLASH_END / MEM_END / RUN_USER_CODE), "reset" (a watchdog reset).
        self._next, self._boot_at = (False, "wdt" if how == "reset" else "hard"), 0.0

    def _stop_download(self) -> None:
        rom, self._download = self._download, None
        if self._rom_resume:
            self._resume_host_reads(now=True)
        self._rom_in = self._rom_out = Line(0)
        if rom is None:
            return
        rom.close()
        if rom.created and self._running:
            self._write_sim_json()  # the VM mounts the flash file from now on
            self._heap = self._vm_heap()

    def _rom_wire_room(self) -> int:
        """How many host bytes the ROM may read now; 0: the pty is left unread a while."""
        rom = self._download
        if rom is None or not self.config.line_rate:
            return 4096
        rate = rom.rom.baud() // 10  # 8N1: ten bits a byte
        if rate != self._rom_in.bytes_per_s:
            self._rom_in, self._rom_out = Line(rate), Line(rate)
        room = self._rom_in.allowed(4096)
        if not room:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._master)
            self._rom_resume = time.monotonic() + max(0.001, self._rom_in.wait_s())
        return room

    def _resume_host_reads(self, now: bool = False) -> float:
        """Read the pty again once the wire has room; seconds left to wait."""
        left = self._rom_resume - time.monotonic()
        if left > 0 and not now:
            return left
        self._rom_resume = 0.0
        if self._master >= 0 and not self._host_paused:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.register(self._master, selectors.EVENT_READ, "host")
        return 0.2

    # -- BOOTSEL (UF2 boards) ----------------------------------------------
    def _uf2_board(self) -> bool:
        flash = self.config.board.get("flash")
        return isinstance(flash, dict) and flash.get("firmware_format") == "uf2"

    def _open_drive(self) -> None:
        flash = self.config.board["flash"]
        assert isinstance(flash, dict)
        drive = Drive(
            self.config.state_dir,
            family=int(flash["uf2_family"]),
            base=int(flash["image_base"]),
            flash_size=int(flash["size"]),
        )
        drive.open()
        self._drive = drive
        self._log_line(f"[sim] BOOTSEL: drive {drive.path}")

    def _check_drive(self) -> None:
        drive = self._drive
        if drive is None:
            return
        outcome = drive.poll()
        if outcome is None:
            return
        if outcome.error is not None:
            self._log_line(f"[sim] BOOTSEL: refused {outcome.name}: {outcome.error}")
            return
        self._log_line(f"[sim] BOOTSEL: flashed {outcome.name} ({outcome.blocks} blocks)")
        # The boot ROM reboots into the new flash once the last block is written.
        drive.close()
        self._drive = None
        self._write_sim_json()
        self._heap = self._vm_heap()  # now with the flashed filesystem mounted
        with self._lock:
            self._next, self._boot_at = (False, "power_on"), time.monotonic()

    def _check_touch(self) -> None:
        # The "1200 baud touch": the rp2 port's USB CDC enters the bootloader when
        # the host sets 1200 baud (shared/tinyusb/mp_usbd_cdc.c). A pty has no
        # DTR, so the speed alone counts; it is set back so it fires once.
        if self._drive is not None or self._slave < 0 or not self._uf2_board():
            return
        try:
            attrs = termios.tcgetattr(self._slave)
        except termios.error:
            return
        if attrs[5] != termios.B1200:
            return
        attrs[4] = attrs[5] = termios.B115200
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        self._log_line("[sim] 1200 baud touch: entering BOOTSEL")
        self._restart(False, "bootsel")


@dataclass(frozen=True)
class _Partition:
    """The board file's [filesystem] table (flashfs.Partition)."""

    offset: int
    size: int
    block_size: int


def _partition(fs: object) -> _Partition:
    assert isinstance(fs, dict)
    return _Partition(int(fs["offset"]), int(fs["size"]), int(fs["block_size"]))
