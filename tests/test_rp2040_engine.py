"""The rp2040 engine's own parts: the UF2 checks, the flash mirror, the CLI's refusals,
and a board's life through ``sim start/list/fault/stop`` (real processes, real ptys,
the real emulator). The firmware-level tier is test_rp2040.py."""

from __future__ import annotations

import ast
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import run_cli
from ioconnect_host.cli import main
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.rp2040_board import boots_to_repl
from ioconnect_sim.rp2040_chip import FS_SIZE, FS_START, changed_range, mirror_flash_writes
from ioconnect_sim.rp2040_firmware import FirmwareError, check_uf2, default_uf2
from rp2040board import wait_for

_ESP32S2_FAMILY = 0xBFDD4EEE


def _blocks(data: bytes) -> list[bytearray]:
    return [bytearray(data[i : i + 512]) for i in range(0, len(data), 512)]


def _uf2(blocks: list[bytearray], path: Path) -> Path:
    path.write_bytes(b"".join(blocks))
    return path


def test_the_project_uf2_passes_its_checks() -> None:
    image = check_uf2(default_uf2())
    assert image.blocks == 679424 // 512
    assert 0 < image.flash_end <= FS_START


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda b: b[0].__setitem__(slice(28, 32), struct.pack("<I", _ESP32S2_FAMILY)), "family"),
        (lambda b: b[3].__setitem__(slice(0, 4), b"UF2?"), "magic"),
        (
            lambda b: b[5].__setitem__(slice(12, 16), struct.pack("<I", 0x10000000 + FS_START)),
            "into the filesystem",
        ),
        (lambda b: b.pop(), "malformed"),  # the block count no longer matches
    ],
)
def test_a_bad_uf2_is_refused_with_one_line(
    tmp_path: Path, spoil: object, says: str
) -> None:
    blocks = _blocks(default_uf2().read_bytes())
    spoil(blocks)  # type: ignore[operator]
    with pytest.raises(FirmwareError) as err:
        check_uf2(_uf2(blocks, tmp_path / "bad.uf2"))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_truncated_uf2_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.uf2"
    path.write_bytes(default_uf2().read_bytes()[:1000])
    with pytest.raises(FirmwareError, match="not a whole number of 512-byte UF2 blocks"):
        check_uf2(path)


def test_changed_range_of_flash_commands() -> None:
    assert changed_range(bytes([0x02, 0x0A, 0x01, 0x00]) + b"\x00" * 256) == (0xA0100, 0xA0200)
    assert changed_range(bytes([0x20, 0x0A, 0x12, 0x34])) == (0xA1000, 0xA2000)  # 4 KiB sector
    assert changed_range(bytes([0xD8, 0x0B, 0x12, 0x34])) == (0xB0000, 0xC0000)  # 64 KiB block
    assert changed_range(bytes([0x03, 0x0A, 0x00, 0x00, 0xFF])) is None  # a read
    assert changed_range(bytes([0x06])) is None  # write enable


def test_the_mirror_writes_what_the_flash_chip_applied(tmp_path: Path) -> None:
    # rp2040py's own SSI (the QSPI flash model), driven by JEDEC commands as the bootrom does.
    from rp2040py.rp2040 import RP2040

    mcu = RP2040()
    image = tmp_path / "flash.lfs"
    image.write_bytes(b"\xff" * FS_SIZE)
    fd = __import__("os").open(image, __import__("os").O_RDWR)
    mirror_flash_writes(mcu.ssi, mcu.flash, fd)
    ssi = mcu.ssi

    def command(data: bytes) -> None:
        ssi._tx_buffer = bytearray(data)
        ssi._apply_command()

    ssi._write_enabled = True
    command(bytes([0x20, 0x0A, 0x00, 0x00]))  # erase the first sector of the filesystem
    ssi._write_enabled = True
    command(bytes([0x02, 0x0A, 0x00, 0x10]) + b"littlefs")  # program 8 bytes at +0x10
    command(bytes([0x02, 0x0A, 0x00, 0x20]) + b"ignored")  # no write enable: no change
    ssi._write_enabled = True
    command(bytes([0x02, 0x09, 0xFF, 0x00]) + b"firmware")  # below the filesystem: not ours
    data = image.read_bytes()
    assert data[0x10:0x18] == b"littlefs"
    assert data[0x20:0x27] == b"\xff" * 7
    assert bytes(mcu.flash[0x9FF00:0x9FF08]) == b"firmware" and len(data) == FS_SIZE


