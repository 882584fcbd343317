"""keccak256 and sha512 on MicroPython (96K heap) vs pycryptodome and hashlib.

Messages are made on the host (fixed boundary lengths plus hypothesis draws) and
hashed in one VM run per batch, one-shot and through the incremental classes
fed in chunks of varying size.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from conftest import RunDevice
from Crypto.Hash import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# keccak rate is 136 bytes, sha512 block 128 (its length field needs 17 bytes).
KECCAK_LENGTHS = [0, 1, 31, 32, 33, 135, 136, 137, 271, 272, 273, 408, 1024, 5000]
SHA512_LENGTHS = [0, 1, 64, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256, 257, 1000, 5000]

# cases: [[message hex, [chunk sizes]], ...] -> one JSON line per case.
HASH_ON_DEVICE = """
import json
from ioconnect.keccak import keccak256, Keccak256
from ioconnect.sha512 import sha512, SHA512
for msg, chunks in json.load(open("cases.json")):
    msg = bytes.fromhex(msg)
    k = Keccak256()
    s = SHA512()
    i = j = 0
    while i < len(msg):
        n = chunks[j % len(chunks)]
        part = memoryview(msg)[i:i + n]
        k.update(part)
        s.update(part)
        i += n
        j += 1
    print(json.dumps([keccak256(msg).hex(), k.digest().hex(), k.hexdigest(),
                      sha512(msg).hex(), s.digest().hex()]))
"""


def host_keccak(data: bytes) -> str:
    return keccak.new(digest_bits=256, data=data).hexdigest()


def check_batch(device: RunDevice, messages: list[bytes], rng: random.Random) -> None:
    cases: list[Any] = [
        [m.hex(), [rng.choice([1, 7, 64, 135, 136, 137, 300]) for _ in range(3)]] for m in messages
    ]
    out = device(HASH_ON_DEVICE, cases)
    assert len(out) == len(messages)
    for m, (k1, k2, k3, s1, s2) in zip(messages, out, strict=True):
        want_k = host_keccak(m)
        want_s = hashlib.sha512(m).hexdigest()
        assert (k1, k2, k3) == (want_k, want_k, want_k), f"keccak256 of {len(m)} bytes"
        assert (s1, s2) == (want_s, want_s), f"sha512 of {len(m)} bytes"


def test_published_vectors(device: RunDevice) -> None:
    # Ethereum's keccak256("") and FIPS 180-2's SHA-512("abc")
    code = (
        "from ioconnect.keccak import keccak256\n"
        "from ioconnect.sha512 import sha512\n"
        "import json\n"
        "print(json.dumps([keccak256(b'').hex(), sha512(b'abc').hex()]))\n"
    )
    [[k, s]] = device(code)
    assert k == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert s == (
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    )


def test_block_boundaries(device: RunDevice) -> None:
    rng = random.Random(8032)
    lengths = sorted(set(KECCAK_LENGTHS + SHA512_LENGTHS))
    check_batch(device, [rng.randbytes(n) for n in lengths], rng)


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.binary(max_size=700), min_size=10, max_size=30), st.randoms())
def test_random_messages(device: RunDevice, messages: list[bytes], rng: random.Random) -> None:
    check_batch(device, messages, rng)


def test_str_is_rejected(device: RunDevice) -> None:
    code = """
import json
from ioconnect import keccak, sha512
out = []
for f, err in ((keccak.keccak256, keccak.KeccakError), (sha512.sha512, sha512.SHA512Error),
               (keccak.Keccak256().update, keccak.KeccakError),
               (sha512.SHA512().update, sha512.SHA512Error)):
    try:
        f("abc")
        out.append("accepted")
    except err as e:
        out.append(isinstance(e, ValueError))
print(json.dumps(out))
"""
    assert device(code) == [[True, True, True, True]]


def test_digest_does_not_end_the_stream(device: RunDevice) -> None:
    code = """
import json
from ioconnect.keccak import Keccak256
from ioconnect.sha512 import SHA512
k = Keccak256(b"a" * 200)
s = SHA512(b"a" * 200)
first = [k.digest().hex(), s.digest().hex()]
k2 = k.copy()
k.update(b"b" * 100)
s.update(b"b" * 100)
print(json.dumps(first + [k.digest().hex(), s.digest().hex(), k2.digest().hex()]))
"""
    [[k1, s1, k2, s2, k3]] = device(code)
    a, ab = b"a" * 200, b"a" * 200 + b"b" * 100
    assert (k1, k3, k2) == (host_keccak(a), host_keccak(a), host_keccak(ab))
    assert (s1, s2) == (hashlib.sha512(a).hexdigest(), hashlib.sha512(ab).hexdigest())


def test_large_input_fits_the_heap(device: RunDevice) -> None:
    # 40 KB message at the 96K heap: hashing must not copy it
    code = """
import json
from ioconnect.keccak import keccak256
from ioconnect.sha512 import sha512
m = bytearray(40000)
for i in range(0, 40000, 97):
    m[i] = i & 255
print(json.dumps([keccak256(m).hex(), sha512(m).hex()]))
"""
    m = bytearray(40000)
    for i in range(0, 40000, 97):
        m[i] = i & 255
    assert device(code) == [[host_keccak(bytes(m)), hashlib.sha512(m).hexdigest()]]


def test_locked_heap(device: RunDevice) -> None:
    # Keccak256.update allocates nothing; a MemoryError in the one-shot
    # functions (their result needs the heap) leaves no state behind.
    code = """
import json, micropython
from ioconnect.keccak import Keccak256, keccak256
from ioconnect.sha512 import sha512
d = bytes(range(256)) + bytes(44)
h = Keccak256()
micropython.heap_lock()
h.update(d)
h.update(d)
micropython.heap_unlock()
errors = 0
for f in (keccak256, sha512):
    micropython.heap_lock()
    try:
        f(d)
    except MemoryError:
        errors += 1
    micropython.heap_unlock()
print(json.dumps([h.hexdigest(), keccak256(d).hex(), sha512(d).hex(), errors]))
"""
    d = bytes(range(256)) + bytes(44)
    assert device(code) == [[host_keccak(d + d), host_keccak(d), hashlib.sha512(d).hexdigest(), 2]]
