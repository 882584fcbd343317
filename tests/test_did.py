"""did:io, did:key, JWK and DID documents on MicroPython vs host computations
(pycryptodome keccak, coincurve / cryptography keys, base58, bech32)."""

from __future__ import annotations

import base64
from typing import Any

import base58
import bech32
import coincurve
from conftest import RunDevice
from Crypto.Hash import keccak
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
CODEC = {"secp256k1": b"\xe7\x01", "p256": b"\x80\x24", "ed25519": b"\xed\x01"}

# Each case [curve, public key hex] -> every derived form (or the DIDError).
DERIVE_ON_DEVICE = """
import json
from ioconnect import did
for curve, pub in json.load(open("cases.json")):
    pub = bytes.fromhex(pub)
    try:
        out = {"did_key": did.did_key(curve, pub), "jwk": did.jwk(curve, pub),
               "did_of": did.did_of(curve, pub)}
        if curve != "ed25519" and len(pub) == 65:
            out["did_io"] = did.did_io(pub)
            out["address"] = did.eth_address(pub)
            out["io"] = did.io_address(pub)
    except did.DIDError as e:
        out = {"error": str(e)}
    print(json.dumps(out))
"""


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def host_address(pub65: bytes) -> str:
    return "0x" + keccak.new(digest_bits=256, data=pub65[1:]).digest()[12:].hex()


def host_io(address: str) -> str:
    five = bech32.convertbits(list(bytes.fromhex(address[2:])), 8, 5)
    assert five is not None
    out = bech32.bech32_encode("io", five)
    assert out is not None
    return out


def compress(pub65: bytes) -> bytes:
    return bytes([2 + (pub65[64] & 1)]) + pub65[1:33]


def host_did_key(curve: str, pub: bytes) -> str:
    raw = pub if len(pub) in (32, 33) else compress(pub)
    return "did:key:z" + base58.b58encode(CODEC[curve] + raw).decode()


def host_keys(secp: list[int], p256: list[int], ed: list[bytes]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for d in secp:
        out.append(("secp256k1", coincurve.PrivateKey.from_int(d).public_key.format(False)))
    for d in p256:
        pk = ec.derive_private_key(d, ec.SECP256R1()).public_key()
        out.append(
            (
                "p256",
                pk.public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                ),
            )
        )
    for seed in ed:
        out.append(
            (
                "ed25519",
                ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw(),
            )
        )
    return out


def check_derived(curve: str, pub: bytes, got: dict[str, Any]) -> None:
    assert "error" not in got, got
    assert got["did_key"] == host_did_key(curve, pub)
    if curve == "ed25519":
        assert got["jwk"] == {"kty": "OKP", "crv": "Ed25519", "x": b64u(pub)}
        assert got["did_of"] == got["did_key"]
        return
    full = pub if len(pub) == 65 else None
    crv = "secp256k1" if curve == "secp256k1" else "P-256"
    assert got["jwk"]["kty"] == "EC" and got["jwk"]["crv"] == crv
    x, y = unb64u(got["jwk"]["x"]), unb64u(got["jwk"]["y"])
    if full is not None:
        assert (x, y) == (full[1:33], full[33:])
        addr = host_address(full)
        assert got["address"] == addr
        assert got["did_io"] == got["did_of"] == "did:io:" + addr
        assert got["io"] == host_io(addr)
    else:
        assert compress(b"\x04" + x + y) == pub  # decompressed on the device


@settings(
    max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    secp=st.lists(st.integers(1, SECP_N - 1), min_size=12, max_size=12),
    p256=st.lists(st.integers(1, P256_N - 1), min_size=12, max_size=12),
    ed=st.lists(st.binary(min_size=32, max_size=32), min_size=6, max_size=6),
)
def test_derivations_match_host(
    device: RunDevice, secp: list[int], p256: list[int], ed: list[bytes]
) -> None:
    keys = host_keys(secp, p256, ed)
    cases = [[c, p.hex()] for c, p in keys]
    # the compressed forms too: did:key / JWK must decompress on the device
    cases += [[c, compress(p).hex()] for c, p in keys if c != "ed25519"]
    out = device(DERIVE_ON_DEVICE, cases)
    assert len(out) == len(cases)
    for (curve, pub_hex), got in zip(cases, out, strict=True):
        check_derived(curve, bytes.fromhex(pub_hex), got)


def test_published_vectors(device: RunDevice) -> None:
    rows = [
        (
            "secp256k1",
            "KAkqUSARxKvyrfkykUH9fl5Ef6AbcaoEWQgi8IwFdIo",
            "dmlXLytvKgIVH4hgPP2Tzlp6dJbq5KWtluiX1U1v9o0",
            "did:io:0xba80b710f0c27c8b3b72df63861e2ecea9c5aa73",
        ),
        (
            "p256",
            "WIbBzvEz-6beOyvZtVmtN9J1EvPlgKUPDTPZy3kJJnk",
            "OvsnblaTwctIM2tP3pu8kh2RxpXxIwwtNceM4Z9iKcI",
            "did:io:0xfab99326ce27d0d30b8609e6d4d748629242b077",
        ),
    ]
    cases = [[c, (b"\x04" + unb64u(x) + unb64u(y)).hex()] for c, x, y, _ in rows]
    out = device(DERIVE_ON_DEVICE, cases)
    for (_, x, y, did_io), got in zip(rows, out, strict=True):
        assert got["did_io"] == did_io
        assert (got["jwk"]["x"], got["jwk"]["y"]) == (x, y)
    assert out[0]["did_key"] == "did:key:zQ3shhLPYLN3Dz9WiccYZ6yeDrB3WPt6MCJQWPzM76UADSA8h"
    # The published P-256 private key gives the published JWK (host check of the vector).
    d = int.from_bytes(base64.b64decode("vebfEf+v2rLUzFm2mMH9XzPbZJFzaEj3nctUCnoAbMw="), "big")
    nums = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
    assert b64u(nums.x.to_bytes(32, "big")) == rows[1][1]


