"""ioconnect.cose on MicroPython against pycose, cbor2 and cryptography.

pycose 1.1 has no ES256K (-47), so secp256k1 tokens are checked on the host with
cbor2 (Sig_structure) and cryptography (ECDSA on SECP256K1) instead.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm, Critical
from pycose.keys import EC2Key, OKPKey
from pycose.keys.curves import P256, Ed25519
from pycose.messages import Sign1Message

# Fixed keys: PROTOCOLS.md secp256k1 and P-256 keys, RFC 8032 test 1 seed.
SECRETS = {
    "secp256k1": bytes.fromhex("449e725560cd54b853e0825662b8d5c8fcb4e0516fe5a0a1509df4c4b9484d87"),
    "p256": base64.b64decode("vebfEf+v2rLUzFm2mMH9XzPbZJFzaEj3nctUCnoAbMw="),
    "ed25519": bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
}
ALG = {"secp256k1": -47, "p256": -7, "ed25519": -8}

PRELUDE = r"""
import json, hashlib, binascii
from ioconnect import cose
class FixedKey:
    def __init__(self, curve, secret):
        self.curve = curve
        self.secret = secret
    def sign(self, msg):
        if self.curve == "ed25519":
            from ioconnect import ed25519
            return ed25519.sign(self.secret, msg)
        from ioconnect import ecdsa
        c = ecdsa.curve_by_name(self.curve)
        return ecdsa.sign_digest(c, int.from_bytes(self.secret, "big"),
                                 hashlib.sha256(msg).digest())[0]
def hx(b):
    return binascii.hexlify(b).decode()
def unhex(s):
    return binascii.unhexlify(s)
"""

SIGN = r"""
with open("cases.txt") as f:
    for line in f:
        c = json.loads(line)
        key = FixedKey(c["curve"], unhex(c["secret"]))
        kid = unhex(c["kid"]) if c["kid"] is not None else None
        tok = cose.sign1(key, unhex(c["payload"]), kid, unhex(c["aad"]))
        print(json.dumps(hx(tok)))
"""

VERIFY = r"""
with open("cases.txt") as f:
    for line in f:
        c = json.loads(line)
        try:
            p = cose.verify1(c["curve"], unhex(c["pub"]), unhex(c["token"]), unhex(c["aad"]))
            print(json.dumps({"ok": hx(p)}))
        except cose.COSEError as e:
            print(json.dumps({"err": str(e)}))
