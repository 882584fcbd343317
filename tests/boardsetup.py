"""Set up a virtual board's flash as provisioning leaves it (identity, settings,
board file), for the attestation tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
