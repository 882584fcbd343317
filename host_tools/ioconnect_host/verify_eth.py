"""Verify the Ethereum-style signatures a device makes: EIP-191 ``personal_sign``,
the ioID EIP-712 ``Permit`` and sprout's ``/message``; each explained field by field.

All three are recoverable secp256k1 signatures (r||s||v): the signer's address
comes out of the signature (coincurve), and is then compared with who the
message or the user says signed it.

Example:
    >>> v = verify_eip191({"msg": "hi", "sig": "0x…", "address": "0x…"}, claim=None)
    >>> v.valid, v.signer
    (True, '0x…')
"""

from __future__ import annotations

import re
from typing import Any

from .signer import Claim
from .verdict import MalformedError, Verdict
from .verify import IOID_REGISTRY, VerificationError, ioid_permit_digest, keccak256, recover_address
from .w3bstream import go_string

__all__ = ["check_signer", "verify_eip191", "verify_ioid_permit", "verify_sprout"]

_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
_HEX = re.compile(r"(?:0x)?((?:[0-9a-fA-F]{2})*)")


def _hex(obj: dict[str, Any], key: str, what: str, size: int | None = None) -> bytes:
    text = obj.get(key)
    m = _HEX.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise MalformedError(f"{what}: {key!r} must be a hex string, not {text!r}")
    raw = bytes.fromhex(m[1])
    if size is not None and len(raw) != size:
        raise MalformedError(f"{what}: {key!r} has {len(raw)} bytes, not {size}")
    return raw


def _rsv(v: Verdict, sig: bytes, v_values: tuple[int, ...]) -> bool:
    """Explain r, s, v; False (and the verdict failed) when they cannot be right."""
    s = int.from_bytes(sig[32:64], "big")
    v.add("r", "0x" + sig[:32].hex())
    low = s <= _HALF_N
    v.add(
        "s",
        "0x" + sig[32:64].hex(),
        "low-S" if low else "high-S: ecrecover verifiers refuse it",
        low,
    )
    v_ok = sig[64] in v_values
    v.add("v", sig[64], f"recovery id, must be {' or '.join(map(str, v_values))}", v_ok)
    if not low:
        v.fail("signature is high-S (s > n/2): Ethereum verifiers refuse it, devices never make it")
    elif not v_ok:
        v.fail(f"signature v={sig[64]} is not {' or '.join(map(str, v_values))}")
    return low and v_ok


def check_signer(v: Verdict, signer: str, claims: list[tuple[str, str]]) -> None:
    """Record the recovered ``signer`` and compare it with each (who, address) claim."""
    v.signer = signer
    v.add("signer", signer, "address recovered from the signature (coincurve)")
    for who, address in claims:
        same = signer == address.lower()
        v.signer_checked = True
        note = f"{who}: " + ("matches" if same else "does NOT match the signer")
        v.add("claimed signer", address, note, same)
        if not same:
            v.fail(f"signed by {signer}, not by {address.lower()} ({who})")


def _claims(claim: Claim | None) -> list[tuple[str, str]]:
    if claim is None:
        return []
    if claim.address is None:
        raise MalformedError(
            f"{claim.label} has no address: Ed25519 keys make no Ethereum signature"
        )
    return [(claim.label, claim.address)]


def _recover(v: Verdict, digest: bytes, sig: bytes) -> str | None:
    try:
        return recover_address(digest, sig)
    except VerificationError as exc:
        v.fail(str(exc))
        return None


def _check_signature(
    v: Verdict,
    digest: bytes,
    sig: bytes,
    v_values: tuple[int, ...],
    claim: Claim | None,
    named: tuple[str, object] = ("", None),
) -> Verdict:
    """Explain r, s, v, recover the signer of ``digest`` and hold it against the signer
    the message names itself (``named``: who, address; none unless a string) and the
    user's ``claim``. Returns ``v``."""
    if not _rsv(v, sig, v_values):
        return v
    signer = _recover(v, digest, sig)
    if signer is None:
        return v
    claims = _claims(claim)
    who, address = named
    if isinstance(address, str):
        claims.insert(0, (who, address))
    check_signer(v, signer, claims)
    return v


