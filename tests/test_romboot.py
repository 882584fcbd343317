"""The virtual ESP32-family boards' ROM download mode, with real esptool as the client.

esptool runs as its own process (``python -m esptool --before no-reset``) against
the board's pty: it detects the chip, reads the MAC, uploads its stub, writes,
verifies, reads back and erases the flash file. What it reads is checked against
the board itself (machine.unique_id()) and against the flash file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from espimage import esptool, wait_until
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.flashfs import FLASH_FILE, lfs_read
from ioconnect_sim.launch import start_board
from ioconnect_sim.romboot import CHIPS, FlashFile, RomBootloader, slip_frame
from ioconnect_sim.supervisor import VirtualBoard


@pytest.fixture
def download_board(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VirtualBoard]:
    board = getattr(request, "param", "esp32")
    with start_board(board, name=f"rom-{board}", state_dir=tmp_path / "s", download=True) as vb:
        wait_until(lambda: vb.in_download_mode, "download mode")
        yield vb


def unique_id(vb: VirtualBoard) -> str:
    with SerialTransport(vb.port) as t:
        return t.exec("import machine; print(machine.unique_id().hex())").decode().strip()


@pytest.mark.parametrize(
    ("download_board", "chip_name"),
    [("esp32", "ESP32"), ("esp32-s3", "ESP32-S3"), ("esp32-c3", "ESP32-C3")],
    indirect=["download_board"],
)
def test_esptool_detects_the_chip_and_the_boards_mac(
    download_board: VirtualBoard, chip_name: str
) -> None:
    vb = download_board
    done = esptool(vb.port, "read-mac")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Detecting chip type... {chip_name}\n" in done.stdout
    assert "Stub flasher running." in done.stdout
    macs = set(re.findall(r"MAC:\s+([0-9a-f:]{17})", done.stdout))
    assert len(macs) == 1, done.stdout
    # The MAC esptool read from the eFuse registers is the running board's unique_id.
    vb.reset()
    wait_until(lambda: not vb.in_download_mode, "the board to boot")
    assert macs.pop().replace(":", "") == unique_id(vb)


@pytest.mark.parametrize("download_board", ["esp32", "esp32-s3"], indirect=True)
def test_write_verify_read_back_and_erase(download_board: VirtualBoard, tmp_path: Path) -> None:
    vb = download_board
    data = os.urandom(150_000)
    (tmp_path / "data.bin").write_bytes(data)
    done = esptool(vb.port, "write-flash", "0x10000", str(tmp_path / "data.bin"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hash of data verified." in done.stdout
    flash = vb.config.state_dir / FLASH_FILE
    assert flash.read_bytes()[0x10000 : 0x10000 + len(data)] == data
    done = esptool(vb.port, "read-flash", "0x10000", str(len(data)), str(tmp_path / "back.bin"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "back.bin").read_bytes() == data
    done = esptool(vb.port, "erase-region", "0x10000", "0x1000")
    assert done.returncode == 0, done.stdout + done.stderr
    done = esptool(vb.port, "read-flash", "0x10000", "0x2000", str(tmp_path / "erased.bin"))
    back = (tmp_path / "erased.bin").read_bytes()
    assert back[:0x1000] == b"\xff" * 0x1000 and back[0x1000:] == data[0x1000:0x2000]
    done = esptool(vb.port, "erase-flash")
    assert done.returncode == 0, done.stdout + done.stderr
    assert flash.read_bytes() == b"\xff" * flash.stat().st_size


def test_rom_without_stub_writes_and_reads(download_board: VirtualBoard, tmp_path: Path) -> None:
    # --no-stub: FLASH_BEGIN/DATA at 1 KiB blocks, the ROM's hex MD5, READ_FLASH_SLOW.
    vb = download_board
    data = os.urandom(5000)
    (tmp_path / "d.bin").write_bytes(data)
    done = esptool(vb.port, "--no-stub", "write-flash", "0x20000", str(tmp_path / "d.bin"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hash of data verified." in done.stdout
    done = esptool(vb.port, "--no-stub", "read-flash", "0x20000", "200", str(tmp_path / "b.bin"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "b.bin").read_bytes() == data[:200]
    assert vb.in_download_mode  # writing without a reset leaves the ROM in charge


def test_machine_bootloader_and_filesystem_read_back(tmp_path: Path) -> None:
    # A running board asked by its firmware to enter the bootloader; esptool then
    # reads the filesystem partition and finds the file MicroPython just wrote
    # (the board had no flash file yet: entering download mode made it).
    with start_board("esp32", name="rom-boot", state_dir=tmp_path / "s") as vb:
        with SerialTransport(vb.port) as t:
            t.exec("f = open('note.txt', 'w'); f.write('written by the board'); f.close()")
        _ask_bootloader(vb)
        wait_until(lambda: vb.in_download_mode, "download mode")
        fs = vb.config.board["filesystem"]
        assert isinstance(fs, dict)
        out = tmp_path / "fs.bin"
        done = esptool(vb.port, "read-flash", hex(fs["offset"]), hex(fs["size"]), str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        files = lfs_read(out.read_bytes(), block_size=4096)
        assert files["note.txt"] == b"written by the board"
        assert "ioconnect/agent.mpy" in files  # the firmware it was made with


def _ask_bootloader(vb: VirtualBoard) -> None:
    from ioconnect_host.errors import IoconnectError

    # machine.bootloader() never returns: the transport sees the board go.
    with SerialTransport(vb.port) as t, contextlib.suppress(IoconnectError):
        t.exec("import machine; machine.bootloader()", timeout_s=3)


# -- the protocol itself, byte by byte --------------------------------------


def _request(op: int, data: bytes = b"", chk: int = 0) -> bytes:
    return slip_frame(struct.pack("<BBHI", 0, op, len(data), chk) + data)


def _responses(out: bytes) -> list[tuple[int, int, bytes]]:
    frames = [f for f in out.split(b"\xc0") if f]
    result = []
    for f in frames:
        f = f.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
        _, op, _, value = struct.unpack("<BBHI", f[:8])
        result.append((op, value, f[8:]))
    return result


@pytest.fixture
def rom(tmp_path: Path) -> Iterator[RomBootloader]:
    flash = FlashFile(tmp_path / "flash.bin", 0x400000)
    exits: list[str] = []
    yield RomBootloader(CHIPS["esp32"], flash, bytes(6), exits.append)
    flash.close()


def test_garbage_is_ignored_and_a_sync_still_answers(rom: RomBootloader) -> None:
    assert rom.feed(os.urandom(2000).replace(b"\xc0", b"")) == b""
    assert rom.feed(b"\xc0\x01\x02\xc0") == b""  # too short for a request: silence
    sync = _request(0x08, b"\x07\x07\x12\x20" + b"\x55" * 32)
    replies = _responses(rom.feed(sync))
    assert len(replies) == 8 and all(r[0] == 0x08 and r[1] != 0 for r in replies)


def test_bad_checksum_and_wrong_opcode_are_refused(rom: RomBootloader) -> None:
    begin = struct.pack("<IIII", 0x1000, 1, 0x400, 0x10000)
    assert _responses(rom.feed(_request(0x02, begin)))[0][2][:2] == b"\x00\x00"
    block = b"\xaa" * 0x400
    data = struct.pack("<IIII", len(block), 0, 0, 0) + block
    status = _responses(rom.feed(_request(0x03, data, chk=0x12)))[0][2]
    assert status[:2] == b"\x01\x07"  # the ROM's "invalid CRC"
    assert rom.flash.read(0x10000, 4) == b"\xff" * 4  # nothing written
    status = _responses(rom.feed(_request(0xD0)))[0][2]
    assert status[:2] == b"\x01\x05"  # ERASE_FLASH: a stub command, unknown to the ROM


def test_sim_cli_download_mode_and_reset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ioconnect_host.cli import main

    name = "rom-cli"
    start = ["sim", "start", "--board", "esp32-s3", "--name", name, "--state", str(tmp_path / "s")]
    assert main([*start, "--download", "--detach", "--json"]) == 0
    port = json.loads(capsys.readouterr().out)["port"]
    try:
        done = esptool(port, "chip-id")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Detecting chip type... ESP32-S3" in done.stdout
        assert main(["sim", "reset", name]) == 0  # EN: the firmware boots
        wait_until(lambda: _answers(port), "MicroPython on the port")
        assert main(["sim", "reset", name, "--download"]) == 0  # BOOT held, EN pressed
        done = esptool(port, "chip-id")
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        main(["sim", "stop", name])
    capsys.readouterr()
    code = main(["sim", "start", "--board", "rpi-pico", "--name", "rom-pico", "--download"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("ioconnect: error: rpi-pico has no ROM serial bootloader")


def _answers(port: str) -> bool:
    from ioconnect_host.errors import IoconnectError

    try:
        with SerialTransport(port) as t:
            return t.exec("print(1 + 1)", timeout_s=5).strip() == b"2"
    except IoconnectError:
        return False


def test_download_mode_asked_for_while_the_board_boots_is_not_lost(tmp_path: Path) -> None:
    # Leaving the first download stay remounts the board's filesystem from its new
    # flash file (sim.json, heap calibration): a BOOT+EN press in that window must
    # still land in the ROM, not in a MicroPython that swallows esptool's SYNCs.
    with start_board("esp32", name="rom-race", state_dir=tmp_path / "s", download=True) as vb:
        wait_until(lambda: vb.in_download_mode, "download mode")
        vb.reset()
        wait_until(lambda: not vb.in_download_mode, "leaving download mode")
        vb.enter_download_mode()
        wait_until(lambda: vb.in_download_mode, "download mode again")
        done = esptool(vb.port, "read-mac")
        assert done.returncode == 0, done.stdout + done.stderr
        assert vb.in_download_mode
