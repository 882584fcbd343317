"""Verify a COSE_Sign1 token (RFC 9052): ES256K, ES256 or EdDSA, explained field by field.

The device writes ``tag 18 [protected bstr {1: alg}, {4: kid}, payload bstr,
signature bstr]`` with its DID as kid (firmware ioconnect/cose.py); tokens
from other signers (pycose, untagged) are taken too. The signature is over
``["Signature1", protected, external_aad, payload]`` in CBOR, checked with
cryptography; the key comes from the claimed identity, from a did:key kid, or
(ES256K) is recovered from the signature and held against a did:io kid or
claimed address.

Example:
    >>> verify_cose(token, claim=None).signer    # kid is a did:key: self-contained
    'did:key:z6Mk…'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import coincurve
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .signer import Claim, address_of_key, decode_did_key
from .verdict import MalformedError, Verdict

__all__ = ["ALGORITHMS", "Sign1", "parse_sign1", "sig_structure", "verify_cose"]

#: COSE algorithm ids ioconnect devices use: (name, curve).
ALGORITHMS = {-47: ("ES256K", "secp256k1"), -7: ("ES256", "p256"), -8: ("EdDSA", "ed25519")}
_NAMES = {-35: "ES384", -36: "ES512", -37: "PS256", 5: "HMAC 256/256"}


@dataclass(frozen=True)
class Sign1:
    """A COSE_Sign1 token taken apart."""

    tagged: bool
    protected: bytes  # the protected header as signed (bstr contents)
    header: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes


class _Reader:
    """Strict CBOR reading of what a COSE_Sign1 holds (definite lengths only)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def _take(self, n: int) -> bytes:
        if self.i + n > len(self.data):
            raise MalformedError(
                f"COSE token is truncated: {len(self.data)} bytes, byte {self.i + n} needed"
            )
        out = self.data[self.i : self.i + n]
        self.i += n
        return out

    def item(self, depth: int = 0) -> Any:
        if depth > 16:
            raise MalformedError("COSE token nests deeper than any header does")
        at = self.i
        first = self._take(1)[0]
        major, info = first >> 5, first & 31
        if info < 24:
            n = info
        elif info <= 27:
            n = int.from_bytes(self._take(1 << (info - 24)), "big")
        else:
            raise MalformedError(f"COSE token: indefinite or reserved CBOR length at byte {at}")
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return self._take(n)
        if major == 3:
            try:
                return self._take(n).decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedError(f"COSE token: text at byte {at} is not UTF-8") from None
        if major == 4:
            return [self.item(depth + 1) for _ in range(n)]
        if major == 5:
            out: dict[Any, Any] = {}
            for _ in range(n):
                key = self.item(depth + 1)
                if isinstance(key, (list, dict)):
                    raise MalformedError(f"COSE token: a map key at byte {at} is not a label")
                out[key] = self.item(depth + 1)
            return out
        if major == 6:
            return ("tag", n, self.item(depth + 1))
        raise MalformedError(f"COSE token: CBOR simple value at byte {at} (no header uses one)")


def _decode(data: bytes, what: str) -> Any:
    r = _Reader(data)
    value = r.item()
    if r.i != len(data):
        raise MalformedError(f"{what}: {len(data) - r.i} bytes after its end")
    return value


