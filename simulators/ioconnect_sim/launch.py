"""Start, find and stop virtual boards: one per board definition, name and state folder.

A board's state folder holds its flash (the device filesystem: firmware,
identity, config), its console log and its fault settings; it persists across
restarts. Running boards, detached or inside any Python program, are recorded
in ``$IOCONNECT_HOME/run/<name>.json`` (default ``~/.ioconnect``) so ``sim list``
and ``sim stop`` find them; whether a record's board still runs is decided by its
state folder's lock (see statelock), never by a pid alone.

Example:
    >>> board = start_board("rpi-pico", name="dev1")
    >>> board.port
    '/dev/pts/7'
    >>> board.stop()
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ioconnect_host.boards import load_board
from ioconnect_host.firmware import host_build, host_mpy_arch
from ioconnect_host.paths import home

from .boardlog import open_private_append, rotate_if_larger
from .bootsel import drive_path
from .download import supports_download as download_capable
from .flashfs import has_flash
from .registry import (
    RunningBoard,
    SimError,
    alive,
    default_state_dir,
    find_running,
    list_running,
    record_path,
)
from .statelock import lock_holder, process_start_time, send_control
from .supervisor import SimConfig, VirtualBoard

if TYPE_CHECKING:
    from .rp2040_board import Rp2040Board

#: Engines a virtual board runs on.
ENGINES = ("unix", "rp2040")

__all__ = [
    "ENGINES",
    "RunningBoard",
    "SimError",
    "bootsel_drive",
    "default_state_dir",
    "find_running",
    "list_running",
    "power_cut_running",
    "reset_running",
    "run_foreground",
    "start_board",
    "start_detached",
    "stop_running",
]


def bootsel_drive(rec: RunningBoard) -> str | None:
    """The board's RPI-RP2 drive folder while it is in BOOTSEL, else None."""
    path = drive_path(Path(rec.state_dir))
    return str(path) if (path / "INFO_UF2.TXT").is_file() else None


_SUPERVISOR_LOG_LIMIT = 1 << 20


