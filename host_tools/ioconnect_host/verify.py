"""Check on the host what a device sends: its identity and every signature.

Independent libraries only (coincurve for secp256k1 recovery, cryptography for
P-256 and Ed25519, pycryptodome's keccak), never the device code: two
implementations that agree are the cross-check.

Example:
    >>> check_identity(agent.identity_show(board))
    >>> check_signature(ident, "ioid", args, agent.sign(board, "ioid", **args))
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import coincurve
from Crypto.Hash import keccak
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import IoconnectError

__all__ = [
    "IOID_REGISTRY",
    "UnknownCurveError",
    "VerificationError",
    "check_identity",
    "check_signature",
    "ioid_permit_digest",
    "keccak256",
    "public_point",
    "recover_address",
]

#: ioIDRegistry contracts by chain id (IoTeX mainnet, testnet).
IOID_REGISTRY = {
    4689: "0x04e4655Cf258EC802D17c23ec6112Ef7d97Fa2aF",
    4690: "0x0A7e595C7889dF3652A19aF52C18377bF17e027D",
}
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_MULTICODEC = {"secp256k1": b"\xe7\x01", "p256": b"\x80\x24", "ed25519": b"\xed\x01"}
_COSE_ALG = {"secp256k1": -47, "p256": -7, "ed25519": -8}


class VerificationError(IoconnectError):
    """What the device sent does not check out on the host."""


def keccak256(data: bytes) -> bytes:
    """Original Keccak-256 (Ethereum's), not SHA3-256."""
    return keccak.new(digest_bits=256, data=data).digest()


def _address_of(pub65: bytes) -> str:
    return "0x" + keccak256(pub65[1:])[12:].hex()


def _b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


class UnknownCurveError(ValueError):
    """A curve other than secp256k1, p256 and ed25519."""


def public_point(curve: str, key: bytes, *, compressed: bool) -> bytes:
    """The key as a SEC1 point (0x04||X||Y, or 0x02/0x03||X ``compressed``) for the
    ECDSA curves, or as is for Ed25519; parsing it with an independent library
    proves it is on the curve.

    Raises:
        UnknownCurveError: ``curve`` is none of ours.
        ValueError: not a point of the curve.
    """
    if curve == "secp256k1":
        return bytes(coincurve.PublicKey(key).format(compressed=compressed))
    if curve == "p256":
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
        form = PublicFormat.CompressedPoint if compressed else PublicFormat.UncompressedPoint
        return point.public_bytes(Encoding.X962, form)
    if curve == "ed25519":
        ed25519.Ed25519PublicKey.from_public_bytes(key)
        return key
    raise UnknownCurveError(f"unknown curve {curve!r}")


def _compressed(curve: str, pub: bytes) -> bytes:
    try:
        return public_point(curve, pub, compressed=True)
    except UnknownCurveError:
        raise VerificationError(f"the device reported an unknown curve {curve!r}") from None
    except ValueError as exc:
        raise VerificationError(f"the device's {curve} public key is invalid: {exc}") from exc


def check_identity(ident: dict[str, Any]) -> None:
    """Recompute address, did:io and did:key from the public key; compare.

    Args:
        ident: ``identity.create/show/rotate`` result (curve, public_key, did, did_key, address).

    Raises:
        VerificationError: a field does not follow from the public key.
    """
    curve = str(ident.get("curve"))
    try:
        pub = bytes.fromhex(str(ident.get("public_key")))
    except ValueError as exc:
        raise VerificationError("the device's public key is not hex") from exc
    comp = _compressed(curve, pub)
    expect_key = "did:key:z" + _b58(_MULTICODEC[curve] + comp)
    if ident.get("did_key") != expect_key:
        raise VerificationError(f"did:key {ident.get('did_key')} does not match the public key")
    if curve == "ed25519":
        expect_did = expect_key
    else:
        address = _address_of(pub)
        if str(ident.get("address")).lower() != address:
            raise VerificationError(f"address {ident.get('address')} is not keccak of the key")
        expect_did = "did:io:" + address
    if str(ident.get("did")).lower() != expect_did.lower():
        raise VerificationError(f"DID {ident.get('did')} does not match the public key")


def recover_address(digest: bytes, sig65: bytes) -> str:
    """Ethereum address that signed ``digest`` (r||s||v, v 0/1 or 27/28), by coincurve."""
    if len(sig65) != 65:
        raise VerificationError(f"signature has {len(sig65)} bytes, not 65")
    v = sig65[64] - 27 if sig65[64] >= 27 else sig65[64]
    if v not in (0, 1):
        raise VerificationError(f"signature v={sig65[64]} is not 0/1/27/28")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            sig65[:64] + bytes([v]), digest, hasher=None
        )
    except ValueError as exc:
        raise VerificationError(f"no key recovers from the signature: {exc}") from exc
    return _address_of(bytes(pub.format(compressed=False)))


