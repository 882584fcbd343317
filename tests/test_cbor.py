"""ioconnect.cbor on MicroPython against cbor2 and RFC 8949 vectors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import cbor2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# The device reads one hex CBOR item per line, decodes it, re-encodes it and
# prints a JSON rendering of the value ("rep"), or the error class and reason.
DEVICE = r"""
import json, binascii
from ioconnect import cbor
def rep(v):
    if v is None or v is True or v is False:
        return v
    if isinstance(v, int):
        return {"i": str(v)}
    if isinstance(v, bytes):
        return {"b": binascii.hexlify(v).decode()}
    if isinstance(v, str):
        return {"s": binascii.hexlify(v.encode()).decode()}
    if isinstance(v, list):
        return [rep(x) for x in v]
    if isinstance(v, dict):
        return {"m": [[rep(k), rep(x)] for k, x in v.items()]}
    if isinstance(v, cbor.Tag):
        return {"t": v.tag, "v": rep(v.value)}
    return {"?": repr(v)}
with open("cases.txt") as f:
    for line in f:
        data = binascii.unhexlify(line.strip())
        try:
            v = cbor.decode(data)
            print(json.dumps({"rep": rep(v), "enc": binascii.hexlify(cbor.encode(v)).decode()}))
        except cbor.CBORError as e:
            print(json.dumps({"err": str(e)}))
        except Exception as e:
            print(json.dumps({"bad": type(e).__name__ + ": " + str(e)}))
"""

ENCODE = r"""
import json, binascii
from ioconnect import cbor
big = 2 ** 64
for v in %s:
    try:
        print(json.dumps({"enc": binascii.hexlify(cbor.encode(v)).decode()}))
    except cbor.CBORError as e:
        print(json.dumps({"err": str(e)}))
"""


def rep(v: Any) -> Any:
    """Host rendering matching the device's (maps keep their encoded order)."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return {"i": str(v)}
    if isinstance(v, bytes):
        return {"b": v.hex()}
    if isinstance(v, str):
        return {"s": v.encode().hex()}  # hex: raw U+2028 etc. would split output lines
    if isinstance(v, list | tuple):
        return [rep(x) for x in v]
    if isinstance(v, dict):
        return {"m": sorted(([rep(k), rep(x)] for k, x in v.items()), key=json.dumps)}
    if isinstance(v, cbor2.CBORTag):
        return {"t": v.tag, "v": rep(v.value)}
    return {"?": repr(v)}


def norm(r: Any) -> Any:
    """Sort the pairs of every map in a device rendering (order-free compare)."""
    if isinstance(r, list):
        return [norm(x) for x in r]
    if isinstance(r, dict):
        if "m" in r:
            return {"m": sorted(([norm(k), norm(x)] for k, x in r["m"]), key=json.dumps)}
        if "v" in r:
            return {"t": r["t"], "v": norm(r["v"])}
    return r


def run_cases(device, tmp: Path, items: list[bytes]) -> list[dict[str, Any]]:
    (tmp / "cases.txt").write_text("".join(b.hex() + "\n" for b in items))
    out = device(DEVICE, fs_dir=tmp)
    assert len(out) == len(items)
    for d in out:
        if "rep" in d:
            d["rep"] = norm(d["rep"])
    return out


def has_tag(r: Any) -> bool:
    if isinstance(r, list):
        return any(has_tag(x) for x in r)
    if isinstance(r, dict):
        return "t" in r or any(has_tag(x) for x in r.values())
    return False


# --- generated values -------------------------------------------------------

INT = st.integers(-(2**64), 2**64 - 1) | st.sampled_from(
    [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -24, -25, -256, -257, -65537]
)
# Key kinds are kept apart inside one map: there, RFC 8949 bytewise order and
# cbor2's canonical (length-first, RFC 7049) order agree. Mixed keys: below.
KEY_KINDS = [
    st.integers(0, 2**64 - 1),
    st.integers(-(2**64), -1),
    st.text(max_size=30),
    st.binary(max_size=30),
]
SCALAR = INT | st.binary(max_size=40) | st.text(max_size=40) | st.booleans() | st.none()


