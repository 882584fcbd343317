"""ECDSA on the MicroPython VM, checked against libsecp256k1 (coincurve) and OpenSSL."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import coincurve
import pytest
from conftest import RunDevice
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ioconnect_host.paths import firmware_dir

SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Each case: [curve, private key hex, digest hex] -> [public key hex, signature hex, recid]
SIGN_ON_DEVICE = """
import json
from ioconnect import ecdsa
for curve, d, dig in json.load(open("cases.json")):
    c = ecdsa.curve_by_name(curve)
    d = int(d, 16)
    sig, recid = ecdsa.sign_digest(c, d, bytes.fromhex(dig))
    print(json.dumps([ecdsa.public_key(c, d).hex(), sig.hex(), recid]))
"""


def host_p256_sign(d: int, digest: bytes) -> tuple[bytes, bytes]:
    key = ec.derive_private_key(d, ec.SECP256R1())
    der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big"), uncompressed(key.public_key())


def uncompressed(pub: ec.EllipticCurvePublicKey) -> bytes:
    nums = pub.public_numbers()
    return b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")


def check_signatures(cases: list[list[str]], results: list[list[object]]) -> None:
    assert len(results) == len(cases)
    for (curve, d_hex, dig_hex), (pub_hex, sig_hex, recid) in zip(cases, results, strict=True):
        digest = bytes.fromhex(dig_hex)
        if curve == "secp256k1":
            key = coincurve.PrivateKey(bytes.fromhex(d_hex))
            expected = key.sign_recoverable(digest, hasher=None)  # r||s||recid, RFC 6979, low-S
            assert pub_hex == key.public_key.format(False).hex()
            assert sig_hex == expected[:64].hex(), f"d={d_hex} digest={dig_hex}"
            assert recid == expected[64]
        else:
            sig, pub = host_p256_sign(int(d_hex, 16), digest)
            assert pub_hex == pub.hex()
            assert sig_hex == sig.hex(), f"d={d_hex} digest={dig_hex}"
            # recid must name the key the signature recovers to (checked on device below too)
            assert recid in (0, 1, 2, 3)


scalars = {
    "secp256k1": st.integers(min_value=1, max_value=SECP_N - 1),
    "p256": st.integers(min_value=1, max_value=P256_N - 1),
}


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(
        st.tuples(
            st.sampled_from(["secp256k1", "p256"]),
            st.integers(min_value=1, max_value=P256_N - 1),
            st.binary(min_size=32, max_size=32),
        ),
        min_size=40,
        max_size=40,
    )
)
def test_signatures_match_libsecp256k1_and_openssl(device: RunDevice, keys: list) -> None:
    cases = [[c, f"{d:064x}", dig.hex()] for c, d, dig in keys]
    check_signatures(cases, device(SIGN_ON_DEVICE, cases))


def test_edge_scalars_and_digests(device: RunDevice) -> None:
    # Smallest and largest keys; digests at and above the group order (reduced by RFC 6979).
    cases = []
    for curve, n in (("secp256k1", SECP_N), ("p256", P256_N)):
        for d in (1, 2, n - 1, n // 2):
            for dig in (
                b"\x00" * 32,
                b"\xff" * 32,
                n.to_bytes(32, "big"),
                (n + 1).to_bytes(32, "big"),
            ):
                cases.append([curve, f"{d:064x}", dig.hex()])
    check_signatures(cases, device(SIGN_ON_DEVICE, cases))


def test_protocols_vectors(device: RunDevice) -> None:
    p256_d = base64.b64decode("vebfEf+v2rLUzFm2mMH9XzPbZJFzaEj3nctUCnoAbMw=")
    code = """
