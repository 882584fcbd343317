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
import time
import zlib
from typing import Any, Literal, Protocol

from .errors import DeviceError
from .transport import TransportError

__all__ = [
    "API_VERSION",
    "AckStatus",
    "AgentError",
    "Curve",
    "ack",
    "ack_inline",
    "ack_request",
    "answer_result",
    "attest",
    "call",
    "config_get",
    "config_set",
    "diddoc",
    "identity_create",
    "identity_rotate",
    "identity_show",
    "info",
    "parse_events",
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
    """The agent answered with a typed error (``code``: e.g. ``no_identity``),
    or with an intact frame that is not a well-formed answer (``bad_answer``)."""


# JSON names of the types an answer can hold, for one-line errors.
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), "a number")


def parse_frame(output: bytes, rid: int | None = None) -> dict[str, Any]:
    """The agent's answer inside ``output``: the first frame whose length and CRC
    hold (and whose id is ``rid``, if given; else one with id null, the answer
    to a request the device could not read).

    Anything else the board printed (a firmware's debug print, even one that looks
    like a frame header, or another frame) is skipped.

    Raises:
        AgentError: ``bad_answer``, an intact frame is not a JSON object in UTF-8.
        TransportError: no frame, or only damaged ones.
    """
    damaged = False
    malformed = ""
    unread: dict[str, Any] | None = None
    for m in _FRAME.finditer(output):
        length, crc = int(m.group(1)), int(m.group(2), 16)
        body = output[m.end() : m.end() + length]
        if len(body) != length or zlib.crc32(body) != crc:
            damaged = True
            continue
        try:
            # Decoded here, strictly: json.loads(bytes) would guess UTF-16/32.
            answer = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            malformed = f"not UTF-8 at byte {exc.start}"
            continue
        except ValueError as exc:
            malformed = f"not JSON ({exc})"
            continue
        if not isinstance(answer, dict):
            malformed = f"{_json_type(answer)}, not an object"
            continue
        if rid is None or answer.get("id") == rid:
            return answer
        if answer.get("id") is None and unread is None:
            unread = answer
    if unread is not None:
        return unread
    if malformed:
        raise AgentError("bad_answer", f"the agent's answer is {malformed}")
    if damaged:
        raise TransportError("the agent's answer was damaged in transit (length or CRC mismatch)")
    raise TransportError(f"no agent answer in the board's output: {output[-120:]!r}")


def call(board: Board, op: str, *, timeout_s: float = 30.0, **args: Any) -> Any:
    """Run agent operation ``op`` with ``args``; return its result.

    Text travels as JSON ``\\u`` escapes (ensure_ascii): the device joins surrogate
    pairs and signs the UTF-8 of the text; a lone surrogate is refused there.

    Raises:
        AgentError: the device refused (``code`` says why), or its answer is
            malformed (``bad_answer``).
        TransportError: no (intact) answer.
    """
    rid = next(_ids)
    request = json.dumps({"v": API_VERSION, "id": rid, "op": op, **args}).encode()
    out = board.exec(CALL % repr(request).encode(), timeout_s=timeout_s)
    return answer_result(parse_frame(out, rid))


def answer_result(answer: dict[str, Any]) -> Any:
    """The ``result`` of an agent answer, or its error raised as AgentError.

    Raises:
        AgentError: the error the answer carries, or ``bad_answer`` when the
            answer lacks a boolean ``ok``, a ``result``, or a string
            ``code``/``message`` in ``error``.
    """
    ok = answer.get("ok")
    if ok is True:
        if "result" not in answer:
            raise AgentError("bad_answer", "the agent's answer says ok but has no result")
        return answer["result"]
    if ok is not False:
        got = _json_type(ok)
        raise AgentError("bad_answer", f"the agent's answer has {got} for 'ok', not a boolean")
    err = answer.get("error")
    if not isinstance(err, dict):
        got = _json_type(err)
        raise AgentError("bad_answer", f"the agent's error answer has {got} for 'error'")
    code, message = err.get("code"), err.get("message")
    if not isinstance(code, str) or not code or not isinstance(message, str):
        raise AgentError("bad_answer", "the agent's error answer lacks a code or message")
    # MicroPython says only this when a module was compiled for another CPU (an image
    # built with the wrong --mpy-arch, files copied from another board).
    hint = _OTHER_ARCH_FIX if "incompatible .mpy" in message else None
    raise AgentError(code, message, hint)


_OTHER_ARCH_FIX = (
    "the board's firmware was compiled for another CPU: `ioconnect deploy` sends "
    "modules built for this one"
)


def _object(board: Board, op: str, **args: Any) -> dict[str, Any]:
    result = call(board, op, **args)
    if not isinstance(result, dict):
        got = _json_type(result)
        raise AgentError("bad_answer", f"the agent answered {op!r} with {got}, not an object")
    return result


def info(board: Board) -> dict[str, Any]:
    """Firmware version, board, MicroPython version, free heap, uptime, identity state."""
    return _object(board, "info")


def identity_create(board: Board, curve: Curve = "secp256k1") -> dict[str, Any]:
    """Create the device's key (refused if one exists: see identity_rotate)."""
    return _object(board, "identity.create", curve=curve)


def identity_show(board: Board) -> dict[str, Any]:
    """DID, did:key, address and public key of the device's identity."""
    return _object(board, "identity.show")


def identity_rotate(board: Board, curve: Curve = "secp256k1") -> dict[str, Any]:
    """Replace the device's key with a new one (the old one is kept as a backup on the device)."""
    return _object(board, "identity.rotate", curve=curve)