def containers(children):
    maps = st.sampled_from(KEY_KINDS).flatmap(
        lambda keys: st.dictionaries(keys, children, max_size=5)
    )
    tags = st.builds(cbor2.CBORTag, st.integers(6, 20) | st.integers(2**16, 2**64 - 1), children)
    return st.lists(children, max_size=5) | maps | tags


VALUE = st.recursive(SCALAR, containers, max_leaves=15)


def canonical(v: Any) -> bytes:
    return cbor2.dumps(v, canonical=True)


# Each example is one batch (one VM run); Hypothesis's first example is the
# trivial one, so a few examples of moderate size; no shrinking.
BATCH = settings(
    max_examples=5, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)


@BATCH
@given(values=st.lists(VALUE, min_size=50, max_size=50))
def test_roundtrip_vs_cbor2(device, tmp_path_factory, values):
    # cbor2's default encoding keeps map insertion order: the device must
    # decode it as is and re-encode it deterministically as cbor2 canonical.
    dev = run_cases(device, tmp_path_factory.mktemp("cbor"), [cbor2.dumps(v) for v in values])
    for v, d in zip(values, dev, strict=True):
        assert "enc" in d, (v, d)
        assert d["rep"] == rep(v)
        assert d["enc"] == canonical(v).hex(), v


def test_mixed_key_order_is_bytewise(device, tmp_path):
    # RFC 8949 4.2.1 sorts by the bytes of the encoded keys; cbor2 canonical
    # sorts length-first (RFC 7049), so build the expectation from cbor2-
    # encoded pairs sorted bytewise.
    maps = [
        {100: 1, -1: 2},
        {"aa": 1, "b": 2, 1000: 3, 5: 4, b"\x00": 5, -500: 6},
        {b"zz": 0, "a": 0, 24: 0, -24: 0, -25: 0, 23: 0},
    ]
    items = [cbor2.dumps(m) for m in maps]
    dev = run_cases(device, tmp_path, items)
    for m, d in zip(maps, dev, strict=True):
        pairs = sorted(canonical(k) + canonical(v) for k, v in m.items())
        assert d["enc"] == (bytes([0xA0 | len(m)]) + b"".join(pairs)).hex()
    assert dev[0]["enc"] == "a2" + "186401" + "2002"  # 100 (0x18 0x64) before -1 (0x20)


RFC_VECTORS = [
    # RFC 8949 Appendix A
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
]


def test_rfc8949_vectors_and_boundaries(device, tmp_path):
    values: list[Any] = [v for v, _ in RFC_VECTORS]
    bounds = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
    values += bounds + [-1 - b for b in bounds]
    values += [b"x" * n for n in (23, 24, 255, 256, 1000)] + ["é" * 12, "y" * 24, "z" * 256]
    values += [[0] * n for n in (23, 24)] + [{i: i for i in range(24)}]
    expected = [h for _, h in RFC_VECTORS] + [
        canonical(v).hex() for v in values[len(RFC_VECTORS) :]
    ]
    src = "[" + ", ".join(_py(v) for v in values) + "]"
    out = device(ENCODE % src)
    assert [o.get("enc") for o in out] == expected
    # exact heads at the boundaries, independent of cbor2
    heads = {
        23: "17",
        24: "1818",
        255: "18ff",
        256: "190100",
        65535: "19ffff",
        65536: "1a00010000",
        2**32 - 1: "1affffffff",
        2**32: "1b0000000100000000",
    }
    for b, h in heads.items():
        assert out[values.index(b)]["enc"] == h


