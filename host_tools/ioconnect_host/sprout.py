"""Sprout ``POST /message`` (the W3bstream generation before ``/v1/task``).

Request (PROTOCOLS.md): ``{"projectID": N, "projectVersion": "…", "data": "…",
"signature": "0x…"}``. The server decodes it into a Go struct (projectID a
uint64; all four fields required, so none may be zero or empty), blanks the
signature, takes Go's ``json.Marshal`` of the rest as the signed bytes
(``{"projectID":N,"projectVersion":"…","data":"…"}``), hashes them with
keccak256 (no prefix) and recovers the signer from 65 bytes r||s||v, v ∈ {0, 1}.
It answers ``{"taskID": …}``.

Stricter than upstream where upstream is lenient and our devices never go:
duplicate keys (Go keeps the last) and keys matching a field only by case (Go
matches them) are refused, text must be valid UTF-8 (Go substitutes U+FFFD),
and the signature must be low-S (as our devices sign).

A message carries no nonce. The replay check is on what was signed: the same
signed bytes from the same device are one message (answered with its first
taskID, never stored twice), whatever signature bytes come with them.

Example:
    >>> msg = parse_message(body)
    >>> msg.project_id, signer(msg)
    (9, '0xb700…')
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import coincurve

from .w3bstream import TaskError, address_of, go_string, keccak256

__all__ = [
    "MAX_BODY",
    "SproutMessage",
    "data_nonce",
    "is_message",
    "message_id",
    "parse_message",
    "signed_bytes",
    "signer",
]

MAX_BODY = 64 * 1024
_FIELDS = ("projectID", "projectVersion", "data", "signature")
_UINT = re.compile(r"[1-9][0-9]{0,19}")
_SIG = re.compile(r"0x[0-9a-fA-F]{130}")
_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


@dataclass(frozen=True)
class SproutMessage:
    """A parsed sprout message (``body`` kept byte for byte for forwarding)."""

    body: bytes
    project_id: int
    project_version: str
    data: str
    signature: bytes  # 65 bytes r||s||v


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise TaskError("malformed", f"message has the key {key!r} twice")
        out[key] = value
    return out


def parse_message(body: bytes) -> SproutMessage:
    """Check a ``POST /message`` body and take it apart.

    Raises:
        TaskError: ``oversize``, ``malformed`` or ``bad_field`` (HTTP 400), or
            ``high_s`` / ``bad_signature``.
    """
    if len(body) > MAX_BODY:
        raise TaskError("oversize", f"message is {len(body)} bytes, more than {MAX_BODY}")
    try:
        obj = json.loads(body.decode("utf-8"), object_pairs_hook=_pairs)
    except UnicodeDecodeError:
        raise TaskError("malformed", "message is not UTF-8") from None
    except ValueError as err:
        if isinstance(err, TaskError):
            raise
        raise TaskError("malformed", f"message is not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise TaskError("malformed", "message is not a JSON object")
    for key in obj:
        near = [f for f in _FIELDS if f.lower() == key.lower() and f != key]
        if near:
            raise TaskError("malformed", f"key {key!r} matches {near[0]!r} only by case")
    for need in _FIELDS:
        if need not in obj:
            raise TaskError("bad_field", f"message has no {need!r}")
    pid = obj["projectID"]
    raw_pid = json.dumps(pid)
    if isinstance(pid, bool) or not isinstance(pid, int) or not _UINT.fullmatch(raw_pid):
        raise TaskError("bad_field", "projectID must be an integer in 1..2^64-1")
    if pid >= 1 << 64:
        raise TaskError("bad_field", "projectID must be an integer in 1..2^64-1")
    texts: dict[str, str] = {}
    for name in ("projectVersion", "data", "signature"):
        value = obj[name]
        if not isinstance(value, str) or not value:
            raise TaskError("bad_field", f"{name} must be a non-empty string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise TaskError("bad_field", f"{name} is not valid text") from None
        texts[name] = value
    if not _SIG.fullmatch(texts["signature"]):
        raise TaskError("bad_field", "signature must be 0x and 65 bytes of hex (r||s||v)")
    sig = bytes.fromhex(texts["signature"][2:])
    if sig[64] not in (0, 1):
        raise TaskError("bad_signature", "signature v must be 0 or 1")
    if int.from_bytes(sig[32:64], "big") > _HALF_N:
        raise TaskError("high_s", "signature is high-S (devices sign low-S)")
    msg = SproutMessage(body, pid, texts["projectVersion"], texts["data"], sig)
    signed_bytes(msg)  # text Go versions encode differently is refused here
    return msg


def signed_bytes(msg: SproutMessage) -> bytes:
    """Go's ``json.Marshal`` of the request struct with the signature blanked.

    Raises:
        TaskError: ``bad_field``, text holding \\b or \\f (Go versions differ).
    """
    try:
        version, data = go_string(msg.project_version), go_string(msg.data)
    except ValueError as err:
        raise TaskError("bad_field", str(err)) from None
    return b'{"projectID":%d,"projectVersion":%s,"data":%s}' % (msg.project_id, version, data)


def signer(msg: SproutMessage) -> str:
    """The address that signed ``msg`` (keccak256 of the signed bytes, v from the
    signature).

    Raises:
        TaskError: ``bad_signature``, no key recovers.
    """
    digest = keccak256(signed_bytes(msg))
    try:
        pub = coincurve.PublicKey.from_signature_and_message(msg.signature, digest, hasher=None)
    except ValueError:
        raise TaskError("bad_signature", "no public key recovers from the signature") from None
    return address_of(pub.format(compressed=False))


def message_id(msg: SproutMessage, device: str) -> str:
    """Our node's taskID for a sprout message: keccak256(device address || signed
    bytes). (Upstream derives its own from its task aggregation; a client only
    keeps it.) The same signed message from the same device has the same id."""
    return "0x" + keccak256(bytes.fromhex(device[2:]) + signed_bytes(msg)).hex()


def is_message(body: bytes) -> bool:
    """Whether a stored body (checked at ingest) is a sprout message rather than a
    ``/v1/task`` request: it has ``data`` and no ``payload``."""
    try:
        obj = json.loads(body)
    except ValueError:
        return False
    return isinstance(obj, dict) and "data" in obj and "payload" not in obj


def data_nonce(msg: SproutMessage) -> int:
    """The nonce a relayed sprout message carries in its data.

    Sprout's message has no nonce field; a relay needs one for its high-water
    mark and the device's ack, so our devices relay sprout messages whose data
    is a JSON object with ``"nonce": N`` (signed with the rest).

    Raises:
        TaskError: ``bad_field``, the data is not such an object.
    """
    try:
        obj = json.loads(msg.data)
    except ValueError:
        obj = None
    nonce = obj.get("nonce") if isinstance(obj, dict) else None
    if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 < nonce < 1 << 64:
        raise TaskError("bad_field", 'relayed sprout data must be a JSON object with "nonce": N')
    return nonce
