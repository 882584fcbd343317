"""Verify a W3bstream ``POST /v1/task`` body, and the device's console frame that
carries one, explained field by field.

The body is checked as the apinode checks it (:mod:`.w3bstream`: Go's JSON,
sha256, recovery with v = 0 and 1); the signer must be the claimed device
under one of the two recovery ids.

Example:
    >>> v = verify_task(body, claim_from(address="0xb700…"))
    >>> v.valid, v.signer
    (True, '0xb700…')
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .signer import Claim
from .verdict import MalformedError, Verdict
from .w3bstream import (
    TaskError,
    go_compact,
    parse_task,
    recover_signers,
    signed_bytes,
    task_digest,
    task_id,
)

__all__ = ["verify_frame", "verify_task"]

_REFUSED = {"high_s", "bad_signature"}  # a well-formed request with a bad signature


def _preview(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + data.hex()


def verify_task(body: bytes, claim: Claim | None, signed_keys: tuple[str, ...] = ()) -> Verdict:
    """A ``POST /v1/task`` body.

    Args:
        body: the request as sent (bytes).
        claim: the device that should have signed it.
        signed_keys: the project's signed keys (e.g. ``("timestamp",)``), in order.

    Raises:
        MalformedError: not a request the node would parse (size, JSON, fields).
    """
    try:
        task = parse_task(body)
    except TaskError as exc:
        raise MalformedError(f"W3bstream task: {exc}") from None
    v = Verdict("w3bstream")
    v.add("nonce", task.nonce, "per-device counter; the node stores it")
    v.add("projectID", task.project_id)
    if task.project_version:
        v.add("projectVersion", task.project_version)
    how = (
        "hex string, decoded to bytes" if task.payload_is_hex else "JSON, hashed as Go compacts it"
    )
    v.add("payload", _preview(task.payload), f"{len(task.payload)} bytes, {how}")
    signed = signed_bytes(task)
    h1 = hashlib.sha256(signed).digest()
    v.add(
        "signed bytes",
        f"{len(signed)} bytes",
        f"sha256 0x{h1.hex()}: Go's JSON without the signature",
    )
    try:
        digest = task_digest(task, signed_keys)
        if signed_keys:
            v.add("signed keys", ", ".join(signed_keys), "sha256(h1 || each key as uint64 LE)")
        v.add("digest", "0x" + digest.hex(), "what the signature signs")
        a0, a1 = recover_signers(task, digest)
    except TaskError as exc:
        if exc.reason not in _REFUSED:
            raise MalformedError(f"W3bstream task: {exc}") from None
        v.add("signature", "0x" + task.signature.hex(), str(exc), False)
        v.fail(str(exc))
        return v
    v.add(
        "signature", "0x" + task.signature.hex(), "64 bytes r||s, low-S; the node tries v = 0 and 1"
    )
    v.add("recovered (v=0)", a0 or "-")
    v.add("recovered (v=1)", a1 or "-")
    v.add("taskID", task_id(task), "as the W3bstream node answers it")
    if claim is None:
        v.add("signer", f"{a0} or {a1}", "not checked: no --did/--address given")
        return v
    if claim.address is None:
        raise MalformedError(f"{claim.label} has no address: W3bstream tasks are secp256k1-signed")
    if claim.address in (a0, a1):
        v.signer = claim.address
        v.signer_checked = True
        v.add("signer", claim.address, f"the claimed {claim.label}", True)
    else:
        v.add("signer", f"{a0} or {a1}", f"neither is the claimed {claim.address}", False)
        hint = "" if signed_keys else " (does the project sign keys? give --signed-key)"
        v.fail(f"not signed by {claim.address}: the signature recovers to {a0} or {a1}{hint}")
    return v


def _payloads_differ(a: bytes, b: bytes) -> bool:
    # The loop's COSE payload is the reading as made; the task carries it compacted.
    try:
        return go_compact(a) != go_compact(b)
    except ValueError:
        return a != b


def verify_frame(
    frame: dict[str, Any], claim: Claim | None, signed_keys: tuple[str, ...] = ()
) -> Verdict:
    """A device console frame: ``task`` (a signed body, maybe a COSE token beside it)
    or ``signed`` (over MQTT: the nonce only). Other events carry nothing signed.

    Raises:
        MalformedError: a ``task`` frame without a usable body or nonce.
    """
    from .verify_cose import parse_sign1, verify_cose

    v = Verdict("frame")
    event = frame.get("event")
    v.add("event", event)
    nonce = frame.get("nonce")
    if nonce is not None:
        v.add("nonce", nonce)
    if event != "task":
        v.add("signed content", "none", "this event carries no signature to check")
        return v
    body = frame.get("body")
    if not isinstance(body, str) or not isinstance(nonce, int):
        raise MalformedError("task frame: needs 'nonce' (integer) and 'body' (the request text)")
    task = verify_task(body.encode(), claim, signed_keys)
    v.include(task, "its W3bstream task")
    v.signer, v.signer_checked = task.signer, task.signer_checked
    body_nonce = json.loads(body).get("nonce")
    if body_nonce != nonce:
        v.fail(f"the frame says nonce {nonce}, its signed body {body_nonce}")
    token = frame.get("cose")
    if isinstance(token, str):
        try:
            raw = bytes.fromhex(token)
        except ValueError:
            raise MalformedError("task frame: 'cose' is not hex") from None
        cose = verify_cose(raw, claim)
        v.include(cose, "its COSE token")
        if _payloads_differ(parse_sign1(raw).payload, parse_task(body.encode()).payload):
            v.fail("the COSE token signs another payload than the task")
    return v
