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
    "parse_frame",
    "sign",
]

#: Agent API version this host speaks (firmware ioconnect/agent.py API).
API_VERSION = 1

Curve = Literal["secp256k1", "p256", "ed25519"]

#: The one statement the host ever runs for the agent; the request is data in it.
CALL = b'__import__("ioconnect.agent").agent.call(%s)'
_FRAME = re.compile(rb"\x1eIOC1 (\d+) ([0-9a-f]{8}) ")
_ids = itertools.count(1)


class Board(Protocol):
    """What the agent needs from a transport."""

    port: str

    def exec(self, code: str | bytes, *, timeout_s: float = ...) -> bytes: ...


class AgentError(DeviceError):
    """The agent answered with a typed error (``code``: e.g. ``no_identity``)."""


def parse_frame(output: bytes, rid: int | None = None) -> dict[str, Any]:
    """The agent's answer inside ``output``: the first frame whose length and CRC
    hold (and whose id is ``rid``, if given).

    Anything else the board printed (a firmware's debug print, even one that looks
    like a frame header, or another frame) is skipped.
    """
    damaged = False
    for m in _FRAME.finditer(output):
        length, crc = int(m.group(1)), int(m.group(2), 16)
        body = output[m.end() : m.end() + length]
        if len(body) != length or zlib.crc32(body) != crc:
            damaged = True
            continue
        try:
            answer = json.loads(body)
        except ValueError:
            damaged = True
            continue
        if isinstance(answer, dict) and (rid is None or answer.get("id") == rid):
            return answer
    if damaged:
        raise TransportError("the agent's answer was damaged in transit (length or CRC mismatch)")
    raise TransportError(f"no agent answer in the board's output: {output[-120:]!r}")


def call(board: Board, op: str, *, timeout_s: float = 30.0, **args: Any) -> Any:
    """Run agent operation ``op`` with ``args``; return its result.

    Raises:
        AgentError: the device refused (``code`` says why).
        TransportError: no (intact) answer.
    """
    rid = next(_ids)
    request = json.dumps({"v": API_VERSION, "id": rid, "op": op, **args}).encode()
    out = board.exec(CALL % repr(request).encode(), timeout_s=timeout_s)
    answer = parse_frame(out, rid)
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


Profile = Literal["w3bstream", "sprout", "ioid", "eip191", "cose"]


def sign(board: Board, profile: Profile, **args: Any) -> dict[str, Any]:
    """Sign with the device key using one of the identity core's profiles.

    Args (per profile; data as ``payload`` text or ``payload_hex``):
        w3bstream: nonce, project_id (decimal str), project_version, signed_keys
            -> {"request": the POST /v1/task body}
        sprout: project_id (int), project_version -> {"request": the POST /message body}
        ioid: owner ("0x…"), nonce, chain_id (4689/4690), registry -> {"digest", "signature"}
        eip191: -> {"signature"} (65 bytes hex, v 27/28)
        cose: kid -> {"token"} (COSE_Sign1, hex)
    """
    result: dict[str, Any] = call(board, "sign", profile=profile, args=args)
    return result


def config_get(board: Board, key: str | None = None) -> Any:
    """All settings (secrets shown as "<set>"), or one."""
    return call(board, "config.get", key=key)


def config_set(board: Board, key: str, value: str | int | None) -> Any:
    """Set (or with None, remove) one validated setting."""
    return call(board, "config.set", key=key, value=value)