def verify_eip191(obj: dict[str, Any], claim: Claim | None) -> Verdict:
    """An EIP-191 ``personal_sign`` signature.

    Args:
        obj: ``{"msg"|"message": text, or "message_hex": hex, "sig"|"signature": 0x…65 bytes,
            "address": optional claimed signer}`` (the layout Etherscan's and MyCrypto's
            "verify signature" pages use).
        claim: who the user says signed it.
    """
    v = Verdict("eip191")
    if "message_hex" in obj:
        msg = _hex(obj, "message_hex", "EIP-191")
    else:
        text = obj.get("msg", obj.get("message"))
        if not isinstance(text, str):
            raise MalformedError("EIP-191: no message text ('msg', 'message' or 'message_hex')")
        msg = text.encode()
    sig = _hex(obj, "sig" if "sig" in obj else "signature", "EIP-191", 65)
    shown = msg.decode("utf-8", "replace") if "message_hex" not in obj else "0x" + msg.hex()
    v.add("message", shown, f"{len(msg)} bytes signed")
    prefix = b"\x19Ethereum Signed Message:\n" + str(len(msg)).encode()
    digest = keccak256(prefix + msg)
    v.add(
        "digest",
        "0x" + digest.hex(),
        'keccak256("\\x19Ethereum Signed Message:\\n" + length + message)',
    )
    named = ("the message's 'address'", obj.get("address"))
    return _check_signature(v, digest, sig, (27, 28, 0, 1), claim, named)


def verify_ioid_permit(obj: dict[str, Any], claim: Claim | None) -> Verdict:
    """An ioID registration permit (``provision --owner``'s bundle, or its ``ioid_permit``).

    The digest is rebuilt from chain id, registry, owner and nonce (EIP-712 over
    ``Permit(address owner,uint256 nonce)``) and must equal the bundle's; the
    signature must recover to the bundle's ``device`` (and to the claimed signer).
    """
    permit = obj.get("ioid_permit", obj)
    if not isinstance(permit, dict):
        raise MalformedError("ioID permit: 'ioid_permit' must be an object")
    v = Verdict("ioid")
    try:
        chain_id, nonce = int(permit["chain_id"]), int(permit["nonce"])
        owner, registry = str(permit["owner"]), str(permit["registry"])
    except KeyError as exc:
        raise MalformedError(f"ioID permit: no {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise MalformedError("ioID permit: chain_id and nonce must be integers") from None
    sig = _hex(permit, "signature", "ioID permit", 65)
    known = IOID_REGISTRY.get(chain_id)
    net = {4689: "IoTeX mainnet", 4690: "IoTeX testnet"}.get(chain_id, "not an IoTeX chain")
    v.add("chain_id", chain_id, net)
    official = known is not None and registry.lower() == known.lower()
    v.add(
        "registry",
        registry,
        "the official ioIDRegistry" if official else "NOT the official ioIDRegistry of this chain",
    )
    v.add("owner", owner, "the account that will own the device's ioID")
    v.add("nonce", nonce, "the registry's nonce for the device (replay protection)")
    try:
        digest = ioid_permit_digest(owner, nonce, chain_id, registry)
    except VerificationError as exc:
        raise MalformedError(f"ioID permit: {exc}") from None
    stated = permit.get("digest")
    same = isinstance(stated, str) and stated.lower().removeprefix("0x") == digest.hex()
    note = "EIP-712: keccak256(0x1901 || domain || keccak256(Permit))"
    if stated is not None:
        note += "; equals the bundle's" if same else f"; the bundle says {stated}"
    v.add("digest", "0x" + digest.hex(), note, None if stated is None else same)
    if stated is not None and not same:
        v.fail("the bundle's digest is not the EIP-712 digest of its other fields")
    for part, raw in (("r", sig[:32]), ("s", sig[32:64])):
        given = permit.get(part)
        if isinstance(given, str) and given.lower().removeprefix("0x") != raw.hex():
            v.fail(f"the bundle's {part} differs from its signature")
    if "v" in permit and permit["v"] != sig[64]:
        v.fail("the bundle's v differs from its signature")
    named = ("the permit's 'device'", permit.get("device"))
    return _check_signature(v, digest, sig, (27, 28), claim, named)


def verify_sprout(obj: dict[str, Any], claim: Claim | None) -> Verdict:
    """A sprout ``POST /message`` body: keccak256 of Go's JSON without the signature,
    signed r||s||v with v 0 or 1."""
    v = Verdict("sprout")
    pid, version, data = obj.get("projectID"), obj.get("projectVersion"), obj.get("data")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 64:
        raise MalformedError("sprout message: projectID must be a positive integer")
    if not isinstance(version, str) or not isinstance(data, str):
        raise MalformedError("sprout message: projectVersion and data must be strings")
    sig = _hex(obj, "signature", "sprout message", 65)
    try:
        signed = b'{"projectID":%d,"projectVersion":%s,"data":%s}' % (
            pid, go_string(version), go_string(data),
        )  # fmt: skip
    except ValueError as exc:
        raise MalformedError(f"sprout message: {exc}") from None
    v.add("projectID", pid)
    v.add("projectVersion", version)
    v.add("data", data, f"{len(data.encode())} bytes")
    v.add("signed bytes", signed.decode(), "Go's JSON of the message without its signature")
    digest = keccak256(signed)
    v.add("digest", "0x" + digest.hex(), "keccak256 of the signed bytes (no prefix)")
    return _check_signature(v, digest, sig, (0, 1), claim)