"""


def private(curve: str) -> Any:
    s = SECRETS[curve]
    if curve == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(s)
    ec_curve = ec.SECP256K1() if curve == "secp256k1" else ec.SECP256R1()
    return ec.derive_private_key(int.from_bytes(s, "big"), ec_curve)


def public_bytes(curve: str) -> bytes:
    pub = private(curve).public_key()
    if curve == "ed25519":
        return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def pycose_key(curve: str) -> Any:
    pub = public_bytes(curve)
    if curve == "ed25519":
        return OKPKey(crv=Ed25519, x=pub, d=SECRETS[curve])
    return EC2Key(crv=P256, x=pub[1:33], y=pub[33:], d=SECRETS[curve])


def run_lines(device, tmp: Path, code: str, cases: list[dict[str, Any]]) -> list[Any]:
    (tmp / "cases.txt").write_text("".join(json.dumps(c) + "\n" for c in cases))
    out = device(PRELUDE + code, fs_dir=tmp)
    assert len(out) == len(cases)
    return out


def sig_structure(protected: bytes, aad: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, aad, payload])


def host_verify_es256k(token: bytes, aad: bytes) -> bool:
    tag = cbor2.loads(token)
    protected, _, payload, sig = tag.value
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        private("secp256k1").public_key().verify(
            der, sig_structure(protected, aad, payload), ec.ECDSA(hashes.SHA256())
        )
        return True
    except Exception:
        return False


def pycose_decode(token: bytes) -> Sign1Message:
    # pycose 1.1's own decode() wants a list inside the tag; cbor2 6 gives a
    # tuple, so hand pycose the decoded structure directly.
    tag = cbor2.loads(token)
    assert tag.tag == 18
    protected, unprotected, payload, sig = tag.value
    return Sign1Message.from_cose_obj([protected, dict(unprotected), payload, sig], True)


def host_verify(curve: str, token: bytes, aad: bytes) -> bool:
    if curve == "secp256k1":
        return host_verify_es256k(token, aad)
    msg = pycose_decode(token)
    msg.key = pycose_key(curve)
    msg.external_aad = aad
    try:
        return bool(msg.verify_signature())
    except Exception:
        return False


BATCH = settings(
    max_examples=5, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)


@BATCH
@given(
    cases=st.lists(
        st.fixed_dictionaries(
            {
                "curve": st.sampled_from(sorted(SECRETS)),
                "payload": st.binary(max_size=300).map(bytes.hex),
                "kid": st.none() | st.binary(min_size=1, max_size=16).map(bytes.hex),
                "aad": st.sampled_from(["", "00", b"context".hex()]),
            }
        ),
        min_size=12,
        max_size=12,
    )
)
def test_device_tokens_verify_on_host(device, tmp_path_factory, cases):
    for c in cases:
        c["secret"] = SECRETS[c["curve"]].hex()
    dev = run_lines(device, tmp_path_factory.mktemp("sign"), SIGN, cases)
    for c, tok_hex in zip(cases, dev, strict=True):
        token, aad, curve = bytes.fromhex(tok_hex), bytes.fromhex(c["aad"]), c["curve"]
        tag = cbor2.loads(token)
        assert tag.tag == 18
        protected, unprotected, payload, sig = tag.value
        assert cbor2.loads(protected) == {1: ALG[curve]}
        assert protected == cbor2.dumps({1: ALG[curve]})
        assert unprotected == ({} if c["kid"] is None else {4: bytes.fromhex(c["kid"])})
        assert payload == bytes.fromhex(c["payload"]) and len(sig) == 64
        assert host_verify(curve, token, aad), c
        # the host check can fail: a flipped signature bit must not verify
        bad = cbor2.dumps(
            cbor2.CBORTag(18, [protected, unprotected, payload, bytes([sig[0] ^ 1]) + sig[1:]])
        )
        assert not host_verify(curve, bad, aad)
        if curve == "ed25519":  # deterministic: the exact signature is known
            assert sig == private(curve).sign(sig_structure(protected, aad, payload))


def host_token(curve: str, payload: bytes, aad: bytes, kid: bytes | None, **hdr: Any) -> bytes:
    """A COSE_Sign1 made on the host (pycose; cbor2 + cryptography for ES256K)."""
    if curve == "secp256k1":
        protected = cbor2.dumps({1: hdr.get("alg", -47), **hdr.get("extra", {})})
        der = private(curve).sign(sig_structure(protected, aad, payload), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return cbor2.dumps(cbor2.CBORTag(18, [protected, {4: kid} if kid else {}, payload, sig]))
    phdr: dict[Any, Any] = {Algorithm: Es256 if curve == "p256" else EdDSA}
    phdr.update(hdr.get("pycose", {}))
    msg = Sign1Message(phdr=phdr, uhdr={KID: kid} if kid else {}, payload=payload)
    msg.key = pycose_key(curve)
    msg.external_aad = aad
    return bytes(msg.encode())


def test_host_tokens_verify_on_device(device, tmp_path):
    cases: list[dict[str, Any]] = []
    expect: list[str] = []

    def add(curve: str, token: bytes, aad: bytes, want: str, pub: bytes | None = None) -> None:
        cases.append(
            {
                "curve": curve,
                "pub": (pub or public_bytes(curve)).hex(),
                "token": token.hex(),
                "aad": aad.hex(),
            }
        )
        expect.append(want)

    for curve in sorted(SECRETS):
        for payload, aad, kid in (
            (b"", b"", None),
            (b'{"t":21}', b"", b"k1"),
            (b"\x00" * 200, b"ctx", None),
        ):
            tok = host_token(curve, payload, aad, kid)
            add(curve, tok, aad, "ok:" + payload.hex())
            add(curve, tok, b"other", "err:does not verify")  # wrong external_aad
            tag = cbor2.loads(tok)
            add(curve, cbor2.dumps(tag.value), aad, "ok:" + payload.hex())  # untagged is fine
            p, u, pl, sig = tag.value
            add(
                curve,
                cbor2.dumps(cbor2.CBORTag(18, [p, u, pl + b"x", sig])),
                aad,
                "err:does not verify",
            )
            add(curve, tok[:-1], aad, "err:bad CBOR")
        other = "p256" if curve != "p256" else "secp256k1"
        add(curve, host_token(other, b"x", b"", None), b"", "err:does not match")
        add(
            curve,
            cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"x", b"0" * 64])),
            b"",
            "err:not COSE_Sign1",
        )
    # a wrong key of the right curve
    stranger = ec.generate_private_key(ec.SECP256K1()).public_key()
    add(
        "secp256k1",
        host_token("secp256k1", b"x", b"", None),
        b"",
        "err:does not verify",
        pub=stranger.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint),
    )
    # critical headers are refused even when the signature is good
    add(
        "secp256k1",
        host_token("secp256k1", b"x", b"", None, extra={2: [99], 99: 1}),
        b"",
        "err:critical",
    )
    add(
        "p256",
        host_token("p256", b"x", b"", None, pycose={Critical: [99], 99: 1}),
        b"",
        "err:critical",
    )

    # One VM per verifying curve: a device holds one key, so loads one curve.
    dev: list[Any] = [None] * len(cases)
    for curve in sorted(SECRETS):
        idx = [i for i, c in enumerate(cases) if c["curve"] == curve]
        tmp = tmp_path / curve
        tmp.mkdir()
        for i, d in zip(idx, run_lines(device, tmp, VERIFY, [cases[i] for i in idx]), strict=True):
            dev[i] = d
    for c, want, d in zip(cases, expect, dev, strict=True):
        kind, _, detail = want.partition(":")
        if kind == "ok":
            assert d == {"ok": detail}, (c, d)
        else:
            assert "err" in d and detail in d["err"], (c, want, d)


@pytest.mark.parametrize("curve", sorted(SECRETS))
def test_roundtrip_with_keystore_key(device, tmp_path, curve):
    code = r"""
from ioconnect.keys import KeyStore
curve = CURVE
k = KeyStore(curve + ".key").create(curve)
tok = cose.sign1(k, b"reading", b"dev")
print(json.dumps({"pub": hx(k.public_key()), "token": hx(tok),
                  "self": hx(cose.verify1(curve, k.public_key(), tok))}))
"""
    (out,) = device(PRELUDE + f"CURVE = {curve!r}\n" + code, fs_dir=tmp_path)
    assert out["self"] == b"reading".hex()
    token, pub = bytes.fromhex(out["token"]), bytes.fromhex(out["pub"])
    protected, unprotected, payload, sig = cbor2.loads(token).value
    assert unprotected == {4: b"dev"} and payload == b"reading"
    tbs = sig_structure(protected, b"", payload)
    if curve == "ed25519":
        ed25519.Ed25519PublicKey.from_public_bytes(pub).verify(sig, tbs)
    else:
        c = ec.SECP256K1() if curve == "secp256k1" else ec.SECP256R1()
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        ec.EllipticCurvePublicKey.from_encoded_point(c, pub).verify(
            der, tbs, ec.ECDSA(hashes.SHA256())
        )
