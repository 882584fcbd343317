"""An emulated Pico for the rp2040 tier: started on the rp2040 engine, the firmware
deployed to it over its serial port and an identity created there, shared by a module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioconnect_host import agent
from ioconnect_host.deploy import DeployResult, deploy
from ioconnect_host.ports import BoardRef
from ioconnect_host.session import Session, open_session
from ioconnect_sim.launch import start_board
from ioconnect_sim.rp2040_board import Rp2040Board


@dataclass
class Pico:
    """A running emulated Pico with the firmware deployed and an identity made."""

    board: Rp2040Board
    ref: BoardRef
    deployed: DeployResult
    identity: dict[str, Any]
    deploy_s: float

    @property
    def state(self) -> Path:
        return self.board.config.state_dir

    @contextmanager
    def session(self) -> Iterator[Session]:
        with open_session(self.ref) as s:
            yield s

    def console(self) -> bytes:
        path = self.state / "console.log"
        return path.read_bytes() if path.exists() else b""


@contextmanager
def deployed_pico(state: Path, name: str) -> Iterator[Pico]:
    """Start a blank emulated Pico, deploy the firmware and create a secp256k1 identity."""
    board = start_board("rpi-pico", name=name, state_dir=state, engine="rp2040")
    assert isinstance(board, Rp2040Board)
    try:
        ref = BoardRef(
            port=board.port, board="rpi-pico", sim_name=name, how="test", slowness=board.slowness
        )
        start = time.monotonic()
        with open_session(ref) as s:
            result = deploy(s)
        deploy_s = time.monotonic() - start
        with open_session(ref) as s:
            ident = agent.identity_create(s, "secp256k1")
        yield Pico(board, ref, result, ident, deploy_s)
    finally:
        board.stop()


def wait_for(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)
