"""One session with a selected board: open the port, enter the raw REPL once, call the agent.

Every read has a deadline: a board that never answers is an error within a few
seconds, never a hang. Entering the raw REPL is retried with growing limits and
a pause between tries, because a busy board (a program running, a sensor read
in progress, Wi-Fi connecting) can be slow to take Ctrl-C. All limits scale by
a factor for slow boards (``IOCONNECT_TIMEOUT_SCALE``, and the board's clock).

Example:
    >>> with open_session(select_port("sim:dev1")) as board:
    ...     board.call("info")["firmware"]
    '0.1.0'
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import agent
from .boards import BoardError, load_board
from .errors import IoconnectError
from .ports import BoardRef
from .transport import DeviceExecError, SerialTransport, TransportError

__all__ = [
    "ENTRY_ATTEMPTS_S",
    "SCALE_ENV",
    "FirmwareMissingError",
    "Session",
    "open_session",
    "timeout_scale",
]

#: Environment variable multiplying every limit (a slow board, a loaded CI machine).
SCALE_ENV = "IOCONNECT_TIMEOUT_SCALE"
#: Limits of the tries to enter the raw REPL, before scaling (pauses between them below).
ENTRY_ATTEMPTS_S: tuple[float, ...] = (1.0, 1.5, 2.5)
_ENTRY_PAUSES_S = (0.2, 0.5)
#: Overall limits of agent operations, before scaling. A board computes silently,
#: so these bound a hung request; key generation and signing run bigint arithmetic
#: in MicroPython (about 1 ms on x86-64, a few hundred times that on a Cortex-M0+).
_OP_TIMEOUT_S = {"identity.create": 30.0, "identity.rotate": 30.0, "sign": 30.0}
_DEFAULT_OP_TIMEOUT_S = 10.0
# Operations whose effect the host can read back when their answer is lost.
_CHANGES_IDENTITY = ("identity.create", "identity.rotate")
# Operations that change nothing on the board: run again after a fresh heap.
_READ_ONLY = ("info", "identity.show", "diddoc", "config.get")
_REFERENCE_CPU_HZ = 160_000_000  # the ESP32 the default limits were chosen for
_CHUNK = 512  # bytes of file data per statement: the board compiles each one in its heap


# Fixed device statements for files; their arguments are Python literals (repr)
# of a path or of the data bytes, never code.
_HASH_FILE = """import hashlib,binascii
try:
 f=open({path},'rb')
except OSError:
 print('-')
else:
 h=hashlib.sha256()
 b=bytearray(256)
 while True:
  n=f.readinto(b)
  if not n:break
  h.update(b[:n] if n<256 else b)
 f.close()
 print(binascii.hexlify(h.digest()).decode())
"""
_CREATE_FILE = "open({path},'wb').close()"
_APPEND_FILE = "with open({path},'ab') as f:f.write({data})"
_REMOVE_FILE = "import os\ntry:\n os.remove({path})\nexcept OSError:\n pass\n"
# littlefs renames over an existing file; FAT refuses, so remove it first there.
_REPLACE_FILE = """import os
try:
 os.rename({tmp},{path})
except OSError:
 os.remove({path})
 os.rename({tmp},{path})
