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
ws = F.workspace()
def put(i, x):
    ws[32 * i : 32 * i + 32] = x.to_bytes(32, "little")
def get(i):
    return int.from_bytes(ws[32 * i : 32 * i + 32], "little")
progs = [F.program((F.MUL, 7, 5, 6)), F.program((F.SUB, 7, 5, 6)),
         F.program((F.MUL, 5, 5, 6)), F.program((F.NEG, 5)), F.program((F.ZERO, 0, 6))]
out = []
for a, b in json.load(open("cases.json")):
    row = []
    for prog in progs:
        put(5, a)
        put(6, b)
        stopped = F.run(ws, b"", prog)
        row.append(stopped if prog is progs[-1] else get(7 if prog[1] == 7 else 5))
    out.append(row)
src = bytes(range(64))
F.run(ws, src, F.program((F.LOAD, 3, 1), (F.LOAD, 4, 0), (F.ONE, 2)))
out.append([get(3) == int.from_bytes(src[32:], "big"), get(4) == int.from_bytes(src[:32], "big"),
            get(2) == 1])
print(json.dumps(out))
"""


def test_field_operations_match_integers(device: RunDevice) -> None:
    rng = random.Random(11)
    values = EDGES + [rng.randrange(P) for _ in range(60)]
    cases = [[a, b] for a in values for b in EDGES] + [
        [rng.choice(values), rng.choice(values)] for _ in range(400)
    ]
    [got] = device(FIELD_OPS, cases, heap="4M")  # the cases as JSON need the room
    assert got.pop() == [True, True, True]  # LOAD (big-endian source), ONE
    for (a, b), row in zip(cases, got, strict=True):
        assert row == [a * b % P, (a - b) % P, a * b % P, -a % P, int(b == 0)], (a, b)


def test_a_product_between_p_and_2_256_is_reduced(device: RunDevice) -> None:
    # x * 1 for p <= x < 2^256 (not a valid input, but the only way to reach the
    # final subtraction of p, which real products need once in 2^200 or so).
    values = [P, P + 1, P + 977, 2**256 - 1]
    code = """
import json
from ioconnect import k1field as F
ws = F.workspace()
out = []
for x in json.load(open("cases.json")):
    ws[160:192] = x.to_bytes(32, "little")
    ws[192:224] = (1).to_bytes(32, "little")
    F.run(ws, b"", F.program((F.MUL, 7, 5, 6)))
    out.append(int.from_bytes(ws[224:256], "little"))
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
    ec._k1 = None  # as on a port that refuses viper code
elif mode == "fallback":
    from ioconnect import k1field
    _run = k1field.run
    def _same_x(ws, src, prog):  # every addition takes the same-x path
        return 1 if prog in (k1field.ADD, k1field.ADD_NEG) else _run(ws, src, prog)
    k1field.run = _same_x
out = []
for k in json.load(open("cases.json")):
    x, y = C.to_affine(C.mul_g(k))
    out.append([x, y, ec._k1 is not None])
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
