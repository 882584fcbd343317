"""``ioconnect verify``'s library: tell what a message is, then verify it offline.

Kinds (auto-detected, or named):

- ``w3bstream``: a ``POST /v1/task`` body (``nonce``, ``projectID``, ``payload``, ``signature``);
- ``sprout``: a sprout ``POST /message`` body (``projectID``, ``data``, 65-byte ``signature``);
- ``ioid``: an ioID permit, or a provision bundle holding one (``ioid_permit``);
- ``eip191``: ``{"msg"|"message", "sig"|"signature", "address"?}``;
- ``cose``: a COSE_Sign1 token as CBOR bytes, as hex text, or ``{"token": hex}``;
- ``frame``: a device console frame (``\\x1eIOC1 …`` or its JSON, ``{"event": "task", …}``).

``ioconnect sign --json`` output is taken as it is (its ``request``/``token``).

Example:
    >>> verdict = verify_bytes(Path("task.json").read_bytes(), claim=claim_from(address=a))
    >>> verdict.valid
    True
"""

from __future__ import annotations

import json
import re
from typing import Any

from .frames import FrameReader
from .signer import Claim, merge_claims, stated_claim
from .verdict import KINDS, Kind, MalformedError, Verdict
from .verify_cose import verify_cose
from .verify_eth import verify_eip191, verify_ioid_permit, verify_sprout
from .verify_task import verify_frame, verify_task

__all__ = ["MAX_INPUT", "detect", "verify_bytes"]

#: Largest input taken (a signed message is a few KB; a bundle less).
MAX_INPUT = 1 << 20
_HEXTEXT = re.compile(rb"\s*(?:0x)?((?:[0-9a-fA-F]{2})+)\s*")


def _json_object(data: bytes) -> dict[str, Any] | None:
    text = data.strip()
    if not text.startswith(b"{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise MalformedError(f"the input looks like JSON but is not: {exc}") from None
    if not isinstance(obj, dict):
        return None
    return obj


def _kind_of(obj: dict[str, Any]) -> Kind | None:
    keys = set(obj)
    if "event" in keys:
        return "frame"
    if "ioid_permit" in keys or {"owner", "registry", "signature"} <= keys:
        return "ioid"
    if {"nonce", "projectID", "payload", "signature"} <= keys:
        return "w3bstream"
    if {"projectID", "data", "signature"} <= keys:
        return "sprout"
    if keys & {"msg", "message", "message_hex"} and keys & {"sig", "signature"}:
        return "eip191"
    if "token" in keys:
        return "cose"
    return None


def detect(data: bytes) -> Kind:
    """The kind of message ``data`` holds.

    Raises:
        MalformedError: none of the known kinds (names what was seen).
    """
    if data.lstrip().startswith(b"\x1eIOC1 "):
        return "frame"
    obj = _json_object(data)
    if obj is not None:
        inner = obj.get("request")
        if isinstance(inner, str):  # `ioconnect sign --json` of w3bstream/sprout
            return detect(inner.encode())
        kind = _kind_of(obj)
        if kind is None:
            keys = ", ".join(sorted(obj)[:8]) or "none"
            raise MalformedError(f"a JSON object with keys {keys}: not a message verify knows",
                                 hint="--kind " + "|".join(KINDS))  # fmt: skip
        return kind
    raw = _unhex(data)
    if raw[:1] in (b"\xd2", b"\x84"):  # CBOR tag 18, or an array of 4
        return "cose"
    head = data[:24]
    raise MalformedError(
        f"cannot tell what this is (starts {head!r})", hint="--kind " + "|".join(KINDS)
    )


def _unhex(data: bytes) -> bytes:
    m = _HEXTEXT.fullmatch(data)
    return bytes.fromhex(m[1].decode()) if m else data


def _frame_object(data: bytes) -> dict[str, Any]:
    if data.lstrip().startswith(b"\x1eIOC1 "):
        reader = FrameReader()
        frames = list(reader.feed(data.lstrip()))
        if not frames or not isinstance(frames[0], dict):
            why = "its length or CRC does not hold" if reader.damaged else "it is incomplete"
            raise MalformedError(f"console frame is damaged: {why}")
        return frames[0]
    obj = _json_object(data)
    if obj is None:
        raise MalformedError("a frame is \\x1eIOC1 <len> <crc32> <json> or its JSON object")
    return obj


def _with_stated_signer(data: bytes, claim: Claim | None) -> Claim | None:
    # `ioconnect attest --json` wraps the request with the board's address: the
    # signer is held to it as to --address (and to --address/--did too, if given).
    obj = _json_object(data) if data.lstrip().startswith(b"{") else None
    if obj is None or not isinstance(obj.get("request"), str) or "address" not in obj:
        return claim
    return merge_claims(claim, stated_claim(obj["address"], "the input's address"))


def verify_bytes(
    data: bytes,
    *,
    kind: Kind | None = None,
    claim: Claim | None = None,
    signed_keys: tuple[str, ...] = (),
) -> Verdict:
    """Verify one message given as bytes (a file's content).

    Args:
        data: the message.
        kind: what it is (None: detect).
        claim: the identity that should have signed it.
        signed_keys: a W3bstream project's signed keys.

    Returns:
        The verdict; ``valid`` False says why in ``reason``.

    Raises:
        MalformedError: the input is not a message of that kind.
    """
    if len(data) > MAX_INPUT:
        raise MalformedError(f"input is {len(data)} bytes, more than {MAX_INPUT}")
    kind = kind or detect(data)
    claim = _with_stated_signer(data, claim)
    if kind == "cose":
        obj = _json_object(data) if data.lstrip().startswith(b"{") else None
        if obj is not None:
            token = obj.get("token")
            if not isinstance(token, str):
                raise MalformedError("COSE: 'token' must be hex text")
            data = token.encode()
        return verify_cose(_unhex(data), claim)
    if kind == "frame":
        return verify_frame(_frame_object(data), claim, signed_keys)
    obj = _json_object(data)
    if obj is None:
        raise MalformedError(f"a {kind} message is a JSON object")
    if isinstance(obj.get("request"), str) and kind in ("w3bstream", "sprout"):
        data = obj["request"].encode()
        obj = _json_object(data) or {}
    if kind == "w3bstream":
        return verify_task(data.strip(), claim, signed_keys)
    if kind == "sprout":
        return verify_sprout(obj, claim)
    if kind == "ioid":
        return verify_ioid_permit(obj, claim)
    return verify_eip191(obj, claim)
