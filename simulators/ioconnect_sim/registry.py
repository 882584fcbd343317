"""Which virtual boards run now: their records, read without loading the simulator.

Every command that takes ``--port sim:NAME`` looks a board up here; keeping it
apart from launch.py (which loads the supervisor, littlefs and the engines)
keeps that lookup cheap.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from ioconnect_host.errors import IoconnectError
from ioconnect_host.paths import home

from .statelock import lock_holder

__all__ = [
    "RunningBoard",
    "SimError",
    "alive",
    "default_state_dir",
    "find_running",
    "list_running",
    "record_path",
]


class SimError(IoconnectError):
    """A virtual board could not be started, found or stopped."""


@dataclass(frozen=True)
class RunningBoard:
    """A virtual board that is running now, as recorded by its supervisor.

    ``own_process``: the pid runs only this board (``sim start``), so ``sim stop``
    may kill it if it does not stop when asked; otherwise the board lives inside
    another program (``start_board``), which is asked to stop but never killed.
    """

    name: str
    board: str
    port: str
    pid: int
    state_dir: str
    own_process: bool = False
    uart_port: str = ""  # UART(1)'s pty ("" in records of older versions)
    engine: str = "unix"  # "unix" (MicroPython unix port) or "rp2040" (emulated chip)
    #: Wall time per device time: host limits for this board multiply by it.
    slowness: float = 1.0


def default_state_dir(name: str) -> Path:
    """Where board ``name`` keeps its flash unless ``--state`` says otherwise."""
    return home() / "sims" / name


def record_path(name: str) -> Path:
    return home() / "run" / f"{name}.json"


def alive(rec: RunningBoard) -> bool:
    """True if the recorded process holds the board's state lock now, as that board."""
    holder = lock_holder(Path(rec.state_dir))
    return holder is not None and (holder.pid, holder.name) == (rec.pid, rec.name)


def list_running() -> list[RunningBoard]:
    """Boards that run now; records of boards that stopped are removed."""
    out = []
    for path in sorted((home() / "run").glob("*.json")):
        try:
            text = path.read_text()
            rec = RunningBoard(**json.loads(text))
        except (OSError, ValueError, TypeError):
            continue
        if alive(rec):
            out.append(rec)
        else:
            with contextlib.suppress(OSError):
                if path.read_text() == text:  # not rewritten by a board starting meanwhile
                    path.unlink()
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


