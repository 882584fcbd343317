"""Host-side W3bstream verification (ioconnect_host.w3bstream), judged by real Go
(tests/go: encoding/json and the apinode's hashing) and by signatures the device
makes on the MicroPython VM; never by the device's own hashing code."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import coincurve
import pytest
from go.goref import go_reference, run_go
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from ioconnect_host import w3bstream as w3b

PRIV = bytes.fromhex("449e725560cd54b853e0825662b8d5c8fcb4e0516fe5a0a1509df4c4b9484d87")
ADDRESS = "0xb7009dd6858c73df7ce1a9edc47fbd5688b82f22"  # PROTOCOLS.md
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# JSON texts with Go's edge cases: blanks, escapes, HTML characters, U+2028,
# number spellings, duplicate keys, deep nesting, raw UTF-8.
_SCALARS = st.sampled_from(
    [
        b"0",
        b"-0",
        b"1.50",
        b"1e3",
        b"-1E-7",
        b"true",
        b"null",
        b'"\\u00e9\\/"',
        b'"<a&b>"',
        '"\u2028é😀"'.encode(),
        b'"\\ud83d\\ude00"',
        b'""',
    ]
)


def _json_text(draw_obj: Any, ws: str) -> bytes:
    return json.dumps(draw_obj, ensure_ascii=False, separators=("," + ws, ":" + ws)).encode()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
JSON_TEXT = (
    st.builds(_json_text, JSON_VALUES, st.sampled_from(["", " ", "\n\t", "\r\n  "]))
    | _SCALARS
    | st.builds(lambda a, b: b'{"k":' + a + b' , "k" : ' + b + b"}", _SCALARS, _SCALARS)
)
ANY_BYTES = (
    JSON_TEXT
    | st.binary(max_size=30)
    | st.sampled_from(
        [b"[1,]", b'{"a" 1}', b"01", b"1.", b'"\x01"', b'"\\x"', b"[" * 3 + b"]" * 3, b" "]
    )
)

BATCH = settings(
    max_examples=300,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@given(st.lists(ANY_BYTES, min_size=200, max_size=200))
@BATCH
def test_go_compact_matches_go(batch: list[bytes]) -> None:
    binary, _ = go_reference()
    want = run_go(binary, [{"op": "raw", "hex": b.hex()} for b in batch])
    for raw, go in zip(batch, want, strict=True):
        if "err" in go:
            with pytest.raises(ValueError):
                w3b.go_compact(raw)
        else:
            assert w3b.go_compact(raw).hex() == go["ok"], raw


@given(st.lists(st.text(max_size=12), min_size=100, max_size=100))
@BATCH
def test_go_string_matches_go(batch: list[str]) -> None:
    binary, _ = go_reference()
    batch = [s for s in batch if "\b" not in s and "\f" not in s]
    cases = [{"op": "str", "hex": s.encode("utf-8", "surrogatepass").hex()} for s in batch]
    for s, go in zip(batch, run_go(binary, cases), strict=True):
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                w3b.go_string(s)
            continue
        assert w3b.go_string(s).hex() == go["ok"], s


def _sign(signed: bytes, *, high_s: bool = False) -> bytes:
    sig = coincurve.PrivateKey(PRIV).sign_recoverable(hashlib.sha256(signed).digest(), hasher=None)
    r, s = sig[:32], int.from_bytes(sig[32:64], "big")
    if high_s != (s > N // 2):
        s = N - s
    return r + s.to_bytes(32, "big")


def _body(nonce: Any, pid: Any, payload: bytes, sig: bytes, pver: str | None = None) -> bytes:
    parts = [b'"nonce": ' + json.dumps(nonce).encode(), b'"projectID": ' + json.dumps(pid).encode()]
    if pver is not None:
        parts.append(b'"projectVersion": ' + json.dumps(pver).encode())
    parts += [b'"payload": ' + payload, b'"signature": "0x' + sig.hex().encode() + b'"']
    return b"{ " + b", ".join(parts) + b" }"


@given(
    st.lists(
        st.tuples(
            JSON_TEXT | st.binary(min_size=1, max_size=20), st.sampled_from(["", "v1", "<é>"])
        ),
        min_size=60,
        max_size=60,
    )
)
@BATCH
def test_signed_bytes_and_digest_match_the_apinode(batch: list[tuple[bytes, str]]) -> None:
    """Bodies with blanks and hex payloads, hashed by Go's apinode logic."""
    binary, _ = go_reference()
    rnd = random.Random(len(batch))
    cases, bodies = [], []
    for i, (payload, pver) in enumerate(batch, start=1):
        raw_json = payload[:1] in (b"{", b"[") and w3b._go_valid(payload)
        field = payload if raw_json else json.dumps(payload.hex()).encode()
        sig = rnd.randbytes(32) + (1).to_bytes(32, "big")
        body = _body(i, str(1000 + i), field, sig, pver or None)
        bodies.append(body)
        cases.append({"op": "server_task", "hex": body.hex(), "keys": []})
    for body, go in zip(bodies, run_go(binary, cases), strict=True):
        task = w3b.parse_task(body)
        assert w3b.signed_bytes(task).hex() == go["ok"]["signed"], body
        assert w3b.task_digest(task).hex() == go["ok"]["digest"]


