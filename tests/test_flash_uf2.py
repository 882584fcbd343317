"""`ioconnect flash` for Pico boards: bootloader request, RPI-RP2 drive, copy, port back.

Against virtual Picos (real MicroPython VM behind a pty; the BOOTSEL drive is a
folder, see test_bootsel.py), with images built by `ioconnect image build` from
the real MicroPython RPI_PICO UF2.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from clirun import error_line, run_cli
from ioconnect_host import agent
from ioconnect_host.boards import load_board
from ioconnect_host.cli import main
from ioconnect_host.firmware import host_mpy_arch
from ioconnect_host.flash_arch import image_mpy_arch
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.flashfs import flash_path
from ioconnect_sim.launch import start_board
from uf2check import pico_firmware


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("img") / "pico-host.uf2"
    # Native code for the VM this machine runs (the virtual board's CPU).
    code = main(
        ["image", "build", "--board", "rpi-pico", "--firmware", str(pico_firmware()),
         "--mpy-arch", "host", "-o", str(out)]
    )  # fmt: skip
    assert code == 0
    return out


def test_flash_asks_the_bootloader_copies_and_the_board_returns(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "st"
    # A blank board running MicroPython only: flashing gives it our firmware.
    with start_board("rpi-pico", name="flash-a", state_dir=state, install_firmware=False) as vb:
        code, out, err = run_cli(
            capsys, "flash", "-p", "sim:flash-a", "--firmware", str(image), "--json"
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["how"] == "bootloader call"
        assert report["port"] == vb.port and report["blocks"] == len(image.read_bytes()) // 512
        assert flash_path(state).is_file() and not (state / "RPI-RP2").exists()
        with SerialTransport(vb.port) as t:  # answers at once: flash waited for it
            facts = agent.info(t)
            assert facts["firmware"] == "0.1.0" and facts["identity"]["state"] == "none"
            ident = agent.identity_create(t, "secp256k1")

        # The identity lives in the filesystem: an image bringing its own is refused...
        code, _, err = run_cli(capsys, "flash", "-p", "sim:flash-a", "--firmware", str(image))
        assert code != 0
        line = error_line(err)
        assert ident["did"] in line and "--erase-identity" in line
        assert not (state / "RPI-RP2").exists()  # the board was not touched
        # ...MicroPython alone keeps it...
        code, _, err = run_cli(
            capsys, "flash", "-p", "sim:flash-a", "--firmware", str(pico_firmware())
        )
        assert code == 0, err
        with SerialTransport(vb.port) as t:
            assert agent.info(t)["identity"]["did"] == ident["did"]
        # ...and --erase-identity says so loudly and replaces it.
        code, _, err = run_cli(
            capsys, "flash", "-p", "sim:flash-a", "--firmware", str(image), "--erase-identity"
        )
        assert code == 0 and f"WARNING: erasing the identity {ident['did']}" in err
        with SerialTransport(vb.port) as t:
            assert agent.info(t)["identity"]["state"] == "none"


def test_bad_uf2_is_refused_before_the_board_is_touched(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = image.read_bytes()
    family = bytearray(data)
    for off in range(0, len(family), 512):
        struct.pack_into("<I", family, off + 28, 0x1C5F21B0)
    cases = {
        "family.uf2": (bytes(family), "family id 0x1c5f21b0, this board needs 0xe48bff56"),
        "cut.uf2": (data[: len(data) // 2], "truncated"),
        "magic.uf2": (b"\0" * 4 + data[4:], "no UF2 magic"),
    }
    with start_board("rpi-pico", name="flash-b", state_dir=tmp_path / "st") as vb:
        for name, (bad, says) in cases.items():
            path = tmp_path / name
            path.write_bytes(bad)
            code, _, err = run_cli(capsys, "flash", "-p", "sim:flash-b", "--firmware", str(path))
            assert code != 0 and says in error_line(err), name
        assert not (vb.config.state_dir / "RPI-RP2").exists()
        assert not flash_path(vb.config.state_dir).exists()
        with SerialTransport(vb.port) as t:
            assert agent.info(t)["firmware"] == "0.1.0"


def test_image_for_another_architecture_is_refused_before_the_board_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The board's own build (armv6m .mpy), as for a real Pico: the virtual board on
    # the unix engine loads only this machine's native code.
    armv6m = tmp_path / "pico.uf2"
    code = main(["image", "build", "--board", "rpi-pico", "--firmware", str(pico_firmware()),
                 "-o", str(armv6m)])  # fmt: skip
    assert code == 0
    assert image_mpy_arch(load_board("rpi-pico"), armv6m.read_bytes()) == "armv6m"
    with start_board("rpi-pico", name="flash-arch", state_dir=tmp_path / "st") as vb:
        code, _, err = run_cli(capsys, "flash", "-p", "sim:flash-arch", "--firmware", str(armv6m))
        assert code != 0
        assert error_line(err).startswith(
            f"ioconnect: error: pico.uf2 holds firmware compiled for armv6m, but the virtual "
            f"board flash-arch runs {host_mpy_arch()} code"
        )
        assert not (vb.config.state_dir / "RPI-RP2").exists()
        assert not flash_path(vb.config.state_dir).exists()
        with SerialTransport(vb.port) as t:
            assert agent.info(t)["firmware"] == "0.1.0"
    # MicroPython alone carries no firmware of ours: nothing to compare.
    assert image_mpy_arch(load_board("rpi-pico"), pico_firmware().read_bytes()) is None


def test_no_drive_gives_the_steps_to_do_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # MicroPython alone: no BOOTSEL drive for it, whatever the image holds.
    code, _, err = run_cli(
        capsys, "flash", "--board", "rpi-pico", "--bootsel-only", "--firmware",
        str(pico_firmware()),
        "--drive", str(tmp_path), "--timeout", "1",
    )  # fmt: skip
    assert code != 0
    assert "no RPI-RP2 drive appeared" in error_line(err) and "hold its BOOTSEL" in err


def test_a_real_drive_is_found_by_its_info_file(tmp_path: Path) -> None:
    # /proc/mounts as the kernel writes it (spaces as \040); the drives are folders.
    from ioconnect_host.flash_uf2 import find_rp2_drive

    other, pico = tmp_path / "USB STICK", tmp_path / "RPI RP2"
    for d in (other, pico):
        d.mkdir()
    (other / "INFO_UF2.TXT").write_text("UF2 Bootloader v1.0\nBoard-ID: SAMD21-Feather\n")
    (pico / "INFO_UF2.TXT").write_text(
        "UF2 Bootloader v3.0\r\nModel: Raspberry Pi RP2\r\nBoard-ID: RPI-RP2\r\n"
    )
    esc = lambda p: str(p).replace(" ", "\\040")  # noqa: E731
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"/dev/sda1 {esc(other)} vfat rw,nosuid 0 0\n"
        f"/dev/vda / ext4 rw 0 0\n"
        f"/dev/sdb1 {esc(pico)} vfat rw,nosuid,uid=1000 0 0\n"
    )
    assert find_rp2_drive(mounts) == pico
    mounts.write_text(f"/dev/sda1 {esc(other)} vfat rw 0 0\n")
    assert find_rp2_drive(mounts) is None