def parse_sign1(data: bytes) -> Sign1:
    """Take a token apart (tagged 18, or the bare 4-item array).

    Raises:
        MalformedError: not CBOR, truncated, or not a COSE_Sign1.
    """
    if not data:
        raise MalformedError("COSE token is empty")
    msg = _decode(data, "COSE token")
    tagged = isinstance(msg, tuple)
    if tagged:
        if msg[1] != 18:
            raise MalformedError(f"CBOR tag {msg[1]} is not COSE_Sign1 (18)")
        msg = msg[2]
    if not (isinstance(msg, list) and len(msg) == 4):
        raise MalformedError("COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, sig = msg
    if not isinstance(protected, bytes) or not isinstance(unprotected, dict):
        raise MalformedError("COSE_Sign1 headers must be a byte string and a map")
    if not isinstance(payload, bytes):
        raise MalformedError("COSE_Sign1 payload must be a byte string (detached: not supported)")
    if not isinstance(sig, bytes):
        raise MalformedError("COSE_Sign1 signature must be a byte string")
    header = _decode(protected, "protected header") if protected else {}
    if not isinstance(header, dict):
        raise MalformedError("COSE protected header must be a map")
    return Sign1(tagged, protected, header, unprotected, payload, sig)


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    size = 1 if n < 256 else 2 if n < 65536 else 4 if n < 1 << 32 else 8
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[size]]) + n.to_bytes(size, "big")


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The CBOR bytes a COSE_Sign1 signature covers."""
    out = _head(4, 4) + _head(3, 10) + b"Signature1"
    for part in (protected, external_aad, payload):
        out += _head(2, len(part)) + part
    return out


def _ecdsa_ok(curve: str, key: bytes, sig: bytes, tbs: bytes) -> bool:
    named: ec.EllipticCurve = ec.SECP256K1() if curve == "secp256k1" else ec.SECP256R1()
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(named, key).verify(
            der, tbs, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        return False
    return True


def _signature_ok(curve: str, key: bytes, sig: bytes, tbs: bytes) -> bool:
    if curve == "ed25519":
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(key).verify(sig, tbs)
        except InvalidSignature:
            return False
        return True
    return _ecdsa_ok(curve, key, sig, tbs)


def _recover_k1(sig: bytes, tbs: bytes, address: str) -> bytes | None:
    """The secp256k1 key with ``address`` that made ``sig`` over sha256(tbs), if any."""
    digest = hashlib.sha256(tbs).digest()
    for recid in (0, 1):
        try:
            pub = coincurve.PublicKey.from_signature_and_message(
                sig + bytes([recid]), digest, hasher=None
            ).format(compressed=False)
        except ValueError:
            continue
        if address_of_key("secp256k1", pub) == address:
            return bytes(pub)
    return None


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + data.hex()


def verify_cose(data: bytes, claim: Claim | None) -> Verdict:
    """A COSE_Sign1 token.

    Raises:
        MalformedError: not a COSE_Sign1, or no key to check it with (neither a
            did:key kid, nor a claimed key, nor an ES256K signer address).
    """
    tok = parse_sign1(data)
    v = Verdict("cose")
    v.add(
        "tag", "18 (COSE_Sign1)" if tok.tagged else "none", "" if tok.tagged else "untagged array"
    )
    alg = tok.header.get(1)
    known = ALGORITHMS.get(alg) if isinstance(alg, int) else None
    name = known[0] if known else _NAMES.get(alg, "unknown") if isinstance(alg, int) else "missing"
    v.add("protected alg", f"{alg} ({name})", "signed header", known is not None)
    if 2 in tok.header:
        v.add(
            "protected crit", tok.header[2], "critical headers this verifier does not know", False
        )
        v.fail("the token lists critical headers (crit) this verifier does not understand")
    kid_raw = tok.unprotected.get(4, tok.header.get(4))
    kid = _text(kid_raw) if isinstance(kid_raw, bytes) else None
    if kid is not None:
        v.add("kid", kid, "key id (the device puts its DID here); not itself signed")
    v.add("payload", _text(tok.payload), f"{len(tok.payload)} bytes")
    tbs = sig_structure(tok.protected, tok.payload)
    v.add("Sig_structure", f"{len(tbs)} bytes", "[\"Signature1\", protected, h'', payload]")
    if known is None:
        v.add("signature", "0x" + tok.signature.hex(), "not checked")
        v.fail(f"COSE algorithm {alg} ({name}) is not ES256K, ES256 or EdDSA")
        return v
    alg_name, curve = known
    want = 64
    if len(tok.signature) != want:
        v.add(
            "signature",
            "0x" + tok.signature.hex(),
            f"{len(tok.signature)} bytes, not {want}",
            False,
        )
        v.fail(f"{alg_name} signature has {len(tok.signature)} bytes, not {want}")
        return v
    if claim is not None and claim.curve is not None and claim.curve != curve:
        v.signer_checked = True
        v.add("claimed signer", claim.label, f"a {claim.curve} key", False)
        v.fail(f"signed with {curve} ({alg_name}), but {claim.label} is a {claim.curve} key")
        return v
    key, source = _key_for(curve, tok, tbs, kid, claim)
    if key is None:
        v.add("signature", "0x" + tok.signature.hex(), f"no key of {source} made it", False)
        v.fail(f"the {alg_name} signature was not made by {source}")
        return v
    did = f"did:io:{address_of_key(curve, key)}" if curve != "ed25519" else None
    v.add("public key", key.hex(), source)
    good = _signature_ok(curve, key, tok.signature, tbs)
    what = (
        "ECDSA over sha256(Sig_structure)" if curve != "ed25519" else "Ed25519 over Sig_structure"
    )
    v.add(
        "signature",
        "0x" + tok.signature.hex(),
        what + (" verifies" if good else " does NOT verify"),
        good,
    )
    if not good:
        v.fail(f"the {alg_name} signature does not verify with {source}")
        return v
    v.signer = did or kid or key.hex()
    if kid is not None and kid.startswith("did:"):
        _check_kid(v, curve, key, kid)
    if claim is not None:
        v.signer_checked = True
        if claim.public_key is not None and claim.public_key != key:
            v.fail(f"not signed by {claim.label}")
        elif claim.address is not None and address_of_key(curve, key) != claim.address:
            v.fail(f"signed by {did}, not by {claim.address} ({claim.label})")
        v.add("claimed signer", claim.label, "matches" if v.valid else "does NOT match", v.valid)
    return v


def _check_kid(v: Verdict, curve: str, key: bytes, kid: str) -> None:
    if kid.startswith("did:key:"):
        named = decode_did_key(kid)
        same = named == (curve, key)
    else:
        same = kid.lower() == f"did:io:{address_of_key(curve, key)}"
    v.add(
        "kid matches key",
        "yes" if same else "no",
        "" if same else "the kid names another key",
        same,
    )
    if not same:
        v.fail(f"kid {kid} is not the key that signed")


def _key_for(
    curve: str, tok: Sign1, tbs: bytes, kid: str | None, claim: Claim | None
) -> tuple[bytes | None, str]:
    """The key to check with and where it came from; None: an ES256K signature
    that no key of the named address made."""
    if claim is not None and claim.public_key is not None and claim.curve == curve:
        return claim.public_key, f"the key of {claim.label}"
    if kid is not None and kid.startswith("did:key:"):
        kid_curve, key = decode_did_key(kid)
        if kid_curve == curve:
            return key, "the kid's key (did:key)"
    address = claim.address if claim is not None else None
    if address is None and kid is not None and kid.lower().startswith("did:io:"):
        address = kid.lower()[7:]
    if curve == "secp256k1" and address is not None:
        found = _recover_k1(tok.signature, tbs, address)
        return found, (f"recovered from the signature, address {address}" if found else address)
    raise MalformedError(
        f"no {curve} public key to check this token with: give --did did:key:…, "
        "--public-key HEX (and --curve) or --inventory with --did",
    )