def diddoc(board: Board) -> dict[str, Any]:
    """The device's DID document."""
    return _object(board, "diddoc")


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
    return _object(board, "sign", profile=profile, args=args)


def config_get(board: Board, key: str | None = None) -> Any:
    """All settings (secrets shown as "<set>"), or one."""
    return call(board, "config.get", key=key)


def config_set(board: Board, key: str, value: str | int | list[str] | None) -> Any:
    """Set (or with None, remove) one validated setting."""
    return call(board, "config.set", key=key, value=value)


AckStatus = Literal["queued", "accepted", "rejected"]


def attest(board: Board, *, cose: bool | None = None) -> dict[str, Any]:
    """Take one reading now and sign it as the device's loop would (debugging).

    The nonce comes from the device's own nonce store, so it is never used
    again; the request is returned and NOT queued in the outbox.

    Args:
        cose: also (True) or never (False) make a COSE_Sign1 token; None: as
            the device's ``attest.cose`` setting says.

    Returns:
        ``nonce``, ``payload`` (the JSON the device signed), ``request`` (the
        POST /v1/task body) and, with COSE, ``cose`` (hex).

    Example:
        >>> attest(board)["request"]
        '{"nonce":33,"projectID":"42","payload":{"timestamp":...},"signature":"0x..."}'
    """
    extra: dict[str, Any] = {} if cose is None else {"cose": cose}
    result: dict[str, Any] = call(board, "attest", **extra)
    return result


def ack(
    board: Board, nonce: int, status: AckStatus, *, task_id: str = "", reason: str = ""
) -> dict[str, Any]:
    """Acknowledge a message taken from the console: the device drops it from its outbox.

    Returns:
        ``nonce``, ``removed`` (False if it was not queued) and ``pending`` (messages left).
    """
    result: dict[str, Any] = call(
        board, "ack", nonce=nonce, status=status, taskID=task_id, reason=reason
    )
    return result


class SerialLike(Protocol):
    """A raw serial port (pyserial ``Serial``, or ``serial_for_url``'s object)."""

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...


def ack_request(
    nonce: int, status: AckStatus, *, task_id: str = "", reason: str = ""
) -> tuple[int, bytes]:
    """An ack as the running loop reads it on its console: ``(id, framed line)``.

    The loop answers with an agent frame carrying that id (see :func:`ack_inline`,
    which waits for it; a relay that owns the port writes several and matches the
    answers as they come).
    """
    rid = next(_ids)
    body = json.dumps(
        {
            "v": API_VERSION,
            "id": rid,
            "op": "ack",
            "nonce": nonce,
            "status": status,
            "taskID": task_id,
            "reason": reason,
        },
        separators=(",", ":"),
    ).encode()
    return rid, b"\x1eIOC1 %d %08x " % (len(body), zlib.crc32(body)) + body + b"\n"


def ack_inline(
    port: SerialLike,
    nonce: int,
    status: AckStatus,
    *,
    task_id: str = "",
    reason: str = "",
    seen: bytearray | None = None,
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """Acknowledge a message while the device's loop runs, without stopping it.

    The request goes to the console as a framed line (``\\x1eIOC1 <len> <crc32>
    <json>``), which the attestation loop reads between readings; it answers
    with an agent frame. Use :func:`ack` when the board is in its REPL.

    Args:
        port: the board's raw serial port (not in raw-REPL use by anyone else).
        seen: everything read while waiting is appended here, so the caller
            keeps the task events that arrived meanwhile.

    Returns:
        ``nonce``, ``removed``, ``pending``, as :func:`ack`.

    Raises:
        AgentError: the device refused the request.
        TransportError: no answer within ``timeout_s``.
    """
    rid, request = ack_request(nonce, status, task_id=task_id, reason=reason)
    port.write(request)
    got = bytearray()
    deadline = time.monotonic() + timeout_s
    while True:
        chunk = port.read(4096)
        got += chunk
        if seen is not None:
            seen += chunk
        for m in _FRAME.finditer(got):
            length, crc = int(m.group(1)), int(m.group(2), 16)
            frame = bytes(got[m.end() : m.end() + length])
            if len(frame) != length or zlib.crc32(frame) != crc:
                continue
            answer = json.loads(frame)
            if isinstance(answer, dict) and answer.get("id") == rid and "ok" in answer:
                if not answer["ok"]:
                    err = answer.get("error") or {}
                    raise AgentError(str(err.get("code", "error")), str(err.get("message", "")))
                result: dict[str, Any] = answer["result"]
                return result
        if time.monotonic() > deadline:
            raise TransportError(
                f"no answer to the ack of nonce {nonce} within {timeout_s:g} s",
                hint="is the attestation loop running on the board?",
            )


def parse_events(output: bytes) -> list[dict[str, Any]]:
    """Every intact event frame (``{"event": ...}``) the device's loop printed, in order.

    The serial fallback of the attestation loop prints ``task`` events (one
    signed request each, ``nonce`` and ``body``) and ``started``/``halted``/
    ``error`` events; damaged frames and other output are skipped.
    """
    events = []
    for m in _FRAME.finditer(output):
        length, crc = int(m.group(1)), int(m.group(2), 16)
        body = output[m.end() : m.end() + length]
        if len(body) != length or zlib.crc32(body) != crc:
            continue
        try:
            obj = json.loads(body)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" in obj:
            events.append(obj)
    return events