import json
from ioconnect import ecdsa
d = 0x449e725560cd54b853e0825662b8d5c8fcb4e0516fe5a0a1509df4c4b9484d87
print(json.dumps(ecdsa.public_key(ecdsa.SECP256K1, d).hex()))
print(json.dumps(ecdsa.public_key(ecdsa.P256, int(json.load(open("cases.json")), 16)).hex()))
"""
    secp, p256 = device(code, p256_d.hex())
    assert secp == (
        "048bd8fc85cdfc3fd1e3377f4c60eca5bd1ab49a1ac69ea6551fbfb74c9295999b"
        "5d155909e3f6f9f04fb52e03a84732e5a472ae88512a436958a334f74f416702"
    )

    def b64(s: str) -> str:
        return base64.urlsafe_b64decode(s + "=").hex()

    assert p256 == "04" + b64("WIbBzvEz-6beOyvZtVmtN9J1EvPlgKUPDTPZy3kJJnk") + b64(
        "OvsnblaTwctIM2tP3pu8kh2RxpXxIwwtNceM4Z9iKcI"
    )


VERIFY_ON_DEVICE = """
import json
from ioconnect import ecdsa
for curve, pub, comp, dig, sig in json.load(open("cases.json")):
    c = ecdsa.curve_by_name(curve)
    pub, dig, sig = bytes.fromhex(pub), bytes.fromhex(dig), bytes.fromhex(sig)
    recovered = [ecdsa.recover(c, dig, sig, recid).hex() for recid in (0, 1)]
    print(json.dumps([ecdsa.verify_digest(c, pub, dig, sig), recovered,
                      ecdsa.decompress(c, bytes.fromhex(comp)).hex()]))
"""


@settings(
    max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(msgs=st.lists(st.binary(min_size=0, max_size=64), min_size=12, max_size=12))
def test_device_verifies_and_recovers_host_signatures(device: RunDevice, msgs: list[bytes]) -> None:
    cases: list[list[str]] = []
    expect_ok: list[bool] = []
    for i, msg in enumerate(msgs):
        digest = hashlib.sha256(msg).digest()
        k1 = coincurve.PrivateKey()
        rs = k1.sign_recoverable(digest, hasher=None)[:64]
        pub1, comp1 = k1.public_key.format(False), k1.public_key.format(True)
        cases.append(["secp256k1", pub1.hex(), comp1.hex(), digest.hex(), rs.hex()])
        k2 = ec.generate_private_key(ec.SECP256R1())  # random nonce, not RFC 6979
        r, s = decode_dss_signature(k2.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        pub2 = uncompressed(k2.public_key())
        comp2 = bytes([2 | (pub2[64] & 1)]) + pub2[1:33]
        sig2 = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        cases.append(["p256", pub2.hex(), comp2.hex(), digest.hex(), sig2.hex()])
        expect_ok += [True, True]
        if i % 3 == 0:  # tampered: one bit of the digest flipped
            bad = bytes([digest[0] ^ 1]) + digest[1:]
            cases.append(["secp256k1", pub1.hex(), comp1.hex(), bad.hex(), rs.hex()])
            expect_ok.append(False)
    results = device(VERIFY_ON_DEVICE, cases)
    for case, (ok, recovered, decomp), want_ok in zip(cases, results, expect_ok, strict=True):
        assert ok is want_ok, case
        assert decomp == case[1]
        # one of the two recovery ids gives back the signer exactly when the signature is good
        assert (case[1] in recovered) is want_ok, case
        # the recovered candidates are real keys: OpenSSL verifies the signature under them
        if want_ok and case[0] == "p256":
            sig = bytes.fromhex(case[4])
            der = encode_dss_signature(
                int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            )
            for cand in recovered:
                key = ec.EllipticCurvePublicKey.from_encoded_point(
                    ec.SECP256R1(), bytes.fromhex(cand)
                )
                key.verify(der, bytes.fromhex(case[3]), ec.ECDSA(Prehashed(hashes.SHA256())))


def test_device_signatures_recover_with_their_recid(device: RunDevice) -> None:
    code = """
import json
from ioconnect import ecdsa
for name in ("secp256k1", "p256"):
    c = ecdsa.curve_by_name(name)
    for i in range(1, 9):
        d = 0x5eed * i + 12345
        dig = bytes((i * 7 + j) & 255 for j in range(32))
        sig, recid = ecdsa.sign_digest(c, d, dig)
        print(json.dumps([ecdsa.recover(c, dig, sig, recid) == ecdsa.public_key(c, d),
                          ecdsa.verify_digest(c, ecdsa.public_key(c, d, True), dig, sig)]))
"""
    results = device(code)
    assert results == [[True, True]] * 16


def test_keygen_rejects_out_of_range(device: RunDevice) -> None:
    # os.urandom is replaced inside the VM: first 0, then n (both invalid), then a valid key.
    code = """
import json
from ioconnect import ecdsa
seq = [bytes(32), ecdsa.SECP256K1.n.to_bytes(32, "big"), b"\\x07" * 32]
class FakeOS:
    def urandom(self, n):
        return seq.pop(0)
