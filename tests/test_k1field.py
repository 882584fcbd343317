"""secp256k1 field arithmetic in viper (firmware/ioconnect/k1field.py) on the MicroPython
VM, checked against Python's own integers; and k*G with and without it."""

from __future__ import annotations

import random

import coincurve
from conftest import RunDevice

P = 2**256 - 2**32 - 977
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# Values where limbs, carries and the final reduction meet their edges.
EDGES = [0, 1, 2, 977, 2**32, 2**32 + 977, 0xFFFF, 2**128 - 1, 2**255, P - 1, P - 2, P - 2**32]

FIELD_OPS = """
import json
from ioconnect import k1field as F
def fe(x):
    return bytearray(x.to_bytes(32, "little"))
def val(b):
    return int.from_bytes(bytes(b), "little")
T = bytearray(64)
out = []
for a, b in json.load(open("cases.json")):
    r = bytearray(32)
    F.mul(r, fe(a), fe(b), T)
    row = [val(r)]
    F.add(r, fe(a), fe(b))
    row.append(val(r))
    F.sub(r, fe(a), fe(b))
    row.append(val(r))
    x = fe(a)
    F.mul(x, x, fe(b), T)  # result written over an operand
    row.append(val(x))
    x = fe(a)
    F.neg(x)
    row.append(val(x))
    out.append(row)
print(json.dumps(out))
"""


def test_field_operations_match_integers(device: RunDevice) -> None:
    rng = random.Random(11)
    values = EDGES + [rng.randrange(P) for _ in range(60)]
    cases = [[a, b] for a in values for b in EDGES] + [
        [rng.choice(values), rng.choice(values)] for _ in range(400)
    ]
    [got] = device(FIELD_OPS, cases, heap="4M")  # the cases as JSON need the room
    for (a, b), row in zip(cases, got, strict=True):
        assert row == [a * b % P, (a + b) % P, (a - b) % P, a * b % P, -a % P], (a, b)


def test_reduce_top_takes_values_between_p_and_2_256(device: RunDevice) -> None:
    values = [P, P + 1, P + 977, 2**256 - 1]
    code = """
import json
from ioconnect import k1field as F
out = []
for x in json.load(open("cases.json")):
    r = bytearray(x.to_bytes(32, "little"))
    F._reduce_top(r, 0)
    out.append(int.from_bytes(bytes(r), "little"))
print(json.dumps(out))
"""
    [got] = device(code, values)
    assert got == [v % P for v in values]


MUL_G = """
import json
from ioconnect import ec
C = ec.SECP256K1
mode = "{mode}"
if mode == "bigint":
    C._fe = False  # a port without the viper emitter
elif mode == "fallback":
    from ioconnect import k1field
    k1field.madd = lambda *a: 1  # every addition takes the same-x path
out = []
for k in json.load(open("cases.json")):
    x, y = C.to_affine(C.mul_g(k))
    out.append([x, y, C._fe is not False])
print(json.dumps(out))
"""


def _scalars() -> list[int]:
    rng = random.Random(7)
    return [1, 2, 31, 32, 33, 64, N - 1, N - 33, N // 2, 2**255] + [
        rng.randrange(1, N) for _ in range(12)
    ]


def test_mul_g_matches_libsecp256k1_with_and_without_k1field(device: RunDevice) -> None:
    ks = _scalars()
    want = []
    for k in ks:
        pub = coincurve.PrivateKey(k.to_bytes(32, "big")).public_key.format(compressed=False)
        want.append([int.from_bytes(pub[1:33], "big"), int.from_bytes(pub[33:], "big")])
    for mode, fast in (("viper", True), ("bigint", False), ("fallback", True)):
        [got] = device(MUL_G.format(mode=mode), ks)
        assert [g[:2] for g in got] == want, mode
        assert {g[2] for g in got} == {fast}, mode