def test_signed_keys_digest_matches_the_apinode() -> None:
    binary, _ = go_reference()
    payload = b'{"timestamp": 1700000000, "t": 21.5, "n": {"seq": "42"}, "timestamp": 5}'
    body = _body(3, "7", payload, _sign(b"x"))
    keys = ["timestamp", "n.seq"]
    (go,) = run_go(binary, [{"op": "server_task", "hex": body.hex(), "keys": keys}])
    task = w3b.parse_task(body)
    assert w3b.task_digest(task, tuple(keys)).hex() == go["ok"]["digest"]


def test_signed_keys_with_a_hex_payload_are_refused() -> None:
    """Upstream would use 32 zero bytes as the digest; we refuse."""
    task = w3b.parse_task(_body(3, "7", b'"abcd"', _sign(b"x")))
    with pytest.raises(w3b.TaskError, match="signed keys need a JSON payload"):
        w3b.task_digest(task, ("timestamp",))


DEVICE_SIGN = r"""
import json, hashlib, binascii
from ioconnect import ecdsa, profiles
class K:
    curve = "secp256k1"
    def sign_digest(self, d):
        return ecdsa.sign_digest(ecdsa.SECP256K1, 0xPRIV, d)
with open("cases.json") as f:
    cases = json.load(f)
for c in cases:
    body = profiles.w3bstream_task(K(), c[0], c[1], binascii.unhexlify(c[2]), c[3])
    print(json.dumps(binascii.hexlify(body).decode()))
""".replace("PRIV", PRIV.hex())


def test_device_signed_requests_recover_to_the_device(device: Any) -> None:
    payloads = [
        b'{"t": 21.5, "h": 40}',
        b"[1, 2, 3]",
        b"\x00\x01binary",
        b'"text"',
        b"12",
        '{"emoji": "😀", "tag": "<&>", "sep": "\u2028"}'.encode(),
    ]
    cases = [[i + 1, "42", p.hex(), "v1" if i % 2 else ""] for i, p in enumerate(payloads)]
    bodies = [bytes.fromhex(h) for h in device(DEVICE_SIGN, cases)]
    binary, _ = go_reference()
    go = run_go(binary, [{"op": "server_task", "hex": b.hex(), "keys": []} for b in bodies])
    for body, want in zip(bodies, go, strict=True):
        task = w3b.parse_task(body)
        assert w3b.signed_bytes(task).hex() == want["ok"]["signed"]
        assert ADDRESS in w3b.recover_signers(task)
        assert w3b.task_id(task) == "0x" + w3b.keccak256(task.signature + b"\x01").hex()


