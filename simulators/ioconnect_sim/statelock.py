"""Who runs a virtual board on a state folder, decided by the folder's lock.

A board's supervisor holds ``<state>/.lock`` (flock) while it runs and writes
into it its pid, that process's start time (``/proc/<pid>/stat``) and the
board's name. A board is running exactly when the lock is held *and* that pid
still has that start time: a stale record, a reused pid or an unrelated process
whose command line happens to say "ioconnect" is never taken for a board.

Requests (stop, power cut) go through ``<state>/.ctl``, a FIFO the board reads,
so a board inside any Python program can be stopped without a signal that
would hit the program itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONTROL_WORDS",
    "LockHolder",
    "StateLockedError",
    "hold_state_lock",
    "lock_holder",
    "open_control",
    "process_start_time",
    "send_control",
]

LOCK_NAME = ".lock"
CONTROL_NAME = ".ctl"
#: What a board accepts on its control FIFO, one word per line.
CONTROL_WORDS = ("stop", "power-cut", "reset", "download")
# A reader (``lock_holder``) holds a shared lock for microseconds; a board
# starting at that moment waits this long before it calls the folder busy.
_LOCK_RETRY_S = 0.5


class StateLockedError(OSError):
    """The state folder's lock is held by another board."""


@dataclass(frozen=True)
class LockHolder:
    """The live process that runs a board on a state folder."""

    pid: int
    start_time: int  # clock ticks after boot, field 22 of /proc/<pid>/stat
    name: str


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot); None if there is no such process.

    A pid is reused after its process ends; the pair (pid, start time) is not.
    """
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 overall


def hold_state_lock(state_dir: Path, name: str) -> int:
    """Take ``state_dir``'s lock for board ``name`` in this process; returns its descriptor.

    Closing the descriptor (or the process ending) releases it.

    Raises:
        StateLockedError: another board holds it.
    """
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + _LOCK_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StateLockedError(errno.EAGAIN, "state folder in use") from None
            time.sleep(0.01)
    me = os.getpid()
    info = {"pid": me, "start_time": process_start_time(me), "name": name}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


def lock_holder(state_dir: Path) -> LockHolder | None:
    """The live process holding ``state_dir``'s lock, or None if no board runs there."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            data = os.pread(fd, 4096, 0)  # held: by whom?
        else:
            return None  # free: nobody runs a board here
    finally:
        os.close(fd)  # also drops our shared lock at once
    try:
        info = json.loads(data)
        holder = LockHolder(int(info["pid"]), int(info["start_time"]), str(info["name"]))
    except (ValueError, KeyError, TypeError):
        return None  # being written by a board that is starting: not running yet
    if process_start_time(holder.pid) != holder.start_time:
        return None  # the lock outlived its writer (inherited by a child)
    return holder


def open_control(state_dir: Path) -> int:
    """Create ``state_dir``'s control FIFO and open it for the board to read (non-blocking)."""
    path = state_dir / CONTROL_NAME
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISFIFO(mode):
        path.unlink()
        mode = None
    if mode is None:
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
    # Read and write: the board is then a writer too, so the FIFO never reads as
    # ended (EOF) when a requester closes it, and the selector does not spin.
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def send_control(state_dir: Path, word: str) -> bool:
    """Ask the board on ``state_dir`` to ``word`` (see CONTROL_WORDS); False if none listens."""
    if word not in CONTROL_WORDS:
        raise ValueError(f"unknown control word {word!r}")
    try:
        fd = os.open(state_dir / CONTROL_NAME, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # ENXIO: no reader (no board); ENOENT: never had a board
        return False
    try:
        os.write(fd, word.encode() + b"\n")  # one write under PIPE_BUF: never interleaved
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
