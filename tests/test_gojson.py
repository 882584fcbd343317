"""ioconnect.gojson on MicroPython against real Go encoding/json (tests/go/main.go)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from go.goref import go_reference, run_go
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from vectors import JSON_TEXT

# Device side: one hex input per line of cases.txt; per case print strict
# (go_marshal_raw), non-strict (Go-compatible validity) and string results.
DEVICE = r"""
import json, binascii
from ioconnect import gojson
def res(f, *a):
    try:
        return {"ok": binascii.hexlify(f(*a)).decode()}
    except gojson.GoJSONUnsupported as e:
        return {"unsupported": str(e)}
    except gojson.GoJSONError as e:
        return {"err": str(e)}
def lax(b):
    out = bytearray()
    gojson.compact_into(b, out, False)
    return out
with open("cases.txt") as f:
    for line in f:
        b = binascii.unhexlify(line.strip())
        print(json.dumps({"raw": res(gojson.go_marshal_raw, b), "lax": res(lax, b),
                          "str": res(gojson.go_marshal_string, b)}))
"""


def run_device_cases(device, tmp_path: Path, inputs: list[bytes]) -> list[dict]:
    (tmp_path / "cases.txt").write_text("".join(b.hex() + "\n" for b in inputs))
    out = device(DEVICE, fs_dir=tmp_path)
    assert len(out) == len(inputs)
    return out


def utf8_ok(b: bytes) -> bool:
    try:
        b.decode("utf-8")  # CPython, like Go, rejects surrogates and overlongs
        return True
    except UnicodeDecodeError:
        return False


def check_against_go(device, tmp_path: Path, inputs: list[bytes]) -> None:
    binary, version = go_reference()
    go = run_go(
        binary,
        [{"op": "raw", "hex": b.hex()} for b in inputs]
        + [{"op": "str", "hex": b.hex()} for b in inputs],
    )
    go_raw, go_str = go[: len(inputs)], go[len(inputs) :]
    dev = run_device_cases(device, tmp_path, inputs)
    for b, d, gr, gs in zip(inputs, dev, go_raw, go_str, strict=True):
        ctx = f"input {b!r}: device {d}, Go raw {gr}, Go str {gs}"
        # Go-compatible mode: accepted exactly when Go accepts, same bytes.
        assert ("ok" in d["lax"]) == ("ok" in gr), ctx
        if "ok" in gr:
            assert d["lax"]["ok"] == gr["ok"], ctx
        # Strict mode: the same, except invalid UTF-8 is refused as unsupported
        # (bad JSON that also has bad UTF-8 may get either error).
        if "ok" not in gr:
            assert "ok" not in d["raw"], ctx
        elif utf8_ok(b):
            assert d["raw"] == d["lax"], ctx
        else:
            assert "unsupported" in d["raw"], ctx
        # Go 1.22+ writes \b and \f as short escapes; the device emulates
        # Go <= 1.21 (\u0008, \u000c), so compare those only on an older Go.
        if version < (1, 22) or not (b"\x08" in b or b"\x0c" in b):
            assert d["str"] == gs, ctx


def mutate(b: bytes, rnd: random.Random) -> bytes:
    """Truncate, insert, replace or delete one byte: mostly invalid JSON."""
    if not b:
        return bytes([rnd.randrange(256)])
    i = rnd.randrange(len(b))
    kind = rnd.randrange(4)
    junk = bytes([rnd.choice(b'{}[]",:\\ 0-e.tfn\x00\x1f\x80\xc3\xe2\xed\xff<')])
    if kind == 0:
        return b[:i]
    if kind == 1:
        return b[:i] + junk + b[i:]
    if kind == 2:
        return b[:i] + junk + b[i + 1 :]
    return b[:i] + b[i + 1 :]


HAND = [
    b' { "a" : [1, 2.50, -0, 1e3, 1E+3, 0.0e-0] , "<b>&" : "x\xe2\x80\xa8y\xe2\x80\xa9" } ',
    b'"<script>&amp;</script>"',
    b'{"a":"\\u00e9\\/\\u2028\\uD83D\\uDE00","a":2}',  # existing escapes and a duplicate key
    '{"k":"é€😀","n":null,"t":true,"f":false}'.encode(),
    b"[]",
    b"{}",
    b"[ ]",
    b"{ }",
    b" 0 ",
    b"-0",
    b"1.50",
    b"\t\r\n[\t1\r,\n2 ]\n",
    b'"\\ud800"',  # lone surrogate escape: Go keeps it
    # invalid
    b"",
    b"   ",
    b"[1,]",
    b"{,}",
    b'{"a" 1}',
    b'{"a":1,}',
    b"[1 2]",
    b"01",
    b"1.",
    b".5",
    b"1e",
    b"-",
    b"+1",
    b"tru",
    b"nul",
    b"True",
    b"[1]x",
    b"[1] [2]",
    b'"\\x"',
    b'"\\u12g4"',
    b'"a\x01b"',
    b'"unterminated',
    b"{'a':1}",
    b"[1,2",
    b'{"a":1',
    b"NaN",
    b"\xef\xbb\xbf{}",
    b"\x0b1",
    b"\x0c1",
    b"[\xa0]",
    # bytes Go accepts in strings but that are not UTF-8 (strict mode refuses)
    b'"\xff"',
    b'"\xc0\x80"',
    b'"\xed\xa0\x80"',
    b'"\xe2\x80"',
    b'["\xe2\xe2\x80\xa8"]',
    b'"\xf4\x90\x80\x80"',
    # nesting at the device bound (64); past it: test_depth_bound
    b"[" * 64 + b"]" * 64,
]


def test_hand_cases_match_go(device, tmp_path):
    check_against_go(device, tmp_path, HAND)


def test_depth_bound(device, tmp_path):
    dev = run_device_cases(
        device, tmp_path, [b"[" * 64 + b"]" * 64, b'{"a":' * 65 + b"1" + b"}" * 65]
    )
    assert dev[0]["raw"] == {"ok": (b"[" * 64 + b"]" * 64).hex()}
    assert "unsupported" in dev[1]["raw"] and "nesting" in dev[1]["raw"]["unsupported"]


# Each example is one batch (one Go and one VM run); Hypothesis's first example
# is the trivial one, so a few examples of moderate size; no shrinking.
@settings(
    max_examples=5, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)
@given(docs=st.lists(JSON_TEXT, min_size=40, max_size=40), seed=st.integers(0, 2**32))
def test_generated_json_matches_go(device, tmp_path_factory, docs, seed):
    rnd = random.Random(seed)
    mutated = [mutate(d, rnd) for d in docs for _ in range(2)]
    strings = [rnd.randbytes(rnd.randrange(12)) for _ in range(10)]
    check_against_go(device, tmp_path_factory.mktemp("gojson"), docs + mutated + strings)


@pytest.mark.parametrize(
    "text, expected",
    [
        # Published behaviour of Go's json.Marshal on RawMessage / strings.
        (b'{"a": "<&>"}', b'{"a":"\\u003c\\u0026\\u003e"}'),
        (b"[1.50, 1e3, -0]", b"[1.50,1e3,-0]"),
    ],
)
def test_known_outputs(device, tmp_path, text, expected):
    dev = run_device_cases(device, tmp_path, [text])
    assert dev[0]["raw"] == {"ok": expected.hex()}
