"""Device key store on MicroPython: file format, signing, refusal to overwrite,
corrupt files, leftover temp files, and power cuts at every byte of a write.

The key file is parsed here by an independent host reader of the documented
format, and keys are checked with coincurve / cryptography.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import coincurve
from conftest import RunDevice
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from powercut import HARNESS

CURVE_IDS = {1: "secp256k1", 2: "p256", 3: "ed25519"}
SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def parse_key_file(blob: bytes) -> tuple[str, bytes, bytes]:
    """(curve, secret, public key) from the v1 file format, checksum verified."""
    assert blob[:4] == b"IOKY" and blob[4] == 1, blob[:8].hex()
    curve = CURVE_IDS[blob[5]]
    slen, plen = blob[6], blob[7]
    end = 8 + slen + plen
    assert len(blob) == end + 32
    assert hashlib.sha256(blob[:end]).digest() == blob[end:]
    return curve, blob[8 : 8 + slen], blob[8 + slen : end]


def encode_key_file(curve_id: int, secret: bytes, pub: bytes, version: int = 1) -> bytes:
    body = b"IOKY" + bytes([version, curve_id, len(secret), len(pub)]) + secret + pub
    return body + hashlib.sha256(body).digest()


def host_public_key(curve: str, secret: bytes) -> bytes:
    if curve == "secp256k1":
        return coincurve.PrivateKey(secret).public_key.format(False)
    if curve == "p256":
        nums = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
        pn = nums.public_key().public_numbers()
        return b"\x04" + pn.x.to_bytes(32, "big") + pn.y.to_bytes(32, "big")
    return ed25519.Ed25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def host_verify(curve: str, pub: bytes, msg: bytes, sig: bytes) -> bool:
    if curve == "secp256k1":
        der = coincurve.PublicKey(pub)
        return der.verify(
            encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
            msg,
        )
    if curve == "p256":
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes

        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
        try:
            key.verify(
                encode_dss_signature(
                    int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
                ),
                msg,
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            return False
        return True
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except InvalidSignature:
        return False
    return True


CREATE_AND_SIGN = """
import json
from ioconnect import keys
for curve, msg, digest in json.load(open("cases.json")):
    st = keys.KeyStore("k_" + curve + ".key")
    k = st.create(curve)
    k2 = st.load()
    out = {"curve": k.curve, "pub": k.public_key().hex(), "pub_loaded": k2.public_key().hex(),
           "cpub": k.public_key(True).hex(), "sig": k2.sign(bytes.fromhex(msg)).hex()}
    if curve != "ed25519":
        sig, recid = k2.sign_digest(bytes.fromhex(digest))
        out["dsig"] = sig.hex()
        out["recid"] = recid
    else:
        try:
            k2.sign_digest(bytes.fromhex(digest))
        except keys.KeyStoreError as e:
            out["dsig_err"] = str(e)
    try:
        st.create(curve)
    except keys.KeyStoreError as e:
        out["again"] = str(e)
    # Everything reachable from the key object, for the no-secret check.
    out["attrs"] = [repr(getattr(k2, a)) for a in dir(k2)]
    out["repr"] = repr(k2)
    print(json.dumps(out))
"""


def test_create_load_sign_match_host_libraries(device: RunDevice, tmp_path: Path) -> None:
    msg = b"ioconnect reading 42"
    digest = hashlib.sha256(b"some digest").digest()
    cases = [[c, msg.hex(), digest.hex()] for c in ("secp256k1", "p256", "ed25519")]
    out = device(CREATE_AND_SIGN, cases, fs_dir=tmp_path)
    assert len(out) == 3
    for (curve, _, _), res in zip(cases, out, strict=True):
        blob = (tmp_path / f"k_{curve}.key").read_bytes()
        fcurve, secret, fpub = parse_key_file(blob)
        assert fcurve == curve == res["curve"]
        pub = host_public_key(curve, secret)
        assert fpub == pub and res["pub"] == res["pub_loaded"] == pub.hex()
        assert len(blob) == (104 if curve == "ed25519" else 137)
        sig = bytes.fromhex(res["sig"])
        assert len(sig) == 64 and host_verify(curve, pub, msg, sig)
        assert not host_verify(curve, pub, msg + b"!", sig)
        if curve == "ed25519":
            assert res["cpub"] == pub.hex()
            assert "ECDSA" in res["dsig_err"]
        else:
            assert res["cpub"] == (bytes([2 + (pub[64] & 1)]) + pub[1:33]).hex()
            dsig = bytes.fromhex(res["dsig"])
            if curve == "secp256k1":
                rec = coincurve.PublicKey.from_signature_and_message(
                    dsig + bytes([res["recid"]]), digest, hasher=None
                )
                assert rec.format(False) == pub
        assert res["again"] == "identity exists; rotate to replace"
        # The secret is not reachable from the key object or its repr.
        seen = json.dumps(res["attrs"]) + res["repr"]
        assert secret.hex() not in seen
        assert str(int.from_bytes(secret, "big")) not in seen
        assert repr(secret)[2:-1] not in seen


ROTATE = """
import json, os
from ioconnect import keys
st = keys.KeyStore("identity.key")
a = st.create("secp256k1")
b = st.rotate("p256")
c = st.load()
print(json.dumps([a.public_key().hex(), b.public_key().hex(), c.curve, c.public_key().hex(),
                  sorted(os.listdir())]))