def _py(v: Any) -> str:
    """MicroPython source for a value (bytes/str/int/list/dict/bool/None)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_py(k)}: {_py(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_py(x) for x in v) + "]"
    return repr(v)


def test_encode_refuses(device):
    out = device(ENCODE % "[big, -big - 1, 1.5, {1, 2}, [[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]")
    assert all("err" in o for o in out), out
    assert "64-bit" in out[0]["err"] and "64-bit" in out[1]["err"]
    assert "float" in out[2]["err"] and "nesting" in out[4]["err"]


HOSTILE = {
    "9f01ff": "indefinite",  # indefinite array
    "5f4101ff": "indefinite",
    "bf6161 01ff": "indefinite",
    "0000": "trailing",
    "1901": "truncated",  # head needs two bytes, has one
    "19": "truncated",
    "": "truncated",
    "62c3": "longer",  # text shorter than its head says
    "9b8000000000000000": "array longer",  # claims 2^63 items
    "5b8000000000000000": "longer",  # claims a 2^63-byte string
    "bb7fffffffffffffff": "map longer",
    "9a00010000" + "00" * 8: "array longer",  # claims 65536 items, has 8
    "62c080": "UTF-8",  # overlong
    "63eda080": "UTF-8",  # surrogate
    "61ff": "UTF-8",
    "64f4908080": "UTF-8",  # above U+10FFFF
    "a2616101616102": "duplicate",
    "a201000100": "duplicate",
    "a1f500": "map key",  # true as a key
    "a18000": "map key",  # array as a key
    "81" * 17 + "00": "nesting",
    "1c": "reserved",
    "f93c00": "float",
    "fb3ff0000000000000": "float",
    "f7": "simple",  # undefined
    "f820": "simple",
}


def test_hostile_inputs_rejected_with_reason(device, tmp_path):
    items = [bytes.fromhex(h.replace(" ", "")) for h in HOSTILE]
    dev = run_cases(device, tmp_path, items)
    for (h, why), d in zip(HOSTILE.items(), dev, strict=True):
        assert "err" in d, (h, d)
        assert why.lower() in d["err"].lower(), (h, d)


def test_item_bound(device):
    code = r"""
import json
from ioconnect import cbor
data = bytes([0x99, 0x04, 0x00]) + bytes(1024)  # array of 1024 zeros: 1025 items
try:
    cbor.decode(data)
    print(json.dumps("accepted"))
except cbor.CBORError as e:
    print(json.dumps(str(e)))
print(json.dumps(len(cbor.decode(data[:3] + bytes(1024), max_items=1025))))
"""
    out = device(code)
    assert "items" in out[0]
    assert out[1] == 1024


def mutate(b: bytes, rnd: random.Random) -> bytes:
    b = bytearray(b)
    for _ in range(rnd.randrange(1, 4)):
        kind = rnd.randrange(4)
        i = rnd.randrange(len(b) + 1)
        if kind == 0 and b:
            b[min(i, len(b) - 1)] = rnd.randrange(256)
        elif kind == 1:
            b[i:i] = bytes([rnd.randrange(256)])
        elif kind == 2:
            del b[i:]
        elif b:
            b[min(i, len(b) - 1)] ^= 1 << rnd.randrange(8)
    return bytes(b)


@BATCH
@given(
    valid=st.lists(VALUE, min_size=40, max_size=40),
    noise=st.lists(st.binary(min_size=1, max_size=40), min_size=40, max_size=40),
    seed=st.integers(0, 2**32),
)
def test_fuzz_decoder(device, tmp_path_factory, valid, noise, seed):
    # Each hostile input yields a value or CBORError, nothing else; a value the
    # device accepts must be what cbor2 reads from the same bytes.
    rnd = random.Random(seed)
    items = [mutate(cbor2.dumps(v), rnd) for v in valid for _ in range(3)] + noise
    dev = run_cases(device, tmp_path_factory.mktemp("fuzz"), items)
    for b, d in zip(items, dev, strict=True):
        assert "bad" not in d, (b.hex(), d)
        if "rep" in d and not has_tag(d["rep"]):
            assert rep(cbor2.loads(b)) == d["rep"], b.hex()