PRIVATE_TO_ACCOUNT = """
import json
from ioconnect import did, ecdsa
for curve, d in json.load(open("cases.json")):
    pub = ecdsa.public_key(ecdsa.curve_by_name(curve), int(d, 16))
    print(json.dumps([pub.hex(), did.eth_address(pub), did.io_address(pub), did.did_io(pub)]))
"""


def test_private_key_to_account_vector(device: RunDevice) -> None:
    d = "449e725560cd54b853e0825662b8d5c8fcb4e0516fe5a0a1509df4c4b9484d87"
    other = coincurve.PrivateKey().secret.hex()
    out = device(PRIVATE_TO_ACCOUNT, [["secp256k1", d], ["secp256k1", other]])
    assert out[0] == [
        "048bd8fc85cdfc3fd1e3377f4c60eca5bd1ab49a1ac69ea6551fbfb74c9295999b5d155909e3f6f9f04fb52e"
        "03a84732e5a472ae88512a436958a334f74f416702",
        "0xb7009dd6858c73df7ce1a9edc47fbd5688b82f22",
        "io1kuqfm45933ea7l8p48kuglaa26ytstezs2lrts",
        "did:io:0xb7009dd6858c73df7ce1a9edc47fbd5688b82f22",
    ]
    # eth-account is a third, independent derivation of the address.
    assert out[1][1] == Account.from_key(bytes.fromhex(other)).address.lower()


DOCUMENT_ON_DEVICE = """
import json
from ioconnect import did
class K:
    def __init__(self, curve, pub):
        self.curve = curve
        self.pub = pub
    def public_key(self, compressed=False):
        return self.pub
for curve, pub, ka in json.load(open("cases.json")):
    ka = bytes.fromhex(ka) if ka else None
    print(json.dumps(did.did_document(K(curve, bytes.fromhex(pub)), ka)))
"""


def test_did_documents(device: RunDevice) -> None:
    keys = host_keys([7], [11], [bytes(range(32))])
    ka = host_keys([], [13], [])[0][1]
    cases = [[c, p.hex(), None] for c, p in keys] + [[keys[0][0], keys[0][1].hex(), ka.hex()]]
    out = device(DOCUMENT_ON_DEVICE, cases)
    names = {"secp256k1": "secp256k1", "p256": "p256", "ed25519": "ed25519"}
    for (curve, pub_hex, ka_hex), doc in zip(cases, out, strict=True):
        pub = bytes.fromhex(pub_hex)
        did = host_did_key(curve, pub) if curve == "ed25519" else "did:io:" + host_address(pub)
        kid = f"{did}#Key-{names[curve]}-1"
        assert doc["@context"][0] == "https://www.w3.org/ns/did/v1"
        assert "https://w3id.org/security/suites/jws-2020/v1" in doc["@context"]
        assert doc["id"] == did
        vm = doc["verificationMethod"][0]
        assert vm["id"] == kid and vm["type"] == "JsonWebKey2020" and vm["controller"] == did
        jwk = vm["publicKeyJwk"]
        if curve == "ed25519":
            assert unb64u(jwk["x"]) == pub and jwk["crv"] == "Ed25519"
        else:
            assert b"\x04" + unb64u(jwk["x"]) + unb64u(jwk["y"]) == pub
        assert doc["authentication"] == [kid] and doc["assertionMethod"] == [kid]
        if ka_hex:
            assert len(doc["verificationMethod"]) == 2
            ka_vm = doc["verificationMethod"][1]
            assert ka_vm["id"] == f"{did}#Key-p256-2" and doc["keyAgreement"] == [ka_vm["id"]]
            assert ka_vm["publicKeyJwk"]["crv"] == "P-256"
            assert (
                b"\x04" + unb64u(ka_vm["publicKeyJwk"]["x"]) + unb64u(ka_vm["publicKeyJwk"]["y"])
                == ka
            )
        else:
            assert "keyAgreement" not in doc and len(doc["verificationMethod"]) == 1


def test_bad_keys_are_rejected(device: RunDevice) -> None:
    secp = host_keys([5], [], [])[0][1]
    off_curve = secp[:64] + bytes([secp[64] ^ 1])
    cases = [
        ["secp256k1", secp[:64].hex()],  # 64 bytes is not a key encoding did_key accepts
        ["secp256k1", off_curve.hex()],
        ["p256", secp.hex()],  # a secp256k1 point is not on P-256
        ["secp256k1", ("05" + secp[1:].hex())],
        ["ed25519", secp.hex()],
        ["secp384r1", secp.hex()],
        ["secp256k1", "02" + "ff" * 32],  # x >= p
    ]
    out = device(DERIVE_ON_DEVICE, cases)
    for case, got in zip(cases, out, strict=True):
        assert got.get("error"), (case, got)