"""


class FirmwareMissingError(IoconnectError):
    """The board runs MicroPython but not the ioconnect firmware (or an incompatible one)."""


def timeout_scale(board: str | None = None, slowness: float = 1.0) -> float:
    """Factor for every limit: ``$IOCONNECT_TIMEOUT_SCALE`` times the board's slowness.

    The board's slowness is its clock against the ESP32 the limits were chosen
    for, times ``slowness``: what an emulated board announces (wall time per
    device time, ``BoardRef.slowness``).

    Raises:
        IoconnectError: the environment variable is not a number >= 1.
    """
    text = os.environ.get(SCALE_ENV, "1")
    try:
        user = float(text)
    except ValueError:
        user = 0.0
    if not user >= 1.0:
        raise IoconnectError(f"{SCALE_ENV}={text!r} must be a number >= 1")
    clock = 1.0
    if board:
        try:
            clock = max(1.0, _REFERENCE_CPU_HZ / load_board(board).cpu_freq_hz)
        except BoardError:
            clock = 1.0  # an unknown board name reported by a device: no facts to scale by
    return user * clock * max(1.0, slowness)


class Session:
    """A connected board in the raw REPL; implements the agent's ``Board`` protocol.

    Attributes:
        ref: how the board was selected (port, board name, USB serial, …).
        scale: factor applied to every limit.
    """

    def __init__(self, ref: BoardRef, transport: SerialTransport, scale: float) -> None:
        self.ref = ref
        self.transport = transport
        self.scale = scale
        self.port = ref.port

    def exec(self, code: str | bytes, *, timeout_s: float = _DEFAULT_OP_TIMEOUT_S) -> bytes:
        """Run ``code`` on the board (limit scaled); return what it printed."""
        return self.transport.exec(code, timeout_s=timeout_s * self.scale)

    def call(self, op: str, *, limit_s: float | None = None, **args: Any) -> Any:
        """Agent operation ``op`` with a limit fit for it (``limit_s``: this limit
        in seconds instead, not scaled).

        If the answer to ``identity.create`` or ``identity.rotate`` does not come
        in time, the board is asked what it did: the key it made is returned as
        the answer would have (see ``_after_lost_answer``); the same when their
        answer is ``no_memory`` (the key may be stored and only the answer not
        fit), asked after a soft reset. A read-only operation
        that ran out of memory runs once more after a soft reset (a fresh heap).

        Raises:
            AgentError: the device refused (``code`` says why).
            FirmwareMissingError: no ioconnect firmware answers on the board.
        """
        timeout_s = _OP_TIMEOUT_S.get(op, _DEFAULT_OP_TIMEOUT_S)
        if limit_s is not None:
            timeout_s = limit_s / self.scale  # exec scales it back
        before: dict[str, Any] | None = None
        if op == "identity.rotate":
            before = self._current_identity()  # to tell afterwards whether it changed
        try:
            try:
                return agent.call(self, op, timeout_s=timeout_s, **args)
            except (agent.AgentError, DeviceExecError) as exc:
                if op not in _READ_ONLY or exc.code not in ("no_memory", "MemoryError"):
                    raise
                # A program stopped mid-cycle can leave the heap fragmented (free
                # memory, no block big enough): a soft reset in the raw REPL gives a
                # fresh heap (main.py does not run), and this op changes nothing.
                self.transport.enter_raw_repl(soft_reset=True, timeout_s=10.0 * self.scale)
                return agent.call(self, op, timeout_s=timeout_s, **args)
        except TransportError as exc:
            if op not in _CHANGES_IDENTITY or exc.__class__ is not TransportError:
                raise
            return self._after_lost_answer(op, exc, before)
        except agent.AgentError as exc:
            if op not in _CHANGES_IDENTITY or exc.code != "no_memory":
                raise
            # The device makes its answer before it stores the key, but the
            # frame around it may still not fit: asked on a fresh heap, the key
            # is there (this call made it) or the refusal stands.
            self.transport.enter_raw_repl(soft_reset=True, timeout_s=10.0 * self.scale)
            made = self._key_made(op, before)
            if made is None:
                raise
            return made
        except DeviceExecError as exc:
            if exc.code == "ImportError":
                raise FirmwareMissingError(
                    f"{self.port}: the ioconnect firmware is missing on this board "
                    f"(MicroPython says: {exc})",
                    hint="deploy the firmware first",
                ) from exc
            raise

    def _current_identity(self) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = agent.call(self, "identity.show", timeout_s=10.0)
        except agent.AgentError as exc:
            if exc.code == "no_identity":
                return None
            raise
        return result

    def _key_made(self, op: str, before: dict[str, Any] | None) -> dict[str, Any] | None:
        """The identity ``op`` made, or None: a key there now (create, which
        refuses when one exists) or one other than ``before`` (rotate)."""
        now = self._current_identity()
        if now is not None and (op == "identity.create" or now != before):
            return now
        return None

    def _after_lost_answer(
        self, op: str, lost: TransportError, before: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The answer to ``op`` did not arrive in time; ask the board what it did.

        The board may have finished the work after the host stopped waiting (an
        emulated chip runs 50 times slower than the limit assumed). Entering the
        raw REPL again interrupts whatever still runs; the key store writes its
        file by rename, so the key is then either stored or not, and that is what
        identity.show says. A key that is there now (create) or that differs from
        the one before (rotate) is the one this call made: its identity is
        returned, as the answer would have said.

        Raises:
            TransportError: the board did not make the key (says which it has).
        """
        self.transport.enter_raw_repl(timeout_s=10.0 * self.scale)
        made = self._key_made(op, before)
        if made is not None:
            return made
        now = before if op == "identity.rotate" else None
        kept = f"it keeps {now['did']}" if now else "it has no identity"
        raise TransportError(
            f"{self.port}: {op} got no answer in time ({lost.args[0]}); the board did not "
            f"make a new key: {kept}",
            hint=f"retry; raise {SCALE_ENV} for a slow board",
        ) from lost

    def info(self) -> dict[str, Any]:
        """The agent's ``info``, checked: the firmware is there and speaks our API version.

        Raises:
            FirmwareMissingError: no firmware, or an agent API other than ours.
        """
        result: dict[str, Any] = self.call("info")
        if result.get("api") != agent.API_VERSION:
            raise FirmwareMissingError(
                f"{self.port}: firmware {result.get('firmware')} speaks agent API "
                f"{result.get('api')}, these host tools speak {agent.API_VERSION}",
                hint="deploy matching firmware or update the host tools",
            )
        return result

    def identify(self) -> dict[str, Any]:
        """What runs here: agent facts, or MicroPython's own where the firmware is missing."""
        try:
            info = self.info()
        except FirmwareMissingError:
            impl = self.transport.eval(
                "(__import__('sys').implementation.version, __import__('sys').platform)",
                timeout_s=5.0 * self.scale,
            )
            version, platform = impl
            return {
                "micropython": ".".join(str(v) for v in version[:3]),
                "board": platform,
                "firmware": None,
                "api": None,
                "did": None,
            }
        ident = info.get("identity") or {}
        return {
            "micropython": info.get("micropython"),
            "board": info.get("board"),
            "firmware": info.get("firmware"),
            "api": info.get("api"),
            "did": ident.get("did"),
        }

    # -- files -------------------------------------------------------------
    def file_sha256(self, path: str) -> str | None:
        """SHA-256 (hex) of a file on the board, computed there; None if it is absent."""
        out = self.exec(_HASH_FILE.format(path=repr(path))).decode().strip()
        return None if out == "-" else out

    def put_file(self, path: str, data: bytes) -> str:
        """Write ``data`` to ``path`` on the board atomically; return its SHA-256 (hex).

        The bytes go to ``path.tmp``, the board hashes that file, and only a
        matching file is renamed over ``path``: a cut link or a power loss
        leaves the old file or the new one, never half of one.

        Raises:
            TransportError: the board's copy does not match what was sent.
            DeviceExecError: the board's filesystem refused (e.g. ENOSPC).
        """
        want = hashlib.sha256(data).hexdigest()
        tmp = path + ".tmp"
        try:
            self.exec(_CREATE_FILE.format(path=repr(tmp)))
            for i in range(0, len(data), _CHUNK):
                self.exec(_APPEND_FILE.format(path=repr(tmp), data=repr(data[i : i + _CHUNK])))
        except DeviceExecError:
            self.exec(_REMOVE_FILE.format(path=repr(tmp)))  # no half file left behind
            raise
        got = self.file_sha256(tmp)
        if got != want:
            self.exec(_REMOVE_FILE.format(path=repr(tmp)))
            raise TransportError(
                f"{self.port}: {path} arrived damaged (sha256 {got}, sent {want}); "
                "the old file is kept"
            )
        self.exec(_REPLACE_FILE.format(tmp=repr(tmp), path=repr(path)))
        if self.file_sha256(path) != want:
            raise TransportError(f"{self.port}: {path} does not read back as written")
        return want


