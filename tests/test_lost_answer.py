"""An agent answer that comes too late never leaves the host believing the opposite of
what the device did (a virtual board on the unix port; the emulated Pico's own case
is in test_rp2040.py).

The issue: at emulated speed ``identity.create`` outlived the host's limit, the
host reported a failure, and the device went on and created the key. Here the
limit is set far below what any board needs, so the answer is always late; the
host must then either return the key the device made or say that it made none,
and the device must agree once it is idle.
"""

from __future__ import annotations

import pytest
from ioconnect_host import agent
from ioconnect_host.pytest_plugin import Board
from ioconnect_host.transport import TransportError


@pytest.mark.parametrize("ioc_board_name", ["rpi-pico"], indirect=True)
def test_a_create_whose_answer_is_late_reports_what_the_device_did(board: Board) -> None:
    assert agent.info(board)["identity"] == {"state": "none"}
    said = ""
    try:
        got = board.session.call("identity.create", curve="secp256k1", limit_s=0.001)
    except TransportError as exc:
        got, said = None, str(exc)
    board.release()
    state = agent.info(board)["identity"]  # a new session: the board is idle by now
    if got is None:
        assert state == {"state": "none"}  # the host said "failed": the device agrees
        assert "did not make a new key: it has no identity" in said
    else:
        assert agent.identity_show(board) == got


@pytest.mark.parametrize("ioc_board_name", ["rpi-pico"], indirect=True)
def test_a_rotation_whose_answer_is_late_reports_what_the_device_did(board: Board) -> None:
    before = agent.identity_create(board, "secp256k1")
    said = ""
    try:
        got = board.session.call("identity.rotate", curve="secp256k1", limit_s=0.001)
    except TransportError as exc:
        got, said = None, str(exc)
    board.release()
    now = agent.identity_show(board)
    assert now == (before if got is None else got)
    if got is None:
        assert f"did not make a new key: it keeps {before['did']}" in said
    else:
        assert got != before