"""


def test_rotate_replaces_and_keeps_one_backup(device: RunDevice, tmp_path: Path) -> None:
    [[old, new, curve, loaded, files]] = device(ROTATE, fs_dir=tmp_path)
    assert curve == "p256" and loaded == new != old
    assert files == ["identity.key", "identity.key.bak"]
    bcurve, bsecret, bpub = parse_key_file((tmp_path / "identity.key.bak").read_bytes())
    assert bcurve == "secp256k1" and bpub.hex() == old == host_public_key(bcurve, bsecret).hex()
    assert parse_key_file((tmp_path / "identity.key").read_bytes())[2].hex() == new


LOAD_EACH = """
import json, os
from ioconnect import keys
for d in json.load(open("cases.json")):
    try:
        k = keys.KeyStore(d + "/identity.key").load()
        out = ["key", k.curve, k.public_key().hex()]
    except keys.NoIdentityError as e:
        out = ["none", str(e)]
    except keys.KeyStoreError as e:
        out = ["error", str(e)]
    print(json.dumps(out + [sorted(os.listdir(d))]))
"""


def good_file(curve_id: int = 1) -> tuple[bytes, bytes]:
    secret = (12345678901234567890).to_bytes(32, "big")
    curve = CURVE_IDS[curve_id]
    pub = host_public_key(curve, secret)
    return encode_key_file(curve_id, secret, pub), pub


def load_dirs(device: RunDevice, root: Path, files: dict[str, dict[str, bytes]]) -> dict[str, Any]:
    for name, content in files.items():
        (root / name).mkdir()
        for fname, data in content.items():
            (root / name / fname).write_bytes(data)
    names = list(files)
    out = device(LOAD_EACH, names, fs_dir=root)
    return dict(zip(names, out, strict=True))


def test_corrupt_or_truncated_files_give_a_reason(device: RunDevice, tmp_path: Path) -> None:
    blob, _ = good_file()
    secret = blob[8:40]
    pub = blob[40:105]
    files: dict[str, dict[str, bytes]] = {}
    for n in range(len(blob)):  # every truncation
        files[f"trunc{n}"] = {"identity.key": blob[:n]}
    for i in range(0, len(blob), 7):  # bit flips across header, key, checksum
        files[f"flip{i}"] = {"identity.key": blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1 :]}
    files["extra"] = {"identity.key": blob + b"\x00"}
    files["version2"] = {"identity.key": encode_key_file(1, secret, pub, version=2)}
    files["curve9"] = {"identity.key": encode_key_file(9, secret, pub)}
    files["zero_d"] = {"identity.key": encode_key_file(1, bytes(32), pub)}
    files["d_eq_n"] = {"identity.key": encode_key_file(1, SECP_N.to_bytes(32, "big"), pub)}
    files["short_pub"] = {"identity.key": encode_key_file(1, secret, pub[:33])}
    files["compressed"] = {"identity.key": encode_key_file(1, secret, b"\x02" + pub[1:65])}
    res = load_dirs(device, tmp_path, files)
    reasons = {
        "trunc0": "truncated",
        "trunc9": "truncated",
        f"trunc{len(blob) - 1}": "length",
        "flip0": "bad magic",
        "flip7": "lengths",
        "flip14": "checksum mismatch",
        "flip133": "checksum mismatch",
        "extra": "length",
        "version2": "version 2",
        "curve9": "curve id 9",
        "zero_d": "out of range",
        "d_eq_n": "out of range",
        "short_pub": "lengths",
        "compressed": "not uncompressed",
    }
    for name, got in res.items():
        assert got[0] == "error", (name, got)
        assert got[1].startswith(name + "/identity.key: "), got
        if name in reasons:
            assert reasons[name] in got[1], (name, got)


def test_leftover_temp_file(device: RunDevice, tmp_path: Path) -> None:
    committed, pub1 = good_file(1)
    other, pub2 = good_file(2)
    res = load_dirs(
        device,
        tmp_path,
        {
            # committed file wins over any temp file
            "garbage_tmp": {"identity.key": committed, "identity.key.tmp": other[:50]},
            "valid_tmp": {"identity.key": committed, "identity.key.tmp": other},
            # commit cut between write and rename: the complete temp file is adopted
            "only_tmp": {"identity.key.tmp": other},
            "partial_tmp": {"identity.key.tmp": other[:-1]},
            "empty": {},
        },
    )
    assert res["garbage_tmp"][:3] == ["key", "secp256k1", pub1.hex()]
    assert res["valid_tmp"][:3] == ["key", "secp256k1", pub1.hex()]
    assert res["only_tmp"] == ["key", "p256", pub2.hex(), ["identity.key"]]
    assert res["partial_tmp"][0] == "none"
    assert res["empty"][0] == "none" and "no identity" in res["empty"][1]


# Power cuts inside the VM (tests/powercut.py) at every step of a key write;
# a fresh VM then loads every directory.
POWER_CUT = (
    """
