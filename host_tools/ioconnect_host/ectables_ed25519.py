"""Build the fixed-base table the device uses for k*B on Ed25519.

File layout (read by ``firmware/ioconnect/ed25519.py``): an 8-byte header
``b"IOED" 01 <w> <windows> 00``, the SHA-256 of the entries (32 bytes; the
device checks it once before trusting the file), then for each window
i = 0 .. windows-1 and digit d = 1 .. 2^(w-1) the point d * 2^(w*i) * B in
affine Niels form: (y + x) || (y - x) || 2*d*x*y mod p, 32 bytes each,
little-endian. With signed digits, k*B is a sum of one entry per window (a
negative digit swaps the first two fields and negates the third): additions
only, no doublings.

Run ``python -m ioconnect_host.ectables_ed25519`` to rewrite the shipped table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

from .paths import firmware_dir

__all__ = ["MAGIC", "WINDOW_BITS", "build_table", "default_path", "main"]

#: Window width, chosen by measurement (benchmarks/bench_ed25519_hashes.py):
#: 5 bits gives 51 additions per k*B and a 78 KB file (4 bits: 64 additions,
#: 48 KB; 6 bits would pass 100 KB).
WINDOW_BITS = 5

MAGIC = b"IOED\x01"

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P
BY = 4 * pow(5, -1, P) % P
#: Ed25519 scalars are reduced mod L < 2**253 before the table is used.
SCALAR_BITS = 253

Affine = tuple[int, int]


def _base_point() -> Affine:
    # x from x^2 = (y^2 - 1) / (d y^2 + 1), the even root (RFC 8032 5.1)
    u = (BY * BY - 1) % P
    v = (D * BY * BY + 1) % P
    x2 = u * pow(v, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if x * x % P != x2:
        x = x * pow(2, (P - 1) // 4, P) % P
    if x & 1:
        x = P - x
    return x, BY


def _add(p1: Affine, p2: Affine) -> Affine:
    # Complete affine addition on -x^2 + y^2 = 1 + d x^2 y^2; slow but plain.
    (x1, y1), (x2, y2) = p1, p2
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P
    return x3, y3


def build_table(w: int = WINDOW_BITS) -> bytes:
    """The table file's bytes for ``w``-bit signed windows.

    Args:
        w: window width in bits, 2 .. 8.

    Returns:
        The whole file: header, SHA-256 of the entries, entries.

    Raises:
        ValueError: ``w`` out of range.

    Example:
        >>> len(build_table(4))
        49192
    """
    if not 2 <= w <= 8:
        raise ValueError(f"window width must be 2..8 bits, not {w}")
    windows = -(-SCALAR_BITS // w)
    entries = bytearray()
    base = _base_point()
    for _ in range(windows):
        q = base
        for d in range(1, (1 << (w - 1)) + 1):
            if d > 1:
                q = _add(q, base)
            x, y = q
            for v in ((y + x) % P, (y - x) % P, 2 * D * x * y % P):
                entries += v.to_bytes(32, "little")
        for _ in range(w):
            base = _add(base, base)
    header = MAGIC + bytes([w, windows, 0])
    return header + hashlib.sha256(entries).digest() + bytes(entries)


def default_path() -> Path:
    """Where the firmware looks for the table: ``ioconnect/tables/ed25519.bin``."""
    return firmware_dir() / "ioconnect" / "tables" / "ed25519.bin"


def main(argv: list[str] | None = None) -> int:
    """Write the table (atomically: temp file, then rename); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=WINDOW_BITS, help="window bits")
    parser.add_argument("--out", type=Path, default=None, help="output file")
    args = parser.parse_args(argv)
    out: Path = args.out or default_path()
    data = build_table(args.window)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    print(f"{out}: {len(data)} bytes, {args.window}-bit windows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
