"""Deliver Ctrl-C to the MicroPython VM as SIGINT, only where it is safe.

The unix port from PyPI is built with threads and asynchronous keyboard
interrupts: its SIGINT handler longjmps out of whatever C code runs. Landing in
the middle of an allocation or a qstr insertion leaves that subsystem's mutex
locked, and the VM deadlocks on its next allocation. A board has no such hazard:
it only raises KeyboardInterrupt between bytecodes.

So before signalling, the VM is stopped (SIGSTOP) and looked at through
/proc: it is safe while it waits in a blocking system call (reading the
console, sleeping, waiting on a socket) or while its program counter is inside
the bytecode loop, which holds no lock. Otherwise it is resumed and tried again
a moment later. Linux on x86-64; elsewhere the signal is sent as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["interrupt_safely"]

# x86-64 system calls during which the VM holds none of its own locks.
_SAFE_SYSCALLS = frozenset(
    {
        0,  # read (console input)
        7,  # poll
        23,  # select
        35,  # nanosleep (time.sleep)
        42,  # connect
        43,  # accept
        45,  # recvfrom
        61,  # wait4 (os.system)
        230,  # clock_nanosleep
        232,  # epoll_wait
        270,  # pselect6
        271,  # ppoll
        281,  # epoll_pwait
        288,  # accept4
    }
)
_SAFE_FUNCTIONS = ("mp_execute_bytecode",)
# Unsafe, but over soon once another thread runs: futex (a mutex, or the GC's
# wait for each thread to scan its stack) and tgkill (the GC signalling them).
_WAITING_SYSCALLS = frozenset({202, 234})


@functools.lru_cache(maxsize=4)
def _symbol_ranges(library: str) -> tuple[tuple[int, int], ...]:
    """(offset, size) of the safe functions in the VM's shared library."""
    try:
        out = subprocess.run(
            ["nm", "-S", "--defined-only", library], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ()
    ranges = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] in _SAFE_FUNCTIONS:
            ranges.append((int(parts[0], 16), int(parts[1], 16)))
    return tuple(ranges)


def _safe_pc_ranges(pid: int) -> list[tuple[int, int]]:
    """Absolute [start, end) of the safe functions in process ``pid``."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and "micropython_run" in fields[5] and int(fields[2], 16) == 0:
            base = int(fields[0].split("-")[0], 16)
            return [(base + off, base + off + size) for off, size in _symbol_ranges(fields[5])]
    return []


def _state(pid: int) -> str:
    """The process state letter (R, S, T, Z...); "X" if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rpartition(")")[2].split()[0]


def _where(pid: int) -> tuple[int, int]:
    """(system call number or -1, program counter) of a stopped process."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    if fields[0] == "running":
        return -2, 0
    return int(fields[0]), int(fields[-1], 16)


_SYS_TGKILL = 234  # x86-64


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _sigint_main_thread(pid: int) -> None:
    """SIGINT to the VM's main thread only (its thread id is ``pid``).

    A process-wide signal may be taken by any thread: with machine.Timer's
    ticker thread running, a KeyboardInterrupt could land there (lost to the
    user's program) or longjmp out of an allocation the safety check above
    never looked at (it only inspects the main thread).
    """
    if _libc().syscall(_SYS_TGKILL, pid, pid, signal.SIGINT) != 0:
        err = ctypes.get_errno()
        raise ProcessLookupError(err, os.strerror(err))


@functools.lru_cache(maxsize=1)
def _warn_once() -> None:
    print(
        "ioconnect-sim: warning: no symbols for the VM's bytecode loop (is binutils' nm "
        "installed?); Ctrl-C of a busy program may deadlock the VM",
        file=sys.stderr,
    )


def interrupt_safely(pid: int, *, patience_s: float = 3.0) -> bool:
    """Send SIGINT to the VM ``pid`` at a safe point; True if one was found.

    After ``patience_s`` without a safe point the signal is sent anyway (a
    program that never reaches the bytecode loop could not be stopped otherwise).
    """
    if platform.machine() != "x86_64" or not Path(f"/proc/{pid}/syscall").exists():
        os.kill(pid, signal.SIGINT)
        return False
    safe_pcs = _safe_pc_ranges(pid)
    if not safe_pcs:
        _warn_once()
    deadline = time.monotonic() + patience_s
    nr = -1
    while True:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        try:
            while (state := _state(pid)) not in ("T", "t"):
                if state in ("Z", "X") or time.monotonic() > deadline:
                    return False  # the VM died (power cut, reset) or will not stop
                time.sleep(0.0001)
            nr, pc = _where(pid)
            safe = nr in _SAFE_SYSCALLS or (nr == -1 and any(a <= pc < b for a, b in safe_pcs))
            if safe or time.monotonic() > deadline:
                _sigint_main_thread(pid)  # taken when the VM resumes, right there
                return safe
        except (OSError, ValueError, IndexError):
            with contextlib.suppress(ProcessLookupError):
                _sigint_main_thread(pid)
            return False
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        # A random gap, so a program with a period of its own (a 1 ms
        # machine.Timer) is not sampled in step with it. Waiting on another VM
        # thread (a GC round with machine.Timer's ticker) needs that thread to
        # run: stopping the VM again at once would only starve it.
        waiting = nr in _WAITING_SYSCALLS
        time.sleep(random.uniform(0.002, 0.005) if waiting else random.uniform(0.0002, 0.001))
