"""An emulated Pico for the rp2040 tier: started on the rp2040 engine with the firmware
in its flash as `image build` lays it out (the mass-production path; sending all 340 KB
through the emulated USB takes 6-15 minutes), one module held back for `deploy` to
send over its serial port, and an identity created there; shared by a module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioconnect_host import agent
from ioconnect_host.boards import load_board
from ioconnect_host.deploy import DeployResult, deploy
from ioconnect_host.image import image_files
from ioconnect_host.ports import BoardRef
from ioconnect_host.session import Session, open_session
from ioconnect_sim.flashfs import lfs_image
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
    held_back: str  # the module the image left out, sent by deploy

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


def flash_firmware_image(state: Path) -> str:
    """Write the board's filesystem with the firmware as ``image build`` lays it out,
    but for its smallest module; returns that module's path."""
    pico = load_board("rpi-pico")
    files = image_files(pico)  # .mpy for armv6m, and the deploy manifest listing all
    held_back = min((p for p in files if p.endswith(".mpy")), key=lambda p: len(files[p]))
    del files[held_back]
    fs = pico.filesystem
    (state / "flash.lfs").write_bytes(lfs_image(files, size=fs.size, block_size=fs.block_size))
    return held_back


@contextmanager
def deployed_pico(state: Path, name: str) -> Iterator[Pico]:
    """Start an emulated Pico with the firmware image in its flash but one module,
    deploy (which sends that one) and create a secp256k1 identity."""
    held_back = flash_firmware_image(state)
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
        yield Pico(board, ref, result, ident, deploy_s, held_back)
    finally:
        board.stop()


def wait_for(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)
