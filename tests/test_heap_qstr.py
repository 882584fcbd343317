"""Interned strings (qstrs) are never freed on MicroPython, and a new qstr pool
needs one contiguous block (640 entries: about 7 KB on 64-bit, 3.8 KB on an
ESP32). Code that runs repeatedly must not intern strings at run time, or a
long-running board eventually needs such a block on a split heap (seen as
"MemoryError: memory allocation failed, allocating 640 bytes", which counts
entries, in identity.create and the attestation loop at 96 KB)."""

from __future__ import annotations

import re
from pathlib import Path

from ioconnect_host.firmware import host_build
from ioconnect_host.vm import run_script


def test_encoders_intern_nothing(tmp_path: Path) -> None:
    code = """
import micropython
from ioconnect import encoding
encoding.b58encode(b"\\x00")  # warm: the functions' own names
encoding.bech32_encode("io", b"\\x00")
micropython.qstr_info()
a = encoding.b58encode(bytes(range(1, 33)))
b = encoding.bech32_encode("io", bytes(range(32)))
micropython.qstr_info()
print(a)
print(b)
"""
    out = run_script(code, fs_dir=tmp_path, extra_path=[host_build()])
    before, after = (int(n) for n in re.findall(r"n_qstr=(\d+)", out))
    a, b = out.split()[-2:]
    # Every bech32 character and most base58 ones appear; none became a qstr.
    assert len(set(a)) > 20 and len(set(b[3:])) == 32
    assert after == before