def test_worn_flash_takes_no_write_in_the_filesystem(tmp_path: Path) -> None:
    # `sim fault --flash enospc` on the chip: the flash model's commands complete (write
    # enable cleared) but the filesystem's cells keep what they held; code flash is not worn.
    from rp2040py.rp2040 import RP2040

    mcu = RP2040()
    image = tmp_path / "flash.lfs"
    image.write_bytes(b"\xff" * FS_SIZE)
    fd = __import__("os").open(image, __import__("os").O_RDWR)
    worn = [False]
    mirror_flash_writes(mcu.ssi, mcu.flash, fd, lambda: worn[0])
    ssi = mcu.ssi

    def command(data: bytes) -> None:
        ssi._write_enabled = True
        ssi._tx_buffer = bytearray(data)
        ssi._apply_command()
        assert not ssi._write_enabled  # the chip is ready for the next command either way

    command(bytes([0x02, 0x0A, 0x00, 0x10]) + b"kept")
    worn[0] = True
    command(bytes([0x02, 0x0A, 0x00, 0x20]) + b"lost")
    command(bytes([0x20, 0x0A, 0x00, 0x00]))  # erase: nothing either
    command(bytes([0x02, 0x09, 0xFF, 0x00]) + b"code")  # below the filesystem: written
    assert bytes(mcu.flash[FS_START + 0x10 : FS_START + 0x14]) == b"kept"
    assert bytes(mcu.flash[FS_START + 0x20 : FS_START + 0x24]) == b"\xff" * 4
    assert image.read_bytes()[0x10:0x24] == b"kept" + b"\xff" * 16
    assert bytes(mcu.flash[0x9FF00:0x9FF04]) == b"code"
    worn[0] = False  # cleared: the flash takes writes again
    command(bytes([0x02, 0x0A, 0x00, 0x20]) + b"back")
    assert image.read_bytes()[0x20:0x24] == b"back"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("IOCONNECT_HOME", str(tmp_path))
    yield tmp_path
    main(["sim", "stop", "rp-dev"])  # never leave a detached board behind


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--board", "esp32"], "emulates a Raspberry Pi Pico, not 'esp32'"),
        (["--board", "rpi-pico", "--heap", "96K"], "--heap is for the unix engine"),
    ],
)
def test_cli_refuses_what_the_engine_cannot_do(
    home: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    code, _, err = run_cli(capsys, "sim", "start", "--engine", "rp2040", "--name", "rp-dev", *extra)
    assert code != 0 and says in err and len(err.strip().splitlines()) <= 2


def test_cli_refuses_a_foreign_uf2_before_starting(
    home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocks = _blocks(default_uf2().read_bytes())
    for b in blocks:
        b[28:32] = struct.pack("<I", _ESP32S2_FAMILY)
    bad = _uf2(blocks, tmp_path / "s2.uf2")
    code, _, err = run_cli(
        capsys, "sim", "start", "--board", "rpi-pico", "--engine", "rp2040", "--name", "rp-dev",
        "--firmware", str(bad), "--detach",
    )  # fmt: skip
    assert code != 0 and "not the RP2040's 0xe48bff56" in err
    assert not (home / "sims" / "rp-dev" / "firmware.uf2").exists()


@pytest.mark.rp2040
def test_a_uf2_that_does_not_boot_is_refused(tmp_path: Path) -> None:
    # Well-formed RP2040 UF2 blocks, but the code is zeros: no REPL ever answers.
    blocks = _blocks(default_uf2().read_bytes())[:64]
    for i, b in enumerate(blocks):
        b[20:28] = struct.pack("<II", i, len(blocks))
        b[32:288] = b"\x00" * 256
    path = _uf2(blocks, tmp_path / "zeros.uf2")
    check_uf2(path)  # the format is fine
    with pytest.raises(FirmwareError, match="did not boot to a MicroPython REPL"):
        boots_to_repl(path, timeout_s=20)


@pytest.mark.rp2040
def test_detached_board_lifecycle_and_power_cut(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys, "sim", "start", "--board", "rpi-pico", "--engine", "rp2040", "--name", "rp-dev",
        "--detach", "--json",
    )  # fmt: skip
    assert code == 0
    started = json.loads(out)
    state = Path(started["state_dir"])
    assert started["engine"] == "rp2040" and (state / "firmware.uf2").is_file()

    code, out, _ = run_cli(capsys, "sim", "list", "--json")
    [listed] = json.loads(out)
    assert listed["port"] == started["port"] and listed["engine"] == "rp2040"
    assert listed["slowness"] > 1

    with SerialTransport(started["port"], byte_timeout_s=120) as t:
        t.enter_raw_repl(timeout_s=300)
        assert t.eval("__import__('os').uname().machine") == "Raspberry Pi Pico with RP2040"
        t.exec("f=open('note.txt','w'); f.write('kept'); f.close(); marker = 1", timeout_s=300)

    code, _, _ = run_cli(capsys, "sim", "fault", "rp-dev", "--power-cut")
    assert code == 0
    with SerialTransport(started["port"], byte_timeout_s=120) as t:
        t.enter_raw_repl(timeout_s=300)
        assert t.eval("'marker' in globals()", timeout_s=300) is False  # RAM is gone
        assert t.eval("open('note.txt').read()", timeout_s=300) == "kept"  # flash is not

    # RESET (the RUN pin): the chip restarts from flash, RAM lost; no download mode.
    with SerialTransport(started["port"], byte_timeout_s=120) as t:
        t.enter_raw_repl(timeout_s=300)
        t.exec("marker = 2", timeout_s=300)
    code, _, _ = run_cli(capsys, "sim", "reset", "rp-dev")
    assert code == 0
    with SerialTransport(started["port"], byte_timeout_s=120) as t:
        t.enter_raw_repl(timeout_s=300)
        assert t.eval("'marker' in globals()", timeout_s=300) is False
        assert t.eval("open('note.txt').read()", timeout_s=300) == "kept"
    code, _, err = run_cli(capsys, "sim", "reset", "rp-dev", "--download")
    assert code != 0

    # The on-chip temperature sensor (ADC 4): the board's 27 C, 0 V while failed.
    code, _, _ = run_cli(capsys, "sim", "fault", "rp-dev", "--sensor", "temperature=fail")
    assert code == 0
    assert _adc4(started["port"]) == 0
    code, _, _ = run_cli(capsys, "sim", "fault", "rp-dev", "--sensor", "temperature=ok")
    assert code == 0
    assert _adc4(started["port"]) == _ADC4_27C

    # Worn flash: littlefs finds no block that takes a write, the files stay.
    code, _, _ = run_cli(capsys, "sim", "fault", "rp-dev", "--flash", "enospc")
    assert code == 0
    assert _append(started["port"], "note.txt", "+1") == [28, "kept"]  # ENOSPC
    code, _, _ = run_cli(capsys, "sim", "fault", "rp-dev", "--flash", "ok")
    assert code == 0
    assert _append(started["port"], "note.txt", "+1") == ["ok", "kept+1"]

    for fault, says in [
        (["--wifi", "down"], "a Pico (not W) has no radio"),
        (["--flash", "eio"], "cannot report EIO"),
        (["--sensor", "climate=fail"], "no I2C device is wired to the chip"),
    ]:
        code, _, err = run_cli(capsys, "sim", "fault", "rp-dev", *fault)
        assert code != 0 and says in err and len(err.strip().splitlines()) <= 2
    # A sensor failed when the board stops is healthy after a fresh start.
    code, _, _ = run_cli(capsys, "sim", "fault", "rp-dev", "--sensor", "temperature")
    assert code == 0

    code, out, _ = run_cli(capsys, "sim", "stop", "rp-dev")
    assert code == 0 and "stopped rp-dev" in out
    run_cli(capsys, "sim", "list", "--json")
    wait_for(lambda: not (state / ".lock").exists() or _unlocked(state), 30, "lock released")
    # The flash survives stop and start: the image holds the file.
    code, out, _ = run_cli(
        capsys, "sim", "start", "--board", "rpi-pico", "--engine", "rp2040", "--name", "rp-dev",
        "--detach", "--json",
    )  # fmt: skip
    assert code == 0
    with SerialTransport(json.loads(out)["port"], byte_timeout_s=120) as t:
        t.enter_raw_repl(timeout_s=300)
        assert t.eval("open('note.txt').read()", timeout_s=300) == "kept+1"
    assert _adc4(json.loads(out)["port"]) == _ADC4_27C


# read_u16 of the sensor at 27 C (0.706 V): the 12-bit 876 scaled to 16 bits as mp does.
_ADC4_27C = 876 << 4 | 876 >> 8


def _adc4(port: str) -> int:
    with SerialTransport(port, byte_timeout_s=120) as t:
        t.enter_raw_repl(timeout_s=300)
        value = t.eval("__import__('machine').ADC(4).read_u16()", timeout_s=300)
    assert isinstance(value, int)
    return value


_APPEND = """
def _w(name, text):
    try:
        with open(name, 'a') as f:
            f.write(text)
        r = 'ok'
    except OSError as e:
        r = e.errno
    print(repr([r, open(name).read()]))
_w(%r, %r)
"""


def _append(port: str, name: str, text: str) -> list[object]:
    """Append ``text`` to file ``name`` on the board: ['ok' or the errno, what it holds]."""
    with SerialTransport(port, byte_timeout_s=300) as t:
        t.enter_raw_repl(timeout_s=300)
        out = t.exec(_APPEND % (name, text), timeout_s=900)  # worn flash: every block tried
    result = ast.literal_eval(out.decode().strip())
    assert isinstance(result, list)
    return result


def _unlocked(state: Path) -> bool:
    from ioconnect_sim.statelock import lock_holder

    return lock_holder(state) is None