@contextmanager
def open_session(
    ref: BoardRef,
    *,
    attempts: Sequence[float] = ENTRY_ATTEMPTS_S,
    scale: float | None = None,
) -> Iterator[Session]:
    """Open ``ref.port`` and enter the raw REPL once, retrying with backoff.

    Args:
        ref: the selected board (see :func:`ioconnect_host.ports.select_port`).
        attempts: limits, in seconds before scaling, of each try to enter the raw REPL.
        scale: factor for every limit (default: :func:`timeout_scale` of the board).

    Raises:
        PortError: the port cannot be opened.
        TransportError: no MicroPython console answered in any try (says how long).
    """
    factor = timeout_scale(ref.board, ref.slowness) if scale is None else scale
    transport = SerialTransport(ref.port, byte_timeout_s=2.0 * factor)
    try:
        last: TransportError | None = None
        for i, limit_s in enumerate(attempts):
            try:
                transport.enter_raw_repl(timeout_s=limit_s * factor)
                break
            except TransportError as exc:
                if exc.__class__ is not TransportError:
                    raise  # PortError: the port itself failed, another try will not help
                last = exc
                if i + 1 < len(attempts):
                    time.sleep(_ENTRY_PAUSES_S[min(i, len(_ENTRY_PAUSES_S) - 1)] * factor)
        else:
            total = sum(attempts) * factor
            raise TransportError(
                f"{ref.port}: no MicroPython raw REPL after {len(attempts)} tries "
                f"({total:g} s): {last.args[0] if last else ''}",
                hint="is it a MicroPython board, and no other program using the port?",
            )
        yield Session(ref, transport, factor)
    finally:
        transport.close()
