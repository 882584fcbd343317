"""Verify a W3bstream ``POST /v1/task`` request the way the apinode does.

Independent of the device code: the signed bytes are rebuilt here from the
request (Go's ``json.Marshal`` rules, see PROTOCOLS.md), hashed with hashlib,
and the signer recovered with libsecp256k1 (coincurve) for v = 0 and 1, as the
node does. The relay and the local node both use it.

The parser is stricter than upstream where upstream is ambiguous (duplicate
keys, a numeric-string nonce, control characters in projectVersion): our
devices never send those, and a forger gains nothing from them.

Example:
    >>> task = parse_task(body)
    >>> task.nonce, task.project_id
    (7, '42')
    >>> recover_signers(task)          # both candidate addresses, v = 0 and 1
    ('0xb700...', '0x3c1e...')
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import struct
from dataclasses import dataclass

import coincurve
from Crypto.Hash import keccak

from .errors import IoconnectError

__all__ = [
    "MAX_BODY",
    "Task",
    "TaskError",
    "address_of",
    "go_compact",
    "go_string",
    "keccak256",
    "parse_task",
    "recover_signers",
    "signed_by",
    "signed_bytes",
    "task_digest",
    "task_id",
]

#: Largest request body accepted (bytes). A sensor reading is a few hundred.
MAX_BODY = 64 * 1024
_MAX_DEPTH = 10000  # Go's scanner limit
_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


class TaskError(IoconnectError):
    """A request that W3bstream (or our stricter relay) refuses; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def keccak256(data: bytes) -> bytes:
    """Original Keccak-256 (pad 0x01), as Ethereum uses."""
    return keccak.new(digest_bits=256, data=data).digest()


def address_of(public_key: bytes) -> str:
    """``0x`` address (lowercase) of a secp256k1 public key (33 or 65 bytes)."""
    return _address(coincurve.PublicKey(public_key).format(compressed=False))


# A relay sees the same few thousand keys again and again: keep their addresses
# (a keccak256 each) rather than hash every reading's recovered key anew.
@functools.lru_cache(maxsize=16384)
def _address(uncompressed: bytes) -> str:
    return "0x" + keccak256(uncompressed[1:])[-20:].hex()


# --- Go's JSON grammar (json.Valid) and json.Marshal(RawMessage) ------------------

# A string as Go's scanner takes it: no raw control characters, valid escapes;
# any other byte (UTF-8 or not) is kept.
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_WS = re.compile(rb"[ \t\r\n]*")
_LITERALS = (b"true", b"false", b"null")
# What Go's compact escapes (escapeHTML on), inside strings.
_HTML = re.compile(rb"[<>&]|\xe2\x80[\xa8\xa9]")


def _html_escape(m: re.Match[bytes]) -> bytes:
    b = m.group()
    cp = ord(b.decode()) if len(b) == 3 else b[0]
    return b"\\u%04x" % cp