@functools.lru_cache(maxsize=1)
def _allow_many_files() -> None:
    # About ten descriptors per board (pty, pipes, log): a fleet of 100 needs more
    # than the common soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _install_firmware_if_blank(flash: Path) -> None:
    # A new board is "flashed" once; later starts keep whatever the user deployed.
    # Copied beside the flash, then renamed in, the package last: a flash that has
    # ioconnect/ has all of it, even when two starts race (the lock refuses one later).
    if (flash / "ioconnect").exists():
        return
    flash.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=flash.parent))
    try:
        shutil.copytree(host_build(), tmp, dirs_exist_ok=True)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "ioconnect"):
            with contextlib.suppress(OSError):  # ioconnect/ already there: another start won
                os.replace(entry, flash / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def start_board(
    board: str,
    *,
    name: str,
    state_dir: Path | None = None,
    seed: int = 0,
    heap: str | None = None,
    install_firmware: bool = True,
    fast: bool | None = None,
    bootsel: bool = False,
    download: bool = False,
    engine: str = "unix",
    firmware: Path | None = None,
) -> VirtualBoard | Rp2040Board:
    """Power on a virtual ``board`` (a name from boards/, e.g. ``"esp32"``).

    Args:
        board: board definition name or path to a board file.
        name: device name (also its default state folder and registry key).
        state_dir: folder for flash and logs (default ``~/.ioconnect/sims/<name>``).
        seed: seed of the board's sensor signals and unique id.
        heap: heap override (default: the board's budget).
        install_firmware: put the firmware on a blank flash (False: a blank board,
            as from the factory, for ``ioconnect deploy``). The rp2040 engine
            always starts blank: deploy to it.
        fast: lift the console wire's speed limit (the board file's ``[console]``:
            115200 baud on an ESP32 DevKit, USB full speed elsewhere). Default:
            the ``IOCONNECT_SIM_FAST`` environment variable ("1": fast), else the wire's.
        bootsel: a UF2 board (Pico) powers on in BOOTSEL: its RPI-RP2 drive
            (``<state>/RPI-RP2``) appears instead of MicroPython. Unix engine only.
        download: an ESP32-family board powers on in its ROM's download mode
            (BOOT held): esptool flashes it (``--before no-reset``).
        engine: ``"unix"`` (the firmware on the MicroPython unix port) or
            ``"rp2040"`` (the stock Pico firmware on an emulated RP2040).
        firmware: rp2040 engine: a MicroPython UF2, checked and kept in the state
            folder (default: the one the board has, else the project's Pico UF2).

    Returns:
        The started board; ``.port`` is its serial port.

    Raises:
        SimError: a board of that name is already running.
        BoardError: unknown or invalid board definition.
        FirmwareError: rp2040 engine: the UF2 fails its checks.
    """
    for rec in list_running():
        if rec.name == name:
            raise SimError(f"a virtual board named {name!r} is already running on {rec.port}")
    spec = load_board(board)
    _check_engine(engine, spec.name, heap=heap, firmware=firmware, bootsel=bootsel)
    _allow_many_files()
    state = state_dir or default_state_dir(name)
    if engine == "rp2040":
        return _start_rp2040(board, name, state, firmware)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = SimConfig(
        name=name,
        board=spec.vm_config(),
        state_dir=state,
        heap=heap or spec.heap,
        seed=seed,
        preload=spec.sim_preload(),
        vm_cache=home() / "cache" / f"vmlib-{host_mpy_arch()}",
        line_rate=0 if _fast(fast) else spec.console.bytes_per_s,
        usb_console=spec.console.link == "usb",
        bootsel=bootsel,
        download=download,
    )
    if download and not download_capable(config.board):
        raise SimError(
            f"{board} has no ROM serial bootloader to start in",
            hint="download mode is for the ESP32 family (esp32, esp32-s3, esp32-c3)",
        )
    # A board that was flashed boots from its flash file; one held in BOOTSEL
    # waits for a UF2: neither gets the firmware folder.
    if install_firmware and not bootsel and not has_flash(state):
        _install_firmware_if_blank(config.flash_dir)
    vb = VirtualBoard(config)
    vb.start()
    # Listed and stoppable from any process (`sim list`, `sim stop`) like a detached one.
    _write_record(RunningBoard(name, board, vb.port, os.getpid(), str(state.absolute())))
    return vb


def _fast(fast: bool | None) -> bool:
    return os.environ.get("IOCONNECT_SIM_FAST") == "1" if fast is None else fast


def _check_engine(
    engine: str, board: str, *, heap: str | None, firmware: Path | None, bootsel: bool = False
) -> None:
    if engine not in ENGINES:
        raise SimError(f"unknown engine {engine!r}", hint="give one of: " + ", ".join(ENGINES))
    if engine == "unix":
        if firmware is not None:
            raise SimError(
                "--firmware is for the rp2040 engine",
                hint="the unix engine runs the project's firmware on the MicroPython unix port",
            )
        return
    if board != "rpi-pico":
        raise SimError(
            f"the rp2040 engine emulates a Raspberry Pi Pico, not {board!r}",
            hint="give --board rpi-pico",
        )
    if bootsel:
        raise SimError(
            "--bootsel is for the unix engine",
            hint="give the rp2040 engine its UF2 with --firmware",
        )
    if heap is not None:
        raise SimError(
            "--heap is for the unix engine",
            hint="on the rp2040 engine the firmware has the heap the UF2 gives it (about 240 KB)",
        )


def _start_rp2040(board: str, name: str, state: Path, firmware: Path | None) -> Rp2040Board:
    from .rp2040_board import Rp2040Board, Rp2040Config, prepare_state

    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    prepare_state(state, firmware)
    rb = Rp2040Board(Rp2040Config(name, state))
    rb.start()
    _write_record(
        RunningBoard(
            name,
            board,
            rb.port,
            os.getpid(),
            str(state.absolute()),
            engine=rb.engine,
            slowness=rb.slowness,
        )
    )
    return rb


def _write_record(rec: RunningBoard) -> None:
    path = record_path(rec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec)))
    tmp.replace(path)


def run_foreground(vb: VirtualBoard | Rp2040Board, board: str, on_ready: object = None) -> None:
    """Record ``vb`` as running, serve until SIGTERM/SIGINT, then clean up.

    SIGUSR1 cuts the board's power, as ``ioconnect sim fault NAME --power-cut``
    does through the state folder (:func:`power_cut_running`).
    """
    cfg = vb.config
    state = str(cfg.state_dir.absolute())  # read by processes with another cwd
    rec = RunningBoard(
        cfg.name,
        board,
        vb.port,
        os.getpid(),
        state,
        own_process=True,
        uart_port=vb.uart_port,
        engine=getattr(vb, "engine", "unix"),
        slowness=getattr(vb, "slowness", 1.0),
    )
    _write_record(rec)

    def _stop(signum: int, frame: object) -> None:
        vb.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGUSR1, lambda s, f: vb.power_cut())
    try:
        vb.wait()
    finally:
        vb.stop()
        record_path(rec.name).unlink(missing_ok=True)


