"""Refuse to flash an image whose native code is for another CPU than the board's.

An ``image build`` image carries our firmware as .mpy files compiled for one
architecture (``--mpy-arch``), and says which in the first line of its deploy
manifest. MicroPython refuses .mpy files of another architecture at import,
so such an image would flash fine and then not boot our firmware.
"""

from __future__ import annotations

from .boards import Board
from .deploy import MANIFEST
from .errors import IoconnectError
from .ports import BoardRef
from .uf2 import parse_uf2

__all__ = ["ArchMismatch", "board_mpy_arch", "check_image_arch", "image_mpy_arch"]

_HEADER = "# ioconnect deploy manifest 1, mpy_arch "


class ArchMismatch(IoconnectError):
    """The image's .mpy files are for another architecture than the board runs."""


def _fs_partition(board: Board, data: bytes) -> bytes | None:
    fs = board.filesystem
    if board.flash.firmware_format == "uf2":
        start = board.flash.image_base + fs.offset
        part = bytearray(b"\xff" * fs.size)
        found = False
        for b in parse_uf2(data):
            if start <= b.addr < start + fs.size:
                off = b.addr - start
                part[off : off + len(b.data)] = b.data[: fs.size - off]
                found = True
        return bytes(part) if found else None
    # A merged .bin from flash offset 0 covers the partition; MicroPython alone does not.
    return data[fs.offset : fs.offset + fs.size] if len(data) >= fs.offset + fs.size else None


def image_mpy_arch(board: Board, data: bytes) -> str | None:
    """The ``-march`` of the firmware in an ``image build`` image for ``board``, or
    None: the image has no filesystem with our deploy manifest (MicroPython alone)."""
    from ioconnect_sim.flashfs import FlashFsError, lfs_read  # the one littlefs layout

    part = _fs_partition(board, data)
    if part is None:
        return None
    try:
        manifest = lfs_read(part, block_size=board.filesystem.block_size).get(MANIFEST)
    except FlashFsError:
        return None
    first = (manifest or b"").split(b"\n", 1)[0].decode("utf-8", "replace")
    arch = first[len(_HEADER) :].strip() if first.startswith(_HEADER) else ""
    return arch if arch and arch != "-" else None


def board_mpy_arch(board: Board, ref: BoardRef | None) -> str:
    """The architecture the board's MicroPython loads .mpy files for: a virtual board
    on the unix engine runs this machine's; a chip (or the emulated RP2040) its own."""
    if ref is not None and ref.sim_name:
        from ioconnect_sim.registry import find_running

        from .firmware import host_mpy_arch

        if find_running(ref.sim_name).engine == "unix":
            return host_mpy_arch()
    return board.mpy_arch


def check_image_arch(board: Board, ref: BoardRef | None, data: bytes, name: str) -> None:
    """Refuse (before anything is written) an image built for another architecture.

    Raises:
        ArchMismatch: the image's .mpy architecture is not the board's.
    """
    got = image_mpy_arch(board, data)
    if got is None:
        return
    want = board_mpy_arch(board, ref)
    if got != want:
        where = f"the virtual board {ref.sim_name}" if ref and ref.sim_name else board.name
        raise ArchMismatch(
            f"{name} holds firmware compiled for {got}, but {where} runs {want} code",
            hint=f"build it for this board: ioconnect image build --board {board.name}"
            + (" --mpy-arch host" if want != board.mpy_arch else ""),
        )
