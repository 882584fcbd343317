"""Set up a virtual board's flash as provisioning leaves it (identity, settings,
board file), for the attestation tests, and check who signed the tasks it sends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import coincurve
from Crypto.Hash import keccak
from ioconnect_host.boards import board_json
from ioconnect_host.identity import new_identity

PROJECT = "42"


def k256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def provision(flash: Path, board: str, settings: dict[str, Any] | None = None) -> str:
    """Write identity, settings and board file into a board's flash; returns its address."""
    flash.mkdir(parents=True, exist_ok=True)
    ident = new_identity(flash, "secp256k1")  # made by the device code on MicroPython
    (flash / "board.json").write_bytes(board_json(board))
    cfg = {"w3bstream.project_id": PROJECT, "sample.interval_s": 1, **(settings or {})}
    (flash / "config.json").write_text(json.dumps(cfg))
    assert ident.address is not None
    return ident.address


def go_json(body: dict[str, Any], payload_raw: str) -> bytes:
    """What W3bstream hashes for a task whose payload is a JSON object, made
    here with the stdlib: compact JSON, payload kept as the device sent it
    (its own compaction is checked against Go in test_attest)."""
    head = json.dumps(
        {"nonce": body["nonce"], "projectID": body["projectID"]}, separators=(",", ":")
    )
    return (head[:-1] + ',"payload":' + payload_raw + "}").encode()


def task_signers(body_text: str) -> set[str]:
    """Addresses that signed a /v1/task body (both recovery ids, as the node tries),
    recovered with coincurve from the sha256 of the Go JSON the node re-encodes."""
    body = json.loads(body_text)
    raw = body_text[body_text.index('"payload":') + 10 : body_text.rindex(',"signature"')]
    digest = hashlib.sha256(go_json(body, raw)).digest()
    return secp_signers(digest, bytes.fromhex(body["signature"][2:]))


def secp_signers(digest: bytes, sig64: bytes) -> set[str]:
    """Addresses coincurve recovers from r||s with both recovery ids (as W3bstream tries)."""
    out = set()
    for v in (0, 1):
        pub = coincurve.PublicKey.from_signature_and_message(
            sig64 + bytes([v]), digest, hasher=None
        )
        out.add("0x" + k256(pub.format(False)[1:])[-20:].hex())
    return out
