"""The firmware as a board gets it: every module compiled by mpy-cross for the board's arch."""

from __future__ import annotations

from pathlib import Path

import pytest
from ioconnect_host.boards import list_boards, load_board
from ioconnect_host.firmware import build_firmware, install_local
from ioconnect_host.paths import firmware_dir

# mpy-cross architecture numbers (py/persistentcode.h), stored in .mpy header byte 2 >> 2.
ARCH_CODES = {"x64": 2, "armv6m": 4, "xtensawin": 10, "rv32imc": 11}


@pytest.mark.parametrize("board", list_boards())
def test_every_module_compiles_for_the_board(board: str) -> None:
    arch = load_board(board).mpy_arch
    files = {f.path: f.data for f in build_firmware(mpy_arch=arch)}
    sources = sorted(p.stem for p in (firmware_dir() / "ioconnect").glob("*.py"))
    assert sorted(p[len("ioconnect/") : -4] for p in files if p.endswith(".mpy")) == sources
    for path, data in files.items():
        if path.endswith(".mpy"):
            assert data[:2] == b"M\x06", path  # .mpy version 6
    # keccak has viper code: its header names the board's architecture
    assert files["ioconnect/keccak.mpy"][2] >> 2 == ARCH_CODES[arch]
    assert files["boot.py"] == (firmware_dir() / "boot.py").read_bytes()
    tables = [p for p in files if p.startswith("ioconnect/tables/")]
    assert sorted(tables) == [
        "ioconnect/tables/ed25519.bin",
        "ioconnect/tables/p256.bin",
        "ioconnect/tables/secp256k1.bin",
    ]


def test_install_keeps_device_data_and_drops_stale_sources(tmp_path: Path) -> None:
    (tmp_path / "ioconnect").mkdir()
    (tmp_path / "ioconnect" / "ecdsa.py").write_text("stale = True\n")
    (tmp_path / "identity.key").write_bytes(b"device data")
    install_local(build_firmware(mpy_arch="x64"), tmp_path)
    assert (tmp_path / "identity.key").read_bytes() == b"device data"
    assert not (tmp_path / "ioconnect" / "ecdsa.py").exists()  # would shadow the .mpy
    assert (tmp_path / "ioconnect" / "ecdsa.mpy").exists()
    assert not list(tmp_path.rglob("*.tmp"))
