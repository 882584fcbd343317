"""Start, find and stop virtual boards: one per board definition, name and state folder.

A board's state folder holds its flash (the device filesystem: firmware,
identity, config), its console log and its fault settings; it persists across
restarts. Running boards are recorded in ``$IOCONNECT_HOME/run/<name>.json``
(default ``~/.ioconnect``) so ``sim list`` and ``sim stop`` find detached ones.

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
from dataclasses import asdict, dataclass
from pathlib import Path

from ioconnect_host.boards import load_board
from ioconnect_host.errors import IoconnectError
from ioconnect_host.firmware import host_build, host_mpy_arch
from ioconnect_host.paths import home

from .supervisor import SimConfig, VirtualBoard

__all__ = [
    "RunningBoard",
    "SimError",
    "default_state_dir",
    "find_running",
    "list_running",
    "run_foreground",
    "start_board",
    "start_detached",
    "stop_running",
]


class SimError(IoconnectError):
    """A virtual board could not be started, found or stopped."""


@dataclass(frozen=True)
class RunningBoard:
    """A virtual board that is running now, as recorded by its supervisor."""

    name: str
    board: str
    port: str
    pid: int
    state_dir: str


def default_state_dir(name: str) -> Path:
    """Where board ``name`` keeps its flash unless ``--state`` says otherwise."""
    return home() / "sims" / name


def _record_path(name: str) -> Path:
    return home() / "run" / f"{name}.json"


def _alive(pid: int) -> bool:
    """True if ``pid`` is a virtual-board supervisor (not a process that got its number)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ioconnect" in cmdline


def list_running() -> list[RunningBoard]:
    """Boards whose supervisor is alive; stale records are removed."""
    out = []
    for path in sorted((home() / "run").glob("*.json")):
        try:
            rec = RunningBoard(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if _alive(rec.pid):
            out.append(rec)
        else:
            path.unlink(missing_ok=True)
    return out


def find_running(name: str) -> RunningBoard:
    """The running board called ``name``.

    Raises:
        SimError: no such board is running.
    """
    for rec in list_running():
        if rec.name == name:
            return rec
    raise SimError(f"no virtual board named {name!r} is running", hint="see `ioconnect sim list`")


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
) -> VirtualBoard:
    """Power on a virtual ``board`` (a name from boards/, e.g. ``"esp32"``).

    Args:
        board: board definition name or path to a board file.
        name: device name (also its default state folder and registry key).
        state_dir: folder for flash and logs (default ``~/.ioconnect/sims/<name>``).
        seed: seed of the board's sensor signals and unique id.
        heap: heap override (default: the board's budget).

    Returns:
        The started board; ``.port`` is its serial port.

    Raises:
        SimError: a board of that name is already running.
        BoardError: unknown or invalid board definition.
    """
    for rec in list_running():
        if rec.name == name and rec.pid != os.getpid():
            raise SimError(f"a virtual board named {name!r} is already running on {rec.port}")
    spec = load_board(board)
    _allow_many_files()
    state = state_dir or default_state_dir(name)
    state.mkdir(parents=True, exist_ok=True)
    config = SimConfig(
        name=name,
        board=spec.vm_config(),
        state_dir=state,
        heap=heap or spec.heap,
        seed=seed,
        preload=spec.sim_preload(),
        vm_cache=home() / "cache" / f"vmlib-{host_mpy_arch()}",
    )
    _install_firmware_if_blank(config.flash_dir)
    vb = VirtualBoard(config)
    vb.start()
    return vb


def _write_record(rec: RunningBoard) -> None:
    path = _record_path(rec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec)))
    tmp.replace(path)


def run_foreground(vb: VirtualBoard, board: str, on_ready: object = None) -> None:
    """Record ``vb`` as running, serve until SIGTERM/SIGINT, then clean up.

    SIGUSR1 cuts the board's power (``ioconnect sim fault NAME --power-cut``).
    """
    rec = RunningBoard(vb.config.name, board, vb.port, os.getpid(), str(vb.config.state_dir))
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
        _record_path(rec.name).unlink(missing_ok=True)


def start_detached(
    board: str,
    *,
    name: str,
    state_dir: Path | None = None,
    seed: int = 0,
    heap: str | None = None,
    timeout_s: float = 30.0,
) -> RunningBoard:
    """Start a board in a background process that outlives this one.

    Raises:
        SimError: it did not come up within ``timeout_s`` (its log is named).
    """
    for rec in list_running():
        if rec.name == name:
            raise SimError(f"a virtual board named {name!r} is already running on {rec.port}")
    state = state_dir or default_state_dir(name)
    state.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ioconnect_sim", "--board", board, "--name", name]
    argv += ["--state", str(state), "--seed", str(seed)]
    if heap:
        argv += ["--heap", heap]
    log = state / "supervisor.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for rec in list_running():
            if rec.name == name and rec.pid == proc.pid:
                return rec
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise SimError(f"virtual board {name!r} did not start: {tail[0]}", hint=f"see {log}")
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    raise SimError(f"virtual board {name!r} did not come up in {timeout_s:g} s", hint=f"see {log}")


def stop_running(name: str, *, timeout_s: float = 10.0) -> RunningBoard:
    """Stop the detached board ``name`` and wait until it is gone."""
    rec = find_running(name)
    os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(rec.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(rec.pid):
        os.kill(rec.pid, signal.SIGKILL)
    _record_path(name).unlink(missing_ok=True)
    return rec
