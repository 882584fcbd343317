"""tools/check-firmware: flags what MicroPython lacks, passes what it runs.

Each flagged snippet is also run on the MicroPython VM to show that it really
fails there, and the clean sample runs there: the checker is judged against
the VM, not against our belief about MicroPython.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from ioconnect_host.vm import run_script

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "tools" / "check-firmware"

# name: (snippet, error code the checker must give, its line). Each snippet
# fails on MicroPython; some names come from parameters, unseen by mypy.
BAD = {
    "hashlib_sha512": ("import hashlib\nhashlib.sha512(b'x')", "attr-defined", 2),
    "str_removeprefix": ("'abc'.removeprefix('a')", "attr-defined", 1),
    "int_bit_count": ("(5).bit_count()", "attr-defined", 1),
    "os_replace": ("import os\nos.replace('a', 'b')", "attr-defined", 2),
    "param_bit_length": ("def f(n):\n    return n.bit_length()\nf(5)", "mpy-attr", 2),
    "typing_import": ("import typing", "mpy-import", 1),
    "future_import": ("from __future__ import annotations", "mpy-import", 1),
    "cpython_module": ("import hmac", "import-not-found", 1),
}

# Uses what device code needs: const, native, viper with ptr8/ptr32 (called
# with buffers), hashlib.sha256, struct, bytes.hex(sep), guarded imports.
CLEAN = """\
import binascii
import hashlib
import json
import struct

import micropython
from micropython import const

# Annotations are never evaluated on MicroPython; typing is for the checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

try:
    import network
except ImportError:  # the unix port: no radio
    network = None  # type: ignore[assignment]

try:
    import _no_such_module  # absent from stubs and VM: the guard makes it fine

    BOARD = _no_such_module.NAME
except ImportError:
    BOARD = "real"

_LANES = const(4)


class SampleError(ValueError):
    pass


@micropython.native
def add(a: int, b: int) -> int:
    return a + b


@micropython.viper
def xor_into(dst: ptr8, src: ptr8, n: int):
    i = 0
    while i < n:
        dst[i] = dst[i] ^ src[i]
        i += 1


@micropython.viper
def sum_words(words: ptr32, n: int) -> int:
    total = 0
    for i in range(n):
        total += words[i]
    return total


def digest(data: bytes) -> tuple[str, int]:
    if not isinstance(data, (bytes, bytearray)):
        raise SampleError("data must be bytes")
    buf = bytearray(8)
    struct.pack_into(">II", buf, 0, 1, 2)
    xor_into(buf, b"\\x01" * 8, 8)
    words = bytearray(4 * _LANES)
    struct.pack_into("<IIII", words, 0, 1, 2, 3, 4)
    return hashlib.sha256(data + buf).digest().hex(":")[:8], sum_words(words, _LANES)


def apply(fn: Callable[[int, int], int]) -> int:
    return fn(2, 3)


hexed = binascii.hexlify(bytearray(b"\\x01\\x02"), ":").decode()  # any buffer, as on the device
print(json.dumps([apply(add), digest(b"abc"), hexed]))
"""


# Runs on MicroPython: exec each case, report whether it raised.
RUN_EACH = """
import json
with open("cases.json") as f:
    cases = json.load(f)
out = {}
for name, src in cases.items():
    try:
        exec(src, {})
        out[name] = "ran"
    except (AttributeError, ImportError):
        out[name] = "failed"
print(json.dumps(out))
"""


def check(*paths: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECKER), "--cache-root", str(cache), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("check-firmware-cache")


def test_flags_cpython_only_code(tmp_path: Path, cache: Path) -> None:
    for name, (src, _, _) in BAD.items():
        (tmp_path / f"{name}.py").write_text(src + "\n")
    res = check(tmp_path, cache=cache)
    assert res.returncode == 1, res.stdout + res.stderr
    for name, (_, code, line) in BAD.items():
        want = re.compile(rf"{re.escape(name)}\.py:{line}: error: .*\[{re.escape(code)}\]")
        assert want.search(res.stdout), f"{name}: no [{code}] on line {line}:\n{res.stdout}"
    # Each snippet really fails on the MicroPython VM (one VM run for all).
    (fs := tmp_path / "fs").mkdir()
    (fs / "cases.json").write_text(json.dumps({k: v[0] for k, v in BAD.items()}))
    out = run_script(RUN_EACH, fs_dir=fs)
    assert json.loads(out) == dict.fromkeys(BAD, "failed"), out


def test_clean_device_code_passes_and_runs(tmp_path: Path, cache: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(CLEAN)
    res = check(sample, cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "check-firmware: no errors" in res.stdout
    out = run_script(CLEAN, fs_dir=tmp_path / "fs")
    added, (hexdigest, total), hexed = json.loads(out)
    buf = bytes(b ^ 1 for b in struct.pack(">II", 1, 2))
    want = hashlib.sha256(b"abc" + buf).digest().hex(":")[:8]
    assert (added, hexdigest, total, hexed) == (5, want, 10, "01:02")


def test_syntax_micropython_rejects(tmp_path: Path, cache: Path) -> None:
    # Valid CPython 3.10, rejected by MicroPython's compiler.
    for name, src in {"posonly": "def f(a, /, b):\n    pass\n", "dstar": "x = {**{}}\n"}.items():
        (tmp_path / f"{name}.py").write_text(src)
        compile(src, name, "exec")  # CPython accepts it
    res = check(tmp_path, cache=cache)
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(r"posonly\.py:1: error: .*\[mpy-syntax\]", res.stdout), res.stdout
    assert re.search(r"dstar\.py:1: error: .*\[mpy-syntax\]", res.stdout), res.stdout


def test_pow_inverse_and_ignore_mark(tmp_path: Path, cache: Path) -> None:
    src = (
        "def inv(a, m):\n"
        "    return pow(a, -1, m)\n"
        "def title(s):\n"
        "    return s.title()  # mpy-check: ignore (s is our own type)\n"
    )
    (tmp_path / "m.py").write_text(src)
    res = check(tmp_path, cache=cache)
    assert res.returncode == 1
    assert re.search(r"m\.py:2: error: .*\[mpy-pow\]", res.stdout), res.stdout
    assert "m.py:4" not in res.stdout
    # MicroPython really returns 0 where CPython gives the inverse 5.
    assert json.loads(run_script("print(pow(3, -1, 7))", fs_dir=tmp_path / "fs")) == 0
    assert pow(3, -1, 7) == 5


def test_checker_reports_its_own_failure(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_firmware.py"), str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "check-firmware:" in res.stderr