class _Scan:
    """One pass over a JSON text: validates it and yields its compact form."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.out = bytearray()

    def _ws(self, i: int) -> int:
        m = _WS.match(self.raw, i)
        return m.end() if m else i

    def value(self, i: int, depth: int) -> int:
        """Compact the value at ``i`` (after blanks) into ``out``; return its end."""
        raw = self.raw
        i = self._ws(i)
        if i >= len(raw):
            raise ValueError("unexpected end of JSON input")
        c = raw[i]
        if c == 0x22:
            m = _STRING.match(raw, i)
            if not m:
                raise ValueError(f"invalid string at offset {i}")
            self.out += _HTML.sub(_html_escape, m.group())
            return m.end()
        if c in b"{[":
            if depth >= _MAX_DEPTH:
                raise ValueError("exceeded max depth")
            close = c + 2
            self.out.append(c)
            i = self._ws(i + 1)
            if i < len(raw) and raw[i] == close:
                self.out.append(close)
                return i + 1
            while True:
                if c == 0x7B:
                    i = self._ws(i)
                    if i >= len(raw) or raw[i] != 0x22:
                        raise ValueError(f"expected a key at offset {i}")
                    i = self.value(i, depth + 1)
                    i = self._ws(i)
                    if i >= len(raw) or raw[i] != 0x3A:
                        raise ValueError(f"expected ':' at offset {i}")
                    self.out.append(0x3A)
                    i += 1
                i = self._ws(self.value(i, depth + 1))
                if i < len(raw) and raw[i] == 0x2C:
                    self.out.append(0x2C)
                    i += 1
                    continue
                if i < len(raw) and raw[i] == close:
                    self.out.append(close)
                    return i + 1
                raise ValueError(f"expected ',' or '{chr(close)}' at offset {i}")
        m = _NUMBER.match(raw, i)
        if m and m.end() > i:
            self.out += m.group()
            return m.end()
        for lit in _LITERALS:
            if raw.startswith(lit, i):
                self.out += lit
                return i + len(lit)
        raise ValueError(f"invalid character {chr(c)!r} at offset {i}")


# --- fast paths: Python's C JSON scanner where it agrees with Go's grammar ---------
#
# On ASCII text with NaN/Infinity refused, every value Python's json scanner
# takes is one Go's json.Valid takes (same number, string, escape and blank
# rules; Python's recursion limit, below Go's depth 10000, only refuses more).
# So a text it takes needs no pass of the (slow, pure Python) _Scan; anything
# else, and every error message, goes to _Scan.


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_VALUE = json.JSONDecoder(parse_constant=_no_constant).raw_decode
_NOT_COMPACT = re.compile(rb"[ \t\n\r<>&]")  # in ASCII text, the only bytes Go compacts


def _fast_value_end(text: str, i: int) -> int | None:
    """End of the valid JSON value at ``text[i]`` (no blank before it), or None."""
    try:
        return int(_VALUE(text, i)[1])
    except (ValueError, RecursionError):
        return None


def _fast_compact(raw: bytes) -> bytes | None:
    if not raw.isascii() or _NOT_COMPACT.search(raw):
        return None
    return raw if _fast_value_end(raw.decode("ascii"), 0) == len(raw) else None


def _skip_blanks(raw: bytes, i: int) -> int:
    m = _WS.match(raw, i)
    return m.end() if m else i


def _fast_members(body: bytes) -> list[tuple[str, bytes]] | None:
    """The members of an ASCII JSON object body, validated; None: ask _Scan."""
    if not body.isascii():
        return None
    text = body.decode("ascii")
    out: list[tuple[str, bytes]] = []
    i = _skip_blanks(body, 0)
    if body[i : i + 1] != b"{":
        return None
    i = _skip_blanks(body, i + 1)
    if body[i : i + 1] == b"}":
        return out if _skip_blanks(body, i + 1) == len(body) else None
    while True:
        key = _STRING.match(body, i)
        if key is None:
            return None
        i = _skip_blanks(body, key.end())
        if body[i : i + 1] != b":":
            return None
        i = _skip_blanks(body, i + 1)
        end = _fast_value_end(text, i)
        if end is None:
            return None
        name = key.group()
        out.append((json.loads(name) if b"\\" in name else name[1:-1].decode(), body[i:end]))
        i = _skip_blanks(body, end)
        sep = body[i : i + 1]
        if sep == b"}":
            return out if _skip_blanks(body, i + 1) == len(body) else None
        if sep != b",":
            return None
        i = _skip_blanks(body, i + 1)


def go_compact(raw: bytes) -> bytes:
    """Go's ``json.Marshal(json.RawMessage(raw))``: blanks outside strings removed,
    ``<>&`` and U+2028/2029 escaped, everything else kept byte for byte.

    Raises:
        ValueError: ``raw`` is not valid JSON by Go's grammar (json.Valid).
    """
    fast = _fast_compact(raw)  # a device's compact ASCII JSON: already Go's form
    if fast is not None:
        return fast
    scan = _Scan(raw)
    end = scan._ws(scan.value(0, 0))
    if end != len(raw):
        raise ValueError(f"invalid character after top-level value at offset {end}")
    return bytes(scan.out)


def _go_valid(raw: bytes) -> bool:
    try:
        go_compact(raw)
    except ValueError:
        return False
    return True


_STR_ESC = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}


def go_string(text: str) -> bytes:
    """Go's ``json.Marshal(string)`` (escapeHTML on) of valid text.

    Raises:
        ValueError: text holds \\b or \\f (Go versions before and after 1.22
            encode them differently) or a lone surrogate.
    """
    if "\b" in text or "\f" in text:
        raise ValueError("text holds \\b or \\f, which Go versions encode differently")
    out = bytearray(b'"')
    for ch in text:
        cp = ord(ch)
        if cp < 0x20 or ch in "<>&\u2028\u2029":
            out += _STR_ESC.get(cp) or b"\\u%04x" % cp
        elif cp in (0x22, 0x5C):
            out += _STR_ESC[cp]
        else:
            out += ch.encode("utf-8")  # raises on a lone surrogate
    out.append(0x22)
    return bytes(out)


# --- the request --------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A parsed ``POST /v1/task`` body (``body`` kept byte for byte for forwarding)."""

    body: bytes
    nonce: int
    project_id: str
    project_version: str
    payload: bytes  # raw JSON text, or the bytes the hex string decodes to
    payload_is_hex: bool
    signature: bytes  # 64 bytes r||s