import json, os
from ioconnect import keys
"""
    + HARNESS
    + """
record[0] = True
for scenario, top in json.load(open("cases.json")):
    for n in range(top + 1):
        d = "%s%d" % (scenario, n)
        os.mkdir(d)
        st = keys.KeyStore(d + "/identity.key")
        old = None
        if scenario == "rotate":
            old = st.create("secp256k1").public_key().hex()
        del attempted[:]
        budget[0] = n
        keys.open = cut_open
        keys.os = CutOs()
        cut = False
        try:
            st.create("p256") if scenario == "create" else st.rotate("p256")
        except PowerCut:
            cut = True
        keys.open = _open
        keys.os = os
        print(json.dumps([d, old, attempted[0] if attempted else None, cut]))
"""
)

BLOB_LEN = 137  # p256 file


def test_power_cut_at_every_byte_leaves_old_or_new_key(device: RunDevice, tmp_path: Path) -> None:
    # create: 137 bytes + 1 rename; rotate: 137 bytes + 2 renames.
    scenarios = [["create", BLOB_LEN + 1], ["rotate", BLOB_LEN + 2]]
    written = device(POWER_CUT, scenarios, fs_dir=tmp_path)
    assert len(written) == BLOB_LEN + 2 + BLOB_LEN + 3
    dirs = [w[0] for w in written]
    (tmp_path / "cases.json").unlink()
    first = device(LOAD_EACH, dirs, fs_dir=tmp_path)
    # A second fresh VM sees the same state: a load that repaired left it clean.
    second = device(LOAD_EACH, dirs, fs_dir=tmp_path)
    outcomes = {"create": set(), "rotate": set()}
    for (d, old, attempted, cut), got, again in zip(written, first, second, strict=True):
        scenario = d.rstrip("0123456789")
        n = int(d[len(scenario) :])
        assert cut == (n < (BLOB_LEN + (2 if scenario == "rotate" else 1))), d
        new = None
        if attempted is not None:
            curve, secret, pub = parse_key_file(bytes.fromhex(attempted))
            assert curve == "p256" and pub == host_public_key(curve, secret)
            new = pub.hex()
        assert got[0] != "error", (d, got)
        state = "none" if got[0] == "none" else got[2]
        if scenario == "create":
            assert state in ("none", new), (d, got)
        else:
            assert state in (old, new), (d, got)
        outcomes[scenario].add("old" if state in ("none", old) else "new")
        assert again[:-1] == got[:-1]
        if got[0] == "key":
            assert "identity.key" in again[-1]
    assert outcomes == {"create": {"old", "new"}, "rotate": {"old", "new"}}


def test_unknown_curve_is_refused(device: RunDevice, tmp_path: Path) -> None:
    code = """
import json
from ioconnect import keys
try:
    keys.KeyStore("identity.key").create(json.load(open("cases.json")))
except keys.KeyStoreError as e:
    print(json.dumps(str(e)))
"""
    [msg] = device(code, "bogus", fs_dir=tmp_path)
    assert "unknown curve" in msg and not (tmp_path / "identity.key").exists()


WRITE_FAILS = """
import json, os
from ioconnect import keys

class FullFile:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
    def write(self, b):
        self.f.write(b[:10])
        raise OSError(28)  # ENOSPC after 10 bytes

_open = open
st = keys.KeyStore("identity.key")
old = st.create("secp256k1").public_key().hex()
keys.open = lambda p, m="r": FullFile(_open(p, m)) if "w" in m else _open(p, m)
try:
    st.rotate("ed25519")
    print(json.dumps("rotated"))
except keys.KeyStoreError as e:
    print(json.dumps(str(e)))
keys.open = _open
print(json.dumps([old, st.load().public_key().hex()]))
"""


def test_write_error_is_reported_and_old_key_kept(device: RunDevice, tmp_path: Path) -> None:
    msg, [old, loaded] = device(WRITE_FAILS, fs_dir=tmp_path)
    assert msg == "identity.key: cannot write the key (errno 28)"
    assert loaded == old