def _address_bytes(text: str, what: str) -> bytes:
    if not (isinstance(text, str) and len(text) == 42 and text[:2] in ("0x", "0X")):
        raise VerificationError(f"{what} must be 0x and 40 hex digits, not {text!r}")
    try:
        return bytes.fromhex(text[2:])
    except ValueError as exc:
        raise VerificationError(f"{what} must be 0x and 40 hex digits, not {text!r}") from exc


def ioid_permit_digest(owner: str, nonce: int, chain_id: int, registry: str) -> bytes:
    """EIP-712 digest of ioIDRegistry ``Permit(address owner,uint256 nonce)``."""
    domain_type = (
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    domain = keccak256(
        keccak256(domain_type)
        + keccak256(b"ioIDRegistry")
        + keccak256(b"1")
        + chain_id.to_bytes(32, "big")
        + bytes(12)
        + _address_bytes(registry, "registry")
    )
    struct = keccak256(
        keccak256(b"Permit(address owner,uint256 nonce)")
        + bytes(12)
        + _address_bytes(owner, "owner")
        + nonce.to_bytes(32, "big")
    )
    return keccak256(b"\x19\x01" + domain + struct)


def _expect_signer(ident: dict[str, Any], digest: bytes, sig65: bytes, what: str) -> None:
    signer = recover_address(digest, sig65)
    if signer != str(ident.get("address")).lower():
        raise VerificationError(f"{what} recovers to {signer}, not the device {ident['address']}")


def _signed_body(request: str) -> bytes:
    # The device appended `,"signature":"0x…"` in place of the closing brace.
    i = request.rfind(',"signature":"0x')
    if i < 0 or not request.endswith('"}'):
        raise VerificationError("signed request has no trailing signature field")
    return (request[:i] + "}").encode()


def _task_digest(body: bytes, signed_keys: list[str]) -> bytes:
    h1 = hashlib.sha256(body).digest()
    if not signed_keys:
        return h1
    payload = json.loads(body)["payload"]
    h = hashlib.sha256(h1)
    for name in signed_keys:
        value: Any = payload
        for part in name.split("."):
            value = value[part]
        h.update(int(value).to_bytes(8, "little"))
    return h.digest()


def check_signature(
    ident: dict[str, Any], profile: str, args: dict[str, Any], result: dict[str, Any]
) -> None:
    """Check a ``sign`` result against the device's identity (independent libraries).

    Raises:
        VerificationError: the signature does not verify, or does not come from the device.
    """
    if profile == "w3bstream":
        request = str(result["request"])
        body = _signed_body(request)
        sig = bytes.fromhex(json.loads(request)["signature"][2:])
        digest = _task_digest(body, list(args.get("signed_keys") or []))
        # The node tries both recovery ids; the device is the signer under one of them.
        signers = {recover_address(digest, sig + bytes([v])) for v in (0, 1)}
        if str(ident.get("address")).lower() not in signers:
            raise VerificationError("the W3bstream task is not signed by the device key")
    elif profile == "sprout":
        request = str(result["request"])
        sig = bytes.fromhex(json.loads(request)["signature"][2:])
        _expect_signer(ident, keccak256(_signed_body(request)), sig, "the sprout message")
    elif profile == "ioid":
        chain = int(args.get("chain_id", 4689))
        registry = str(args.get("registry") or IOID_REGISTRY.get(chain, ""))
        digest = ioid_permit_digest(str(args["owner"]), int(args["nonce"]), chain, registry)
        if result.get("digest") != digest.hex():
            raise VerificationError("the device's ioID permit digest differs from the host's")
        _expect_signer(ident, digest, bytes.fromhex(result["signature"]), "the ioID permit")
    elif profile == "eip191":
        msg = _payload_bytes(args)
        digest = keccak256(b"\x19Ethereum Signed Message:\n" + str(len(msg)).encode() + msg)
        _expect_signer(ident, digest, bytes.fromhex(result["signature"]), "the EIP-191 signature")
    elif profile == "cose":
        _check_cose(ident, _payload_bytes(args), bytes.fromhex(result["token"]))
    else:
        raise VerificationError(f"no host check for signing profile {profile!r}")


def _payload_bytes(args: dict[str, Any]) -> bytes:
    if "payload_hex" in args:
        return bytes.fromhex(str(args["payload_hex"]))
    return str(args.get("payload", "")).encode()


# -- COSE_Sign1: just enough CBOR to take the token apart and rebuild Sig_structure --


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise VerificationError("CBOR length too large")


def _cbor_read(data: bytes, i: int) -> tuple[Any, int]:
    """One CBOR item (ints, byte/text strings, arrays, maps, tags) at ``i``."""
    if i >= len(data):
        raise VerificationError("COSE token is truncated")
    major, info = data[i] >> 5, data[i] & 31
    i += 1
    if info < 24:
        n = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        n = int.from_bytes(data[i : i + size], "big")
        i += size
    else:
        raise VerificationError("COSE token uses CBOR the device never writes")
    if major == 0:
        return n, i
    if major == 1:
        return -1 - n, i
    if major in (2, 3):
        raw = data[i : i + n]
        if len(raw) != n:
            raise VerificationError("COSE token is truncated")
        return (raw if major == 2 else raw.decode()), i + n
    if major == 4:
        items = []
        for _ in range(n):
            item, i = _cbor_read(data, i)
            items.append(item)
        return items, i
    if major == 5:
        pairs = {}
        for _ in range(n):
            key, i = _cbor_read(data, i)
            pairs[key], i = _cbor_read(data, i)
        return pairs, i
    if major == 6:
        value, i = _cbor_read(data, i)
        return ("tag", n, value), i
    raise VerificationError("COSE token uses CBOR the device never writes")


def _check_cose(ident: dict[str, Any], payload: bytes, token: bytes) -> None:
    msg, end = _cbor_read(token, 0)
    if end != len(token) or not (isinstance(msg, tuple) and msg[1] == 18):
        raise VerificationError("the device's token is not a tagged COSE_Sign1")
    protected, _unprotected, signed_payload, sig = msg[2]
    curve = str(ident["curve"])
    header, _ = _cbor_read(protected, 0)
    if header != {1: _COSE_ALG[curve]} or signed_payload != payload:
        raise VerificationError("the COSE token's header or payload is not what was asked")
    tbs = (
        _cbor_head(4, 4)
        + _cbor_head(3, 10)
        + b"Signature1"
        + _cbor_head(2, len(protected))
        + protected
        + _cbor_head(2, 0)
        + _cbor_head(2, len(payload))
        + payload
    )
    pub = bytes.fromhex(str(ident["public_key"]))
    try:
        if curve == "ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(pub).verify(sig, tbs)
            return
        named: ec.EllipticCurve = ec.SECP256K1() if curve == "secp256k1" else ec.SECP256R1()
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        key = ec.EllipticCurvePublicKey.from_encoded_point(named, pub)
        key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationError("the COSE signature does not verify with the device key") from exc
