"""Who a message claims to be signed by: a DID, an address, a public key.

``did:io:0x…`` names an address (secp256k1 or P-256 key, keccak of X||Y);
``did:key:z…`` carries the public key itself (secp256k1, P-256, Ed25519). A
public key, or the inventory's record of a device, gives both.

Example:
    >>> s = claim_from(did="did:key:zQ3shhLPYLN3Dz9WiccYZ6yeDrB3WPt6MCJQWPzM76UADSA8h")
    >>> s.curve, s.address
    ('secp256k1', '0xba80b710f0c27c8b3b72df63861e2ecea9c5aa73')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .verdict import MalformedError
from .verify import keccak256, public_point

__all__ = [
    "Claim",
    "address_of_key",
    "claim_from",
    "decode_did_key",
    "merge_claims",
    "stated_claim",
]

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_CODECS = {b"\xe7\x01": "secp256k1", b"\x80\x24": "p256", b"\xed\x01": "ed25519"}
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class Claim:
    """The identity a signature must come from.

    Attributes:
        label: how the user named it (for messages).
        address: ``0x…`` lowercase, when the identity has one.
        curve: the key's curve, when known.
        public_key: uncompressed (secp256k1, P-256) or raw (Ed25519) key, when known.
        did: the DID, when known.
    """

    label: str
    address: str | None = None
    curve: str | None = None
    public_key: bytes | None = None
    did: str | None = None


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        i = _B58.find(ch)
        if i < 0:
            raise ValueError(f"{ch!r} is not base58")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def address_of_key(curve: str, key: bytes) -> str | None:
    """did:io's address of a key (keccak of X||Y); None for Ed25519."""
    if curve == "ed25519":
        return None
    return "0x" + keccak256(public_point(curve, key, compressed=False)[1:])[12:].hex()


def decode_did_key(did: str) -> tuple[str, bytes]:
    """(curve, public key) of a ``did:key:z…`` (key uncompressed, or raw for Ed25519).

    Raises:
        MalformedError: not a did:key of a supported key type.
    """
    if not did.startswith("did:key:z"):
        raise MalformedError(f"{did!r} is not a did:key:z… (base58btc)")
    try:
        raw = _b58decode(did[9:])
    except ValueError as exc:
        raise MalformedError(f"{did}: {exc}") from None
    curve = _CODECS.get(raw[:2])
    if curve is None:
        raise MalformedError(
            f"{did}: key type 0x{raw[:2].hex()} is not secp256k1, P-256 or Ed25519"
        )
    try:
        return curve, public_point(curve, raw[2:], compressed=False)
    except ValueError as exc:
        raise MalformedError(f"{did}: the key is not a {curve} point ({exc})") from None


def _from_did(did: str) -> Claim:
    if did.lower().startswith("did:io:"):
        address = did[7:]
        if not address.lower().startswith("0x"):
            address = "0x" + address  # upstream writes it with or without 0x
        if not _ADDRESS.fullmatch(address):
            raise MalformedError(f"{did!r} is not did:io:0x and 40 hex digits")
        return Claim(label=did, address=address.lower(), did="did:io:" + address.lower())
    if did.startswith("did:key:"):
        curve, key = decode_did_key(did)
        return Claim(
            label=did, address=address_of_key(curve, key), curve=curve, public_key=key, did=did
        )
    raise MalformedError(f"{did!r}: only did:io and did:key name a device key")


def claim_from(
    *,
    did: str | None = None,
    address: str | None = None,
    public_key: str | None = None,
    curve: str | None = None,
    inventory: Path | None = None,
) -> Claim | None:
    """The claimed signer from command-line options (None when nothing is claimed).

    With ``inventory``, the device named by ``did``/``address`` is looked up there
    and its recorded public key used.

    Raises:
        MalformedError: a malformed DID/address/key, or options that contradict each other.
    """
    claims: list[Claim] = []
    if did:
        claims.append(_from_did(did))
    if address:
        if not _ADDRESS.fullmatch(address):
            raise MalformedError(f"--address {address!r} is not 0x and 40 hex digits")
        claims.append(Claim(label=address, address=address.lower()))
    if public_key:
        claims.append(_from_key(public_key, curve, label=public_key[:16] + "…"))
    if inventory is not None:
        from .inventory import Inventory

        named = next((c.did or c.address for c in claims if c.did or c.address), None)
        if named is None:
            raise MalformedError("--inventory needs --did or --address to know which device")
        dev = Inventory(inventory).get(named)
        claims.append(_from_key(dev.public_key, dev.curve, label=f"{dev.did} (inventory)"))
    if not claims:
        return None
    merged = claims[0]
    for other in claims[1:]:
        merged = _merge(merged, other)
    return merged


def _from_key(text: str, curve: str | None, *, label: str) -> Claim:
    try:
        key = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise MalformedError(f"public key {text!r} is not hex") from None
    if curve is None:  # 65/33 bytes: an ECDSA point; which curve: try secp256k1 first
        curve = "ed25519" if len(key) == 32 else "secp256k1"
    try:
        full = public_point(curve, key, compressed=False)
    except ValueError as exc:
        raise MalformedError(f"public key is not a {curve} key ({exc})") from None
    address = address_of_key(curve, full)
    did = f"did:io:{address}" if address else None
    return Claim(label=label, address=address, curve=curve, public_key=full, did=did)


def stated_claim(address: object, where: str) -> Claim:
    """The signer a message's own ``address`` field names, taken as ``--address`` is."""
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        raise MalformedError(f"{where} {address!r} is not 0x and 40 hex digits")
    return Claim(label=f"{address} ({where})", address=address.lower())


def merge_claims(a: Claim | None, b: Claim) -> Claim:
    """One claim from two that must agree (``b`` alone if there is no ``a``).

    Raises:
        MalformedError: they name different keys or identities.
    """
    return b if a is None else _merge(a, b)


def _merge(a: Claim, b: Claim) -> Claim:
    if a.public_key and b.public_key and a.public_key != b.public_key:
        raise MalformedError(f"{a.label} and {b.label} are different keys")
    if a.address and b.address and a.address != b.address:
        raise MalformedError(f"{a.label} and {b.label} are different identities")
    return Claim(
        label=a.label,
        address=a.address or b.address,
        curve=a.curve or b.curve,
        public_key=a.public_key or b.public_key,
        did=a.did or b.did,
    )
