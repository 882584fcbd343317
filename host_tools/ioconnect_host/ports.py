"""Find the board a command talks to: serial ports, virtual boards, ``--port`` specs.

A ``--port`` value is one of:

- ``auto`` (default): the single likely board. Candidates are USB serial ports
  whose VID:PID a board in ``boards/`` lists, and running virtual boards (a
  user who started one means to use it). With no candidate, other USB serial
  ports are probed for a MicroPython console. Several candidates are refused
  with the list, never guessed.
- a device path (``/dev/ttyACM0``, ``COM3``) or a pyserial URL (``socket://``,
  ``rfc2217://``, ``loop://``);
- ``sim:NAME``: the running virtual board ``NAME``;
- ``id:SERIAL``: the USB port whose serial number is ``SERIAL`` (as mpremote's
  ``connect id:``);
- ``did:io:0x…`` (or any ``did:``): the board whose identity is that DID (probed).

A :class:`BoardRef` remembers how the board was found, so
:func:`find_again` finds it after it re-enumerates (reset, bootloader, reflash)
under a new path.

Example:
    >>> ref = select_port("auto")
    >>> ref.port, ref.board
    ('/dev/ttyACM0', 'rpi-pico')
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from .boards import boards_for_usb
from .errors import IoconnectError

__all__ = [
    "DEFAULT_PORT",
    "PORT_ENV",
    "BoardRef",
    "PortInfo",
    "PortSelectionError",
    "find_again",
    "list_ports",
    "probe",
    "select_port",
]

#: Environment variable holding the default ``--port`` (as ESPTOOL_PORT for esptool).
PORT_ENV = "IOCONNECT_PORT"
DEFAULT_PORT = "auto"

PortKind = Literal["usb", "virtual"]


class PortSelectionError(IoconnectError):
    """No board, several boards, or no board matching the ``--port`` value."""


@dataclass(frozen=True)
class PortInfo:
    """One serial port that may lead to a board.

    Attributes:
        port: what to open (device path, or a virtual board's pty).
        kind: ``usb`` (a USB serial device) or ``virtual`` (a running virtual board).
        vid, pid: USB ids (None for virtual boards).
        serial_number: USB serial number, if the device reports one.
        description: what the OS (or the board registry) calls it.
        boards: board definitions listing these USB ids (the virtual board's own).
        sim_name: the virtual board's name.
        slowness: wall time per device time (an emulated chip announces it; 1 otherwise).
    """

    port: str
    kind: PortKind
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    description: str = ""
    boards: tuple[str, ...] = ()
    sim_name: str | None = None
    slowness: float = 1.0

    @property
    def likely(self) -> bool:
        """A board from boards/ shows up under these USB ids (or it is a virtual board)."""
        return bool(self.boards)

    def label(self) -> str:
        """One line for lists in messages."""
        if self.kind == "virtual":
            return f"{self.port} (virtual board {self.sim_name}, {self.boards[0]})"
        ids = f"{self.vid:04x}:{self.pid:04x}" if self.vid is not None else "?"
        extra = f", serial {self.serial_number}" if self.serial_number else ""
        board = "/".join(self.boards) or "unknown board"
        return f"{self.port} ({ids} {board}{extra})"


@dataclass(frozen=True)
class BoardRef:
    """The board a command selected, and what identifies it if its port changes.

    Attributes:
        port: what to open now.
        board: board definition name when known (USB ids matched one board, or virtual).
        usb_serial: USB serial number (the port path may change, this does not).
        sim_name: virtual board name.
        did: the identity the board was selected by.
        how: the ``--port`` value that selected it.
        slowness: wall time per device time of a virtual board (its registry record
            says; an emulated RP2040 runs about 50 times slower than the chip).
            Host limits multiply by it (``session.timeout_scale``).
    """

    port: str
    board: str | None = None
    usb_serial: str | None = None
    sim_name: str | None = None
    did: str | None = None
    how: str = ""
    slowness: float = 1.0


def _usb_ports() -> list[PortInfo]:
    from serial.tools import list_ports as pyserial_ports

    out = []
    for p in sorted(pyserial_ports.comports(), key=lambda p: p.device):
        if p.vid is None or p.pid is None:
            continue  # on-board UARTs (ttyS*): never a USB board
        boards = tuple(b.name for b in boards_for_usb(p.vid, p.pid))
        out.append(
            PortInfo(
                port=p.device,
                kind="usb",
                vid=p.vid,
                pid=p.pid,
                serial_number=p.serial_number,
                description=p.description or "",
                boards=boards,
            )
        )
    return out


def _virtual_ports() -> list[PortInfo]:
    # The simulator is an optional part: the core never imports it at import time.
    try:
        from ioconnect_sim.registry import list_running
    except ImportError:
        return []
    return [
        PortInfo(
            port=rec.port,
            kind="virtual",
            description=f"ioconnect virtual board {rec.name}",
            boards=(rec.board,),
            sim_name=rec.name,
            slowness=rec.slowness,
        )
        for rec in list_running()
    ]


def list_ports(*, include_virtual: bool = True) -> list[PortInfo]:
    """USB serial ports (with the boards their ids fit) and running virtual boards.

    Returns:
        USB ports sorted by path, then virtual boards sorted by name.
    """
    ports = _usb_ports()
    if include_virtual:
        ports += _virtual_ports()
    return ports


def probe(port: str, *, timeout_s: float = 2.0, slowness: float = 1.0) -> dict[str, Any]:
    """Ask what answers on ``port``: MicroPython version, board, firmware, DID.

    ``slowness``: an emulated board's (``BoardRef.slowness``); the limits scale by it.

    Returns:
        ``{"micropython", "board", "firmware", "api", "did"}`` from the agent,
        or ``{"micropython", "board"}`` (firmware None) where MicroPython runs
        without our firmware.

    Raises:
        TransportError: nothing answered as a MicroPython console within the limits.
    """
    from .session import open_session

    ref = BoardRef(port=port, how=port, slowness=slowness)
    with open_session(ref, attempts=(timeout_s,)) as s:
        return s.identify()


def _match_did(a: str | None, b: str) -> bool:
    # did:io addresses are compared case-insensitively (upstream writes them in any case).
    return a is not None and a.lower() == b.lower()


def _single(candidates: list[PortInfo], what: str) -> PortInfo:
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise PortSelectionError(
            f"no board found {what}",
            hint="plug one in, start one with `ioconnect sim start`, or pass --port",
        )
    listed = "; ".join(c.label() for c in candidates)
    raise PortSelectionError(
        f"{len(candidates)} boards found {what}: {listed}", hint="choose one with --port"
    )


def _ref(info: PortInfo, how: str, did: str | None = None) -> BoardRef:
    board = info.boards[0] if len(info.boards) == 1 else None
    return BoardRef(
        port=info.port,
        board=board,
        usb_serial=info.serial_number,
        sim_name=info.sim_name,
        did=did,
        slowness=info.slowness,
        how=how,
    )


def _answers(port: str, timeout_s: float) -> dict[str, Any] | None:
    try:
        return probe(port, timeout_s=timeout_s)
    except IoconnectError:
        return None


def select_port(spec: str | None = None, *, probe_timeout_s: float = 1.5) -> BoardRef:
    """Resolve a ``--port`` value (None: ``$IOCONNECT_PORT``, else ``auto``) to one board.

    Args:
        spec: the ``--port`` value.
        probe_timeout_s: how long a probed port may take to answer.

    Returns:
        The selected board.

    Raises:
        PortSelectionError: no board, several boards, or none matching ``spec``.
        SimError: ``sim:NAME`` names no running virtual board.
    """
    spec = spec or os.environ.get(PORT_ENV) or DEFAULT_PORT
    if spec.startswith("sim:"):
        from ioconnect_sim.registry import find_running

        rec = find_running(spec[4:])
        return BoardRef(
            port=rec.port, board=rec.board, sim_name=rec.name, how=spec, slowness=rec.slowness
        )
    if spec.startswith("id:"):
        serial_number = spec[3:]
        usb = _usb_ports()
        found = [p for p in usb if p.serial_number == serial_number]
        if not found:
            known = ", ".join(p.serial_number for p in usb if p.serial_number) or "none"
            raise PortSelectionError(
                f"no USB serial port with serial number {serial_number!r}",
                hint=f"serial numbers present: {known}",
            )
        return _ref(_single(found, f"with serial number {serial_number!r}"), spec)
    if spec.startswith("did:"):
        return _select_by_did(spec, probe_timeout_s)
    if spec == "auto":
        return _select_auto(probe_timeout_s)
    if "://" in spec:
        return BoardRef(port=spec, how=spec)
    return _select_path(spec)


def _select_path(path: str) -> BoardRef:
    for info in list_ports():
        if info.port == path or os.path.realpath(info.port) == os.path.realpath(path):
            return _ref(info, path)
    if not os.path.exists(path) and not path.upper().startswith("COM"):
        raise PortSelectionError(
            f"no such serial port: {path}",
            hint="see `ioconnect ports`; --port takes a path, socket://, rfc2217://, "
            "sim:NAME, id:SERIAL, a DID or auto",
        )
    return BoardRef(port=path, how=path)


def _select_auto(probe_timeout_s: float) -> BoardRef:
    ports = list_ports()
    likely = [p for p in ports if p.likely]
    if likely:
        return _ref(_single(likely, "(USB ids from boards/ and virtual boards)"), "auto")
    # No known USB ids: a board behind an unlisted USB-serial bridge may still answer.
    answering = [p for p in ports if _answers(p.port, probe_timeout_s) is not None]
    return _ref(_single(answering, "(no known USB ids; no other port answered)"), "auto")


def _select_by_did(did: str, probe_timeout_s: float) -> BoardRef:
    found = []
    for info in list_ports():
        answer = _answers(info.port, probe_timeout_s)
        if answer is not None and _match_did(answer.get("did"), did):
            found.append(info)
    if not found:
        raise PortSelectionError(
            f"no board with identity {did} answered", hint="is it plugged in and free?"
        )
    return _ref(_single(found, f"with identity {did}"), did, did=did)


def find_again(
    ref: BoardRef,
    *,
    timeout_s: float = 15.0,
    poll_s: float = 0.25,
    probe_timeout_s: float = 1.5,
    sleep: Callable[[float], None] = time.sleep,
) -> BoardRef:
    """The same board after it re-enumerated (reset, bootloader, reflash).

    Looks it up by what does not change: the virtual board's name, the USB
    serial number, or the DID; otherwise waits for the same path to come back.

    Raises:
        PortSelectionError: it did not come back within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = _look_again(ref, probe_timeout_s)
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise PortSelectionError(
                f"the board on {ref.port} did not come back within {timeout_s:g} s",
                hint="is it still connected? it may be in its bootloader",
            )
        sleep(poll_s)


def _look_again(ref: BoardRef, probe_timeout_s: float) -> BoardRef | None:
    if ref.sim_name is not None:
        from ioconnect_sim.registry import SimError, find_running

        try:
            return replace(ref, port=find_running(ref.sim_name).port)
        except SimError:
            return None
    if ref.usb_serial is not None:
        for info in _usb_ports():
            if info.serial_number == ref.usb_serial:
                return replace(ref, port=info.port)
        return None
    if ref.did is not None:
        for info in list_ports():
            answer = _answers(info.port, probe_timeout_s)
            if answer is not None and _match_did(answer.get("did"), ref.did):
                return replace(ref, port=info.port)
        return None
    if "://" in ref.port or os.path.exists(ref.port):
        return ref
    return None