def start_detached(
    board: str,
    *,
    name: str,
    state_dir: Path | None = None,
    seed: int = 0,
    heap: str | None = None,
    timeout_s: float = 30.0,
    fast: bool | None = None,
    bootsel: bool = False,
    download: bool = False,
    engine: str = "unix",
    firmware: Path | None = None,
) -> RunningBoard:
    """Start a board in a background process that outlives this one.

    Raises:
        SimError: it did not come up within ``timeout_s`` (its log is named).
    """
    for rec in list_running():
        if rec.name == name:
            raise SimError(f"a virtual board named {name!r} is already running on {rec.port}")
    _check_engine(engine, load_board(board).name, heap=heap, firmware=firmware, bootsel=bootsel)
    state = state_dir or default_state_dir(name)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    if engine == "rp2040":
        from .rp2040_board import prepare_state

        prepare_state(state, firmware)  # checked here, where its error is seen
    argv = [sys.executable, "-m", "ioconnect_sim", "--board", board, "--name", name]
    argv += ["--state", str(state), "--seed", str(seed), "--engine", engine]
    if heap:
        argv += ["--heap", heap]
    if _fast(fast):
        argv.append("--fast")
    if bootsel:
        argv += ["--bootsel"]
    if download:
        argv += ["--download"]
    log = state / "supervisor.log"
    rotate_if_larger(log, _SUPERVISOR_LOG_LIMIT)  # bounded across restarts
    out = open_private_append(log)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    finally:
        os.close(out)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for rec in list_running():
            if rec.name == name and rec.pid == proc.pid and rec.own_process:
                return rec
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise SimError(f"virtual board {name!r} did not start: {tail[0]}", hint=f"see {log}")
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    raise SimError(f"virtual board {name!r} did not come up in {timeout_s:g} s", hint=f"see {log}")


def stop_running(name: str, *, timeout_s: float = 10.0) -> RunningBoard:
    """Stop the running board ``name`` (detached, or inside another Python program).

    The board is asked through its state folder; a board of its own process
    (``sim start``) that does not stop within ``timeout_s`` is killed, after its
    identity is checked again (pid and start time), so no other process is hit.

    Raises:
        SimError: no such board runs, or one inside another program did not stop.
    """
    rec = find_running(name)
    state = Path(rec.state_dir)
    send_control(state, "stop")
    if _gone(rec, timeout_s):
        return rec
    if not rec.own_process:
        raise SimError(
            f"virtual board {name!r} did not stop within {timeout_s:g} s",
            hint=f"it runs inside process {rec.pid}; stop it there",
        )
    _kill_holder(rec)
    if not _gone(rec, 5.0):
        raise SimError(f"virtual board {name!r} (pid {rec.pid}) could not be stopped")
    return rec


def reset_running(name: str, *, download: bool = False) -> RunningBoard:
    """Press EN on the running board ``name`` (with BOOT held: ``download``).

    Raises:
        SimError: no such board runs, or it has no download mode.
    """
    rec = find_running(name)
    if download and not download_capable(load_board(rec.board).vm_config()):
        raise SimError(f"{name} ({rec.board}) has no ROM serial bootloader")
    if not send_control(Path(rec.state_dir), "download" if download else "reset"):
        raise SimError(f"virtual board {name!r} stopped meanwhile")
    return rec


def power_cut_running(name: str) -> RunningBoard:
    """Cut the power of the running board ``name``; it boots again from its flash.

    Raises:
        SimError: no such board runs.
    """
    rec = find_running(name)
    if not send_control(Path(rec.state_dir), "power-cut"):
        raise SimError(f"virtual board {name!r} stopped meanwhile")
    return rec


def _gone(rec: RunningBoard, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(rec):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    record_path(rec.name).unlink(missing_ok=True)
    return True


def _kill_holder(rec: RunningBoard) -> None:
    # A pidfd pins the process: checked, then signalled, it cannot be swapped for
    # another that got the same pid in between.
    holder = lock_holder(Path(rec.state_dir))
    if holder is None or holder.pid != rec.pid:
        return
    try:
        pidfd = os.pidfd_open(rec.pid)
    except ProcessLookupError:
        return
    except OSError:  # a kernel before 5.3: the start-time check alone
        pidfd = -1
    try:
        if process_start_time(rec.pid) == holder.start_time:
            with contextlib.suppress(ProcessLookupError):
                if pidfd >= 0:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                else:
                    os.kill(rec.pid, signal.SIGKILL)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