def test_forged_and_high_s_signatures() -> None:
    payload = b'{"t":1}'
    signed = b'{"nonce":1,"projectID":"42","payload":{"t":1}}'
    good = w3b.parse_task(_body(1, "42", payload, _sign(signed)))
    assert ADDRESS in w3b.recover_signers(good)
    # The same signature over another reading recovers to somebody else.
    forged = w3b.parse_task(_body(1, "42", b'{"t":2}', _sign(signed)))
    assert ADDRESS not in w3b.recover_signers(forged)
    high = w3b.parse_task(_body(1, "42", payload, _sign(signed, high_s=True)))
    with pytest.raises(w3b.TaskError) as err:
        w3b.recover_signers(high)
    assert err.value.reason == "high_s"
    # signed_by (the relay's: it knows whom to expect) says the same, v 0 or 1.
    v0, v1 = w3b.recover_signers(forged)
    assert (w3b.signed_by(good, ADDRESS), w3b.signed_by(forged, ADDRESS)) == (True, False)
    assert w3b.signed_by(forged, v0) and w3b.signed_by(forged, v1)
    with pytest.raises(w3b.TaskError) as err:
        w3b.signed_by(high, ADDRESS)
    assert err.value.reason == "high_s"
    nothing = w3b.parse_task(_body(1, "42", payload, bytes(64)))  # r = 0: no key recovers
    for check in (w3b.recover_signers, lambda t: w3b.signed_by(t, ADDRESS)):
        with pytest.raises(w3b.TaskError) as err:
            check(nothing)
        assert err.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("body", "reason", "words"),
    [
        (b"[]", "malformed", "not a JSON object"),
        (b'{"nonce":1', "malformed", "not JSON"),
        (b'{"nonce":1} x', "malformed", "after the JSON object"),
        (b'\xff{"nonce":1}', "malformed", "not UTF-8"),
        (b"{}", "bad_field", "no 'nonce'"),
        (_body(0, "1", b"{}", bytes(64)), "bad_field", "nonce must be"),
        (_body("5", "1", b"{}", bytes(64)), "bad_field", "nonce must be"),
        (_body(2**64, "1", b"{}", bytes(64)), "bad_field", "nonce must be"),
        (_body(1, 7, b"{}", bytes(64)), "bad_field", "projectID must be a string"),
        (_body(1, "-7", b"{}", bytes(64)), "bad_field", "decimal string"),
        (_body(1, "7", b"12", bytes(64)), "bad_field", "payload must be"),
        (_body(1, "7", b'"ab cd"', bytes(64)), "bad_field", "not hex"),
        (_body(1, "7", b'"abc"', bytes(64)), "bad_field", "not hex"),
        (_body(1, "7", b"{}", bytes(64), "\x01"), "bad_field", "control characters"),
        (_body(1, "7", b"{}", bytes(65)), "bad_field", "64 bytes"),
        (b'{"nonce":1,"nonce":2}', "malformed", "twice"),
        (b'{"a":"' + b"x" * w3b.MAX_BODY + b'"}', "oversize", "more than"),
    ],
)
def test_bad_requests_get_their_reason(body: bytes, reason: str, words: str) -> None:
    with pytest.raises(w3b.TaskError) as err:
        w3b.parse_task(body)
    assert err.value.reason == reason
    assert words in str(err.value)


def test_body_is_kept_byte_for_byte(tmp_path: Path) -> None:
    body = _body(9, "42", b'{ "t" : 1 }', _sign(b"x"))
    assert w3b.parse_task(body).body is body


def _slow_compact(raw: bytes) -> bytes | None:
    scan = w3b._Scan(raw)
    try:
        end = scan._ws(scan.value(0, 0))
    except ValueError:
        return None
    return bytes(scan.out) if end == len(raw) else None


@given(st.lists(ANY_BYTES | st.builds(lambda v: b'{"v":' + v + b"}", ANY_BYTES), max_size=50))
@settings(max_examples=300, deadline=None)
def test_fast_paths_agree_with_the_full_scanner(batch: list[bytes]) -> None:
    """The C json fast paths (compact ASCII text, members of an ASCII object) give
    what the Go-grammar scanner gives, or step aside (None)."""
    for raw in batch:
        fast = w3b._fast_compact(raw)
        if fast is not None:
            assert fast == _slow_compact(raw), raw
        members = w3b._fast_members(raw)
        if members is not None:
            assert _slow_compact(raw) is not None, raw  # taken only if Go would take it
            assert w3b._scanned_members(raw) == members, raw
    for raw in (b'{"nonce":1,"payload":{"t":1}}', b"[1,2]", b'{"a":"<"}'):
        assert (w3b._fast_compact(raw) is not None) == (b"<" not in raw)
    assert w3b._fast_members(b'{"a":NaN}') is None and w3b._fast_compact(b"[Infinity]") is None