def _members(body: bytes) -> list[tuple[str, bytes]]:
    """Top-level ``(key, raw value)`` pairs of a JSON object body, in order."""
    fast = _fast_members(body)
    return fast if fast is not None else _scanned_members(body)


def _scanned_members(body: bytes) -> list[tuple[str, bytes]]:
    import json

    scan = _Scan(body)
    i = scan._ws(0)
    if i >= len(body) or body[i] != 0x7B:
        raise TaskError("malformed", "request body is not a JSON object")
    try:
        end = scan._ws(scan.value(i, 0))
    except ValueError as exc:
        raise TaskError("malformed", f"request body is not JSON: {exc}") from None
    if end != len(body):
        raise TaskError("malformed", "request body has bytes after the JSON object")
    # Walk the (now known valid) object once more for the members' spans.
    out: list[tuple[str, bytes]] = []
    i = scan._ws(i + 1)
    while i < len(body) and body[i] != 0x7D:
        i = scan._ws(i)
        m = _STRING.match(body, i)
        if m is None:  # cannot happen: the object was validated above
            raise TaskError("malformed", f"expected a key at offset {i}")
        key = json.loads(m.group())
        i = scan._ws(scan._ws(m.end()) + 1)
        start = i
        i = _Scan(body).value(i, 1)
        out.append((key, body[start:i]))
        i = scan._ws(i)
        if body[i] == 0x2C:
            i += 1
    return out


_DIGITS = re.compile(r"[0-9]+")
_SIG = re.compile(r"0x[0-9a-fA-F]{128}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")  # bytes.fromhex alone would take blanks


def parse_task(body: bytes) -> Task:
    """Check a request body's size and schema and take it apart.

    Raises:
        TaskError: with ``reason`` ``oversize``, ``malformed`` or ``bad_field``.
    """
    import json

    if len(body) > MAX_BODY:
        raise TaskError("oversize", f"request is {len(body)} bytes, more than {MAX_BODY}")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise TaskError("malformed", "request body is not UTF-8") from None
    fields: dict[str, bytes] = {}
    for key, raw in _members(body):
        if key in fields:
            raise TaskError("malformed", f"request has the key {key!r} twice")
        fields[key] = raw
    for need in ("nonce", "projectID", "payload", "signature"):
        if need not in fields:
            raise TaskError("bad_field", f"request has no {need!r}")
    raw_nonce = fields["nonce"]
    if not re.fullmatch(rb"[1-9][0-9]*", raw_nonce) or int(raw_nonce) >= 1 << 64:
        raise TaskError("bad_field", "nonce must be an integer in 1..2^64-1")

    def text(name: str) -> str:
        raw = fields[name]
        if not raw.startswith(b'"'):
            raise TaskError("bad_field", f"{name} must be a string")
        try:
            value: str = json.loads(raw)
            value.encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            raise TaskError("bad_field", f"{name} is not valid text") from None
        return value

    project_id = text("projectID")
    if not _DIGITS.fullmatch(project_id):
        raise TaskError("bad_field", "projectID must be a decimal string")
    version = text("projectVersion") if "projectVersion" in fields else ""
    if any(ord(c) < 0x20 for c in version):
        raise TaskError("bad_field", "projectVersion holds control characters")
    sig_text = text("signature")
    if not _SIG.fullmatch(sig_text):
        raise TaskError("bad_field", "signature must be 0x and 64 bytes of hex (r||s)")
    raw_payload = fields["payload"]
    if raw_payload[:1] in (b"{", b"["):
        payload, is_hex = raw_payload, False
    elif raw_payload[:1] == b'"':
        hex_text = text("payload")
        if not _HEX.fullmatch(hex_text):
            raise TaskError("bad_field", "payload string is not hex")
        payload, is_hex = bytes.fromhex(hex_text), True
    else:
        raise TaskError("bad_field", "payload must be a JSON object, array or hex string")
    return Task(
        body=body,
        nonce=int(raw_nonce),
        project_id=project_id,
        project_version=version,
        payload=payload,
        payload_is_hex=is_hex,
        signature=bytes.fromhex(sig_text[2:]),
    )


