"""Device encodings (hex, base64url, base58btc, bech32) vs independent host libraries."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import base58
import bech32
from conftest import RunDevice
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Each case [op, arg]; prints ["ok", result] or ["err", error class, message].
ENCODE_ON_DEVICE = """
import json
from ioconnect import encoding as e
ops = {
    "to_hex": lambda a: e.to_hex(bytes.fromhex(a)),
    "from_hex": lambda a: e.from_hex(a).hex(),
    "b64e": lambda a: e.b64url_encode(bytes.fromhex(a)),
    "b64d": lambda a: e.b64url_decode(a).hex(),
    "b58e": lambda a: e.b58encode(bytes.fromhex(a)),
    "b58d": lambda a: e.b58decode(a).hex(),
    "io": lambda a: e.bech32_address("io", bytes.fromhex(a)),
    "io_dec": lambda a: e.bech32_address_decode("io", a).hex(),
    "b32d": lambda a: [e.bech32_decode(a)[0], list(e.bech32_decode(a)[1])],
}
for op, arg in json.load(open("cases.json")):
    try:
        print(json.dumps(["ok", ops[op](arg)]))
    except e.EncodingError as x:
        print(json.dumps(["err", type(x).__name__, str(x)]))
"""

SETTINGS = settings(
    max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run(device: RunDevice, cases: list[list[str]]) -> list[list[Any]]:
    out = device(ENCODE_ON_DEVICE, cases)
    assert len(out) == len(cases)
    return out


def host_b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def host_io(addr: bytes) -> str:
    five = bech32.convertbits(list(addr), 8, 5)
    assert five is not None
    out = bech32.bech32_encode("io", five)
    assert out is not None
    return out


@SETTINGS
@given(
    blobs=st.lists(
        st.one_of(
            st.binary(max_size=80),
            # leading zero bytes are the base58 special case
            st.builds(lambda z, b: b"\x00" * z + b, st.integers(0, 4), st.binary(max_size=40)),
        ),
        min_size=60,
        max_size=60,
    ),
    addrs=st.lists(st.binary(min_size=20, max_size=20), min_size=20, max_size=20),
)
def test_round_trips_match_host_libraries(
    device: RunDevice, blobs: list[bytes], addrs: list[bytes]
) -> None:
    cases: list[list[str]] = []
    expect: list[str] = []
    for b in blobs:
        cases += [
            ["to_hex", b.hex()],
            ["from_hex", "0x" + b.hex().upper()],
            ["b64e", b.hex()],
            ["b64d", host_b64url(b)],
            ["b58e", b.hex()],
            ["b58d", base58.b58encode(b).decode()],
        ]
        expect += [
            binascii.hexlify(b).decode(),
            b.hex(),
            host_b64url(b),
            b.hex(),
            base58.b58encode(b).decode(),
            b.hex(),
        ]
    for a in addrs:
        cases += [["io", a.hex()], ["io_dec", host_io(a)], ["io_dec", host_io(a).upper()]]
        expect += [host_io(a), a.hex(), a.hex()]
    for (op, arg), got, want in zip(cases, run(device, cases), expect, strict=True):
        assert got == ["ok", want], (op, arg)


def test_published_vectors(device: RunDevice) -> None:
    addr = "b7009dd6858c73df7ce1a9edc47fbd5688b82f22"
    io = "io1kuqfm45933ea7l8p48kuglaa26ytstezs2lrts"
    # BIP-173 valid bech32 strings (HRP + data, checksum only).
    bip173 = [
        "A12UEL5L",
        "a12uel5l",
        "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
        "11" + "q" * 82 + "c8247j",
        "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
        "?1ezyfcl",
    ]
    cases = [["io", addr], ["io_dec", io], ["from_hex", "0x" + addr.upper()]]
    cases += [["b32d", s] for s in bip173]
    # did:key multibase body of the PROTOCOLS.md secp256k1 key decodes to e7 01 || 33 bytes.
    cases.append(["b58d", "Q3shhLPYLN3Dz9WiccYZ6yeDrB3WPt6MCJQWPzM76UADSA8h"])
    # RFC 4648 section 10 vectors, url alphabet, no padding.
    rfc = [b"", b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"]
    cases += [["b64e", v.hex()] for v in rfc]
    out = run(device, cases)
    assert out[0] == ["ok", io]
    assert out[1] == ["ok", addr]
    assert out[2] == ["ok", addr]
    for s, got in zip(bip173, out[3:10], strict=True):
        hrp, data = bech32.bech32_decode(s)
        assert got == ["ok", [hrp, data]], s
    body = bytes.fromhex(out[10][1])
    assert body[:2] == b"\xe7\x01" and len(body) == 35 and body[2] in (2, 3)
    assert [o[1] for o in out[11:]] == ["", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"]


def test_invalid_inputs_are_rejected_with_a_reason(device: RunDevice) -> None:
    io = "io1kuqfm45933ea7l8p48kuglaa26ytstezs2lrts"
    bad = [
        ["from_hex", "abc"],  # odd length
        ["from_hex", "zz"],
        ["b64d", "Zm9v="],  # padding not allowed
        ["b64d", "Zm+v"],  # standard alphabet
        ["b64d", "Zm9vY"],  # impossible length
        ["b64d", "Zh"],  # non-zero trailing bits ("Zg" is canonical)
        ["b58d", "0OIl"],
        # BIP-173 invalid strings
        ["b32d", "pzry9x0s0muk"],  # no separator
        ["b32d", "1pzry9x0s0muk"],  # empty HRP
        ["b32d", "x1b4n0q5v"],  # invalid data character
        ["b32d", "li1dgmt3"],  # too short checksum
        ["b32d", "A1G7SGD8"],  # checksum of uppercase HRP computed wrong
        ["b32d", "10a06t8"],
        ["b32d", "1qzzfhee"],
        ["io_dec", io[:-1] + ("s" if io[-1] != "s" else "t")],  # checksum
        ["io_dec", io[:5] + io[5:].upper()],  # mixed case
        ["io_dec", host_io(bytes(20)).replace("io1", "iq1", 1)],  # wrong prefix (and checksum)
        ["io_dec", bech32.bech32_encode("io", [1] * 33) or ""],  # 33 groups: non-zero padding
    ]
    out = run(device, bad)
    for case, got in zip(bad, out, strict=True):
        assert got[0] == "err" and got[1] == "EncodingError" and got[2], (case, got)
