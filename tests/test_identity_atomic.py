"""A key the host never heard of is never left on the board (virtual Pico, real VM).

The defect (a new user's walkthrough): an image built for the RP2040 (armv6m
machine code) on a virtual Pico, whose VM runs x64 code. ``identity.create``
stored the key, then failed importing keccak (viper code, needed for the
address and the DID): "incompatible .mpy arch". The user saw an error, and a
retry said "identity exists" for a key whose DID they never got. Here the
board runs the host build with only keccak swapped for its armv6m build, the
same failure at the same point. Whatever fails before the answer is made must
leave the store as it was.
"""

from __future__ import annotations

import pytest
from ioconnect_host import agent
from ioconnect_host.firmware import compile_module, host_build
from ioconnect_host.paths import firmware_dir
from ioconnect_host.pytest_plugin import Board

KECCAK = "ioconnect/keccak.mpy"


def put_keccak(board: Board, data: bytes) -> None:
    board.session.put_file(KECCAK, data)
    # A fresh VM: keccak stays loaded once imported (RESIDENT), so the new file
    # counts only after a boot.
    board.power_cut()


def foreign_keccak() -> bytes:
    src = firmware_dir() / "ioconnect" / "keccak.py"
    return compile_module(src, mpy_arch="armv6m", source_name=KECCAK)


def key_files(board: Board) -> dict[str, str | None]:
    names = ("identity.key", "identity.key.tmp", "identity.key.bak")
    return {name: board.session.file_sha256(name) for name in names}


@pytest.mark.parametrize("ioc_board_name", ["rpi-pico"], indirect=True)
def test_a_create_that_fails_stores_no_key(board: Board) -> None:
    put_keccak(board, foreign_keccak())
    with pytest.raises(agent.AgentError, match=r"incompatible \.mpy arch"):
        agent.identity_create(board, "secp256k1")
    assert agent.info(board)["identity"] == {"state": "none"}
    assert set(key_files(board).values()) == {None}  # no key, no temp file, no backup

    # The firmware put right, the same request works: nothing was left in the way.
    put_keccak(board, (host_build() / KECCAK).read_bytes())
    made = agent.identity_create(board, "secp256k1")
    assert agent.identity_show(board) == made


@pytest.mark.parametrize("ioc_board_name", ["rpi-pico"], indirect=True)
def test_a_rotation_that_fails_keeps_the_old_key(board: Board) -> None:
    before = agent.identity_create(board, "secp256k1")
    files = key_files(board)
    put_keccak(board, foreign_keccak())
    with pytest.raises(agent.AgentError, match=r"incompatible \.mpy arch"):
        agent.identity_rotate(board, "secp256k1")
    assert key_files(board) == files  # the same key, and no backup of it made

    put_keccak(board, (host_build() / KECCAK).read_bytes())
    assert agent.identity_show(board) == before


# Fault injection on the board's own VM: "json" in sys.modules (looked up before
# the built-in module; it stays loaded across agent calls) is a wrapper whose
# dumps fails once for an answer with a DID other than OLD_DID: the answer of
# the call that made a key ("MemoryError" while framing it, after the store).
# The agent's own fallback then answers "no_memory".
ANSWER_DOES_NOT_FIT = """
import json, sys

class _Tight:
    failed = False

    def __getattr__(self, name):
        return getattr(json, name)

    def dumps(self, obj):
        result = obj.get("result") if isinstance(obj, dict) else None
        did = result.get("did") if isinstance(result, dict) else None
        if did not in (None, OLD_DID) and not _Tight.failed:
            _Tight.failed = True
            raise MemoryError
        return json.dumps(obj)

sys.modules["json"] = _Tight()
"""


@pytest.mark.parametrize("ioc_board_name", ["rpi-pico"], indirect=True)
@pytest.mark.parametrize("op", ["identity.create", "identity.rotate"])
def test_a_key_stored_whose_answer_did_not_fit_is_reported(board: Board, op: str) -> None:
    before = agent.identity_create(board, "secp256k1") if op == "identity.rotate" else None
    board.exec(ANSWER_DOES_NOT_FIT.replace("OLD_DID", repr(before and before["did"])))
    got = board.session.call(op, curve="secp256k1")
    assert got["did"].startswith("did:io:0x") and got != before
    assert agent.identity_show(board) == got
