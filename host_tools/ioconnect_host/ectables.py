"""Build the fixed-base tables that the device uses for k*G on secp256k1 and P-256.

File layout (read by ``firmware/ioconnect/ec.py``): an 8-byte header
``b"IOEC" 01 <curve id> <w> <windows>``, then for each window i and digit
d = 1 .. 2^(w-1) the affine point d * 2^(w*i) * G as X || Y (32 bytes each,
big-endian). Signed digits make the negative half free (negate y).

Run ``python -m ioconnect_host.ectables`` to rewrite the shipped tables.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .paths import firmware_dir

__all__ = ["CURVES", "WINDOW_BITS", "build_table", "main"]

#: Window width per curve, chosen by measurement (benchmarks/crypto.py --engine
#: rp2040): 6 bits gives 43 additions per k*G and an 88 KB file; secp256k1 (the
#: signing curve of W3bstream and ioID) takes 7 bits: 37 additions, a 148 KB file,
#: 7 ms less per signature on an RP2040.
WINDOW_BITS = {"secp256k1": 7, "p256": 6}

Point = tuple[int, int] | None


@dataclass(frozen=True)
class CurveParams:
    name: str
    cid: int
    p: int
    a: int
    n: int
    gx: int
    gy: int


CURVES = {
    "secp256k1": CurveParams(
        "secp256k1",
        1,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F,
        0,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
        0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
        0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
    ),
    "p256": CurveParams(
        "p256",
        2,
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
        0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    ),
}


def _add(c: CurveParams, P: Point, Q: Point) -> Point:
    # Plain affine addition: slow but obviously right; tables are built once.
    if P is None:
        return Q
    if Q is None:
        return P
    (x1, y1), (x2, y2) = P, Q
    if x1 == x2 and (y1 + y2) % c.p == 0:
        return None
    if P == Q:
        lam = (3 * x1 * x1 + c.a) * pow(2 * y1, -1, c.p) % c.p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, c.p) % c.p
    x3 = (lam * lam - x1 - x2) % c.p
    return x3, (lam * (x1 - x3) - y1) % c.p


def build_table(curve: str, w: int | None = None) -> bytes:
    """The table file's bytes for ``curve`` with ``w``-bit signed windows
    (default: ``WINDOW_BITS[curve]``)."""
    c = CURVES[curve]
    if w is None:
        w = WINDOW_BITS[curve]
    windows = (c.n.bit_length() + 1 + w - 1) // w  # +1: the top digit may carry
    out = bytearray(b"IOEC" + bytes((1, c.cid, w, windows)))
    base: Point = (c.gx, c.gy)
    for _ in range(windows):
        acc: Point = None
        for _ in range(1 << (w - 1)):
            acc = _add(c, acc, base)
            assert acc is not None
            out += acc[0].to_bytes(32, "big") + acc[1].to_bytes(32, "big")
        for _ in range(w):
            base = _add(c, base, base)
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    """Write ``tables/<curve>.bin`` under the firmware package (temp file, then rename)."""
    target = firmware_dir() / "ioconnect" / "tables"
    target.mkdir(parents=True, exist_ok=True)
    for name in CURVES:
        path = target / f"{name}.bin"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(build_table(name))
        tmp.replace(path)
        print(f"{path}: {path.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
