"""``ioconnect verify FILE|-``: verify a signed message offline and explain it.

Exit status: 0 valid, 1 invalid (one stderr line says why), 2 usage or malformed input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TypeAlias

from .signer import claim_from
from .verdict import KINDS, Kind, MalformedError
from .verify_input import MAX_INPUT, verify_bytes

__all__ = ["add_verify_command", "claim_options"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _read(name: str) -> bytes:
    if name == "-":
        data = sys.stdin.buffer.read(MAX_INPUT + 1)
    else:
        try:
            with open(name, "rb") as f:
                data = f.read(MAX_INPUT + 1)
        except OSError as exc:
            raise MalformedError(f"{name}: {exc.strerror or exc}") from None
    if not data.strip():
        raise MalformedError(f"{'stdin' if name == '-' else name} is empty")
    return data


def _verify(args: argparse.Namespace) -> int:
    claim = claim_from(
        did=args.did,
        address=args.address,
        public_key=args.public_key,
        curve=args.curve,
        inventory=args.inventory,
    )
    kind: Kind | None = args.kind
    verdict = verify_bytes(
        _read(args.file), kind=kind, claim=claim, signed_keys=tuple(args.signed_key or ())
    )
    if args.json:
        print(json.dumps(verdict.to_json()))
    else:
        print("\n".join(verdict.lines()))
        if verdict.valid and not verdict.signer_checked:
            print("note: the signer was not compared with anyone: give --did or --address")
    if not verdict.valid:
        print(f"ioconnect: invalid: {verdict.reason}", file=sys.stderr)
        return 1
    return 0


def claim_options(p: argparse.ArgumentParser) -> None:
    """``--did/--address/--public-key/--curve/--inventory``: who should have signed."""
    p.add_argument("--did", help="the signer's DID (did:io:0x… or did:key:z…)")
    p.add_argument("--address", help="the signer's 0x address")
    p.add_argument("--public-key", help="the signer's public key (hex)")
    p.add_argument(
        "--curve", choices=("secp256k1", "p256", "ed25519"), help="curve of --public-key"
    )
    p.add_argument(
        "--inventory", type=Path, help="take the key of the --did/--address device from here"
    )


def add_verify_command(sub: Sub) -> None:
    """Register ``verify``."""
    p = sub.add_parser(
        "verify",
        help="verify a signed message or token offline, explained field by field",
        description="Verify a W3bstream task, COSE_Sign1 token, ioID permit (or provision "
        "bundle), EIP-191 signature, sprout message or device console frame offline. "
        "Exit 0 valid, 1 invalid, 2 usage or malformed input.",
    )
    p.add_argument("file", metavar="FILE|-", help="the message (- reads stdin)")
    p.add_argument("--kind", choices=KINDS, help="what the message is (default: detect)")
    claim_options(p)
    p.add_argument(
        "--signed-key",
        action="append",
        metavar="KEY",
        help="a W3bstream project's signed key (e.g. timestamp); repeat in the project's order",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    p.set_defaults(handler=_verify)