ecdsa.os = FakeOS()
d = ecdsa.generate(ecdsa.SECP256K1)
print(json.dumps([hex(d), len(seq)]))
"""
    [(d_hex, left)] = device(code)
    assert int(d_hex, 16) == int.from_bytes(b"\x07" * 32, "big")
    assert left == 0


def test_without_table_and_with_corrupt_table(device: RunDevice, tmp_path: Path) -> None:
    # Without its table the curve falls back to a ladder and gives the same signatures;
    # a table with a flipped bit must make signing fail loudly, never sign with a wrong R.
    table = firmware_dir() / "ioconnect" / "tables" / "secp256k1.bin"
    bad = bytearray(table.read_bytes())
    per_window = 1 << (bad[6] - 1)  # header byte 6: the window width
    for entry in range(3 * per_window):  # one bit in every point of the first three windows
        bad[8 + 64 * entry + 40] ^= 0x01
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    shutil.copy(table, tmp_path / "good.bin")
    code = """
import json
from ioconnect import ecdsa
C = ecdsa.SECP256K1
d = 0x1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef
dig = bytes(range(32))
out = []
for path in ("good.bin", "missing.bin", "bad.bin"):
    C._table, C._f = path, None
    try:
        out.append(ecdsa.sign_digest(C, d, dig)[0].hex())
    except ecdsa.ECDSAError as e:
        out.append("error: " + str(e))
print(json.dumps(out))
"""
    [(good, missing, bad_result)] = device(code, fs_dir=tmp_path)
    key = coincurve.PrivateKey(
        (0x1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF).to_bytes(32, "big")
    )
    expected = key.sign_recoverable(bytes(range(32)), hasher=None)[:64].hex()
    assert good == expected
    assert missing == expected
    assert bad_result.startswith("error: computed point is off the curve")


def test_rejects_malformed_input(device: RunDevice) -> None:
    code = """
import json
from ioconnect import ecdsa
C = ecdsa.SECP256K1
def attempt(f):
    try:
        return repr(f())
    except ecdsa.ECDSAError as e:
        return "ECDSAError: " + str(e)
print(json.dumps([
    attempt(lambda: ecdsa.sign_digest(C, 5, b"short")),
    attempt(lambda: ecdsa.sign_digest(C, 0, bytes(32))),
    attempt(lambda: ecdsa.sign_digest(C, C.n, bytes(32))),
    attempt(lambda: ecdsa.verify_digest(C, b"\\x04" + bytes(64), bytes(32), bytes(64))),
    attempt(lambda: ecdsa.verify_digest(C, ecdsa.public_key(C, 3), bytes(32), b"\\x01" * 63)),
    attempt(lambda: ecdsa.recover(C, bytes(32), b"\\x01" * 64, 7)),
    attempt(lambda: ecdsa.decompress(C, b"\\x05" + bytes(32))),
]))
"""
    [out] = device(code)
    assert out[0] == "ECDSAError: digest must be 32 bytes"
    assert out[1] == out[2] == "ECDSAError: private key out of range"
    assert out[3] == "False"  # a point not on the curve never verifies
    assert out[4] == "ECDSAError: signature must be 64 bytes r||s"
    assert out[5] == "ECDSAError: signature or recovery id out of range"
    assert out[6] == "ECDSAError: bad public key encoding"


@pytest.mark.parametrize("curve", ["secp256k1", "p256"])
def test_sign_hot_path_is_heap_bounded(device: RunDevice, curve: str) -> None:
    # Many signatures in a row at the 96 KB heap: no growth that a long run would hit.
    # The first one may keep a bounded amount (secp256k1 loads k1field and its
    # buffers); every later one keeps nothing.
    code = f"""
import json, gc
from ioconnect import ecdsa
C = ecdsa.curve_by_name("{curve}")
d = 0xabcdef
gc.collect()
first = gc.mem_free()
ecdsa.sign_digest(C, d - 1, bytes(32))
gc.collect()
before = gc.mem_free()
for i in range(200):
    ecdsa.sign_digest(C, d + i, bytes((i,)) * 32)
gc.collect()
print(json.dumps([first, before, gc.mem_free()]))
"""
    [(first, before, after)] = device(code)
    assert first - before <= 4096, (first, before)
    assert after >= before - 256, (before, after)
