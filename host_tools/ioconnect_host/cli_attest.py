"""``ioconnect attest --once``: one signed reading from a connected board.

The board signs a reading as its loop would (nonce from its own store), the
request is NOT queued on the device; the host checks the signature with
coincurve (independent of the device code) and prints the request. The board's
loop is stopped for it (Ctrl-C, soft reset) and resumes at its next reset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import coincurve
from Crypto.Hash import keccak

from . import agent
from .errors import IoconnectError
from .transport import SerialTransport

__all__ = ["AttestCheckError", "add_attest_command", "attest_once", "resolve_port"]


class AttestCheckError(IoconnectError):
    """The board's signed request does not verify."""


def resolve_port(port: str) -> str:
    """A serial path, a pyserial URL, or ``sim:NAME`` (a running virtual board)."""
    if port.startswith("sim:"):
        from ioconnect_sim.registry import find_running

        return find_running(port[4:]).port
    return port


def _go_task_bytes(request: str) -> bytes:
    # W3bstream hashes Go's json.Marshal of the task without its signature; the
    # device sends the payload already in Go's compact form, so it is cut out as is.
    body = json.loads(request)
    raw = request[request.index('"payload":') + 10 : request.rindex(',"signature"')]
    head = {"nonce": body["nonce"], "projectID": body["projectID"]}
    if body.get("projectVersion"):
        head["projectVersion"] = body["projectVersion"]
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False)
    return (text[:-1] + ',"payload":' + raw + "}").encode()


def _addresses(request: str, signed_keys: tuple[str, ...]) -> set[str]:
    """Addresses that signed a /v1/task body: both recovery ids, as W3bstream tries them."""
    body = json.loads(request)
    sig = bytes.fromhex(body["signature"][2:])
    digest = hashlib.sha256(_go_task_bytes(request)).digest()
    if signed_keys:
        h = hashlib.sha256(digest)
        for name in signed_keys:
            h.update(int(body["payload"][name]).to_bytes(8, "little"))
        digest = h.digest()
    out = set()
    for v in (0, 1):
        pub = coincurve.PublicKey.from_signature_and_message(sig + bytes([v]), digest, hasher=None)
        out.add("0x" + keccak.new(digest_bits=256, data=pub.format(False)[1:]).digest()[-20:].hex())
    return out


def attest_once(port: str) -> dict[str, Any]:
    """Ask the board on ``port`` for one signed reading and verify it.

    Returns:
        The agent's answer plus ``address`` (the board's) and ``verified`` (True).

    Raises:
        AttestCheckError: the signature does not recover to the board's address.
    """
    with SerialTransport(resolve_port(port)) as board:
        # Ctrl-C stops the board's loop; the soft reset gives the agent a fresh
        # heap (main.py does not run), as mpremote does. The loop resumes at
        # the next reset.
        board.enter_raw_repl(soft_reset=True)
        ident = agent.identity_show(board)
        settings = agent.config_get(board) or {}
        out = agent.attest(board)
    keys = tuple(settings.get("w3bstream.signed_keys") or ())
    try:
        signers = _addresses(out["request"], keys)
    except (ValueError, KeyError, TypeError) as exc:
        raise AttestCheckError(f"malformed request from the board: {exc}") from exc
    if ident.get("address") not in signers:
        who = ident.get("address")
        raise AttestCheckError(f"the request's signature does not recover to the board's {who}")
    return {**out, "address": ident["address"], "verified": True}


def _attest(args: argparse.Namespace) -> int:
    if not args.once:
        raise IoconnectError(
            "only --once is supported here", hint="the board's own loop attests continuously"
        )
    from .ports import select_port

    out = attest_once(select_port(args.port).port)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"nonce {out['nonce']}, signed by {out['address']} (verified with coincurve)")
    print(f"payload: {out['payload']}")
    print("POST /v1/task body:")
    print(out["request"])
    if "cose" in out:
        print(f"COSE_Sign1: {out['cose']}")
    return 0


def add_attest_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``ioconnect attest``."""
    p = sub.add_parser(
        "attest",
        help="take one signed reading on a board (debugging)",
        description="Take one reading on the board, sign it as its loop would (W3bstream "
        "POST /v1/task), verify the signature on the host and print the request. The nonce "
        "is used up; the request is not queued on the device.",
    )
    p.add_argument("--once", action="store_true", help="one reading now (required)")
    p.add_argument(
        "-p",
        "--port",
        help="serial path, socket://, rfc2217://, sim:NAME, id:USB-SERIAL, a DID, or auto "
        "(default: $IOCONNECT_PORT, else auto)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_attest)