def signed_bytes(task: Task) -> bytes:
    """What the device signed: Go's JSON of the request without its signature."""
    out = bytearray(b'{"nonce":%d,"projectID":' % task.nonce)
    out += go_string(task.project_id)
    if task.project_version:
        out += b',"projectVersion":' + go_string(task.project_version)
    out += b',"payload":'
    try:
        out += go_compact(task.payload)
    except ValueError:
        out += b'"' + task.payload.hex().encode() + b'"'
    out += b"}"
    return bytes(out)


def _key_uint(payload: bytes, path: str) -> int:
    import json

    doc: object = json.loads(payload, object_pairs_hook=lambda kv: dict(reversed(kv)))
    for part in path.split("."):  # the first duplicate wins: reversed() above
        if not isinstance(doc, dict) or part not in doc:
            raise TaskError("bad_field", f"signed key {path!r} is not in the payload")
        doc = doc[part]
    text = doc if isinstance(doc, str) else json.dumps(doc)
    if not isinstance(doc, (int, str)) or isinstance(doc, bool) or not _DIGITS.fullmatch(text):
        raise TaskError("bad_field", f"signed key {path!r} is not a uint64")
    value = int(text)
    if value >= 1 << 64:
        raise TaskError("bad_field", f"signed key {path!r} is not a uint64")
    return value


def task_digest(task: Task, signed_keys: tuple[str, ...] = ()) -> bytes:
    """sha256 of the signed bytes; with signed keys, sha256(h1 || each key as u64 LE).

    Raises:
        TaskError: signed keys with a payload that is not JSON (upstream would
            silently use a zero digest) or a key missing or not a uint64.
    """
    h1 = hashlib.sha256(signed_bytes(task)).digest()
    if not signed_keys:
        return h1
    if not _go_valid(task.payload):
        raise TaskError("bad_field", "signed keys need a JSON payload")
    parts = [h1] + [struct.pack("<Q", _key_uint(task.payload, k)) for k in signed_keys]
    return hashlib.sha256(b"".join(parts)).digest()


def recover_signers(task: Task, digest: bytes | None = None) -> tuple[str, str]:
    """The two addresses that signature recovery gives (v = 0, v = 1).

    Raises:
        TaskError: ``high_s`` (our devices sign low-S only) or ``bad_signature``.
    """
    digest = task_digest(task) if digest is None else digest
    found = [_recover(task, digest, v) for v in (0, 1)]
    if not any(found):
        raise TaskError("bad_signature", "no public key recovers from the signature")
    return found[0], found[1]


def signed_by(task: Task, address: str, digest: bytes | None = None) -> bool:
    """Whether ``address`` is one of :func:`recover_signers` (it stops at the first
    match: half the recoveries on average, for the relay, which knows the sender).

    Raises:
        TaskError: as :func:`recover_signers`.
    """
    digest = task_digest(task) if digest is None else digest
    recovered = False
    for v in (0, 1):
        found = _recover(task, digest, v)
        if found == address:
            return True
        recovered = recovered or bool(found)
    if not recovered:
        raise TaskError("bad_signature", "no public key recovers from the signature")
    return False


def _recover(task: Task, digest: bytes, v: int) -> str:
    """The address recovery with ``v`` gives, or "" when none does."""
    if int.from_bytes(task.signature[32:], "big") > _SECP256K1_HALF_N:
        raise TaskError("high_s", "signature is high-S (devices sign low-S)")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            task.signature + bytes([v]), digest, hasher=None
        )
    except ValueError:
        return ""
    return _address(pub.format(compressed=False))


def task_id(task: Task) -> str:
    """The taskID upstream answers: keccak256(r||s||0x01) (its slice-aliasing quirk)."""
    return "0x" + keccak256(task.signature + b"\x01").hex()
