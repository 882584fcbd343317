"""Call the firmware's agent (``ioconnect.agent``) on a connected board.

The request travels as data inside one fixed statement; the answer is one
framed line (``\\x1eIOC1 <len> <crc32> <json>``) found in whatever the board
printed, so stray output around it cannot corrupt it.

Example:
    >>> with SerialTransport(port) as board:
    ...     info(board)["firmware"]
    '0.1.0'
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
from typing import Any, Literal, Protocol

from .errors import DeviceError
from .transport import TransportError

__all__ = [
    "API_VERSION",
    "AgentError",
    "Curve",
    "call",
    "config_get",
    "config_set",
    "diddoc",
    "identity_create",
    "identity_rotate",
    "identity_show",
    "info",
]

#: Agent API version this host speaks (firmware ioconnect/agent.py API).
API_VERSION = 1

Curve = Literal["secp256k1", "p256", "ed25519"]

_FRAME = re.compile(rb"\x1eIOC1 (\d+) ([0-9a-f]{8}) ")
_ids = itertools.count(1)


class Board(Protocol):
    """What the agent needs from a transport."""

    port: str

    def exec(self, code: str | bytes, *, timeout_s: float = ...) -> bytes: ...


class AgentError(DeviceError):
    """The agent answered with a typed error (``code``: e.g. ``no_identity``)."""


def parse_frame(output: bytes) -> dict[str, Any]:
    """The agent's answer inside ``output``; checks length and CRC."""
    m = _FRAME.search(output)
    if not m:
        raise TransportError(f"no agent answer in the board's output: {output[-120:]!r}")
    length, crc = int(m.group(1)), int(m.group(2), 16)
    body = output[m.end() : m.end() + length]
    if len(body) != length or zlib.crc32(body) != crc:
        raise TransportError("the agent's answer was damaged in transit (length or CRC mismatch)")
    answer: dict[str, Any] = json.loads(body)
    return answer


def call(board: Board, op: str, *, timeout_s: float = 30.0, **args: Any) -> Any:
    """Run agent operation ``op`` with ``args``; return its result.

    Raises:
        AgentError: the device refused (``code`` says why).
        TransportError: no (intact) answer.
    """
    rid = next(_ids)
    request = json.dumps({"v": API_VERSION, "id": rid, "op": op, **args}).encode()
    out = board.exec(
        b"import ioconnect.agent as A;A.call(" + repr(request).encode() + b")", timeout_s=timeout_s
    )
    answer = parse_frame(out)
    if answer.get("id") != rid:
        raise TransportError(f"agent answered request {answer.get('id')}, expected {rid}")
    if not answer.get("ok"):
        err = answer.get("error") or {}
        raise AgentError(str(err.get("code", "error")), str(err.get("message", "")))
    return answer["result"]


def info(board: Board) -> dict[str, Any]:
    """Firmware version, board, MicroPython version, free heap, uptime, identity state."""
    result: dict[str, Any] = call(board, "info")
    return result


def identity_create(board: Board, curve: Curve = "secp256k1") -> dict[str, Any]:
    """Create the device's key (refused if one exists: see identity_rotate)."""
    result: dict[str, Any] = call(board, "identity.create", curve=curve)
    return result


def identity_show(board: Board) -> dict[str, Any]:
    """DID, did:key, address and public key of the device's identity."""
    result: dict[str, Any] = call(board, "identity.show")
    return result


def identity_rotate(board: Board, curve: Curve = "secp256k1") -> dict[str, Any]:
    """Replace the device's key with a new one (the old one is kept as a backup on the device)."""
    result: dict[str, Any] = call(board, "identity.rotate", curve=curve)
    return result


def diddoc(board: Board) -> dict[str, Any]:
    """The device's DID document."""
    result: dict[str, Any] = call(board, "diddoc")
    return result


def config_get(board: Board, key: str | None = None) -> Any:
    """All settings (secrets shown as "<set>"), or one."""
    return call(board, "config.get", key=key)


def config_set(board: Board, key: str, value: str | int | None) -> Any:
    """Set (or with None, remove) one validated setting."""
    return call(board, "config.set", key=key, value=value)
