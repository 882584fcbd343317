"""A virtual Pico's BOOTSEL mode: the RPI-RP2 drive takes a UF2 that becomes its flash.

Real parts: the image is built from the real MicroPython RPI_PICO UF2 by
`ioconnect image build`; the board is the virtual board (real MicroPython VM
behind a pty) that then mounts the littlefs partition of the flashed file with
MicroPython's own VfsLfs2; provisioning runs over that pty.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial
from ioconnect_host import agent
from ioconnect_host.boards import load_board
from ioconnect_host.cli import main
from ioconnect_host.deploy import firmware_files
from ioconnect_host.firmware import host_mpy_arch
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.flashfs import flash_path, read_flash_files
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard
from uf2check import pico_firmware, uf2_flash

PICO = load_board("rpi-pico")


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def build_image(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, str]) -> Path:
    # Native code for the VM this machine runs (the virtual board's CPU);
    # test_image.py checks the board's own (armv6m) build.
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "image.uf2"
    code = main(
        ["image", "build", "--board", "rpi-pico", "--firmware", str(pico_firmware()),
         "--config", str(cfg), "--mpy-arch", "host", "-o", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return out


def drive(vb: VirtualBoard) -> Path:
    return vb.config.state_dir / "RPI-RP2"


def in_bootsel(vb: VirtualBoard) -> bool:
    return (drive(vb) / "INFO_UF2.TXT").is_file()


def list_json(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["sim", "list", "--json"]) == 0
    result: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return result


def test_uf2_on_the_drive_boots_our_files_and_provisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = build_image(tmp_path, capsys, {"device.name": "bench-3"})
    with start_board("rpi-pico", name="bootsel-a", state_dir=tmp_path / "st", bootsel=True) as vb:
        assert in_bootsel(vb)
        info = (drive(vb) / "INFO_UF2.TXT").read_text()
        assert "Board-ID: RPI-RP2" in info and (drive(vb) / "INDEX.HTM").is_file()
        listed = [b for b in list_json(capsys) if b["name"] == "bootsel-a"]
        assert listed[0]["bootsel_drive"] == str(drive(vb))
        assert not flash_path(vb.config.state_dir).exists()

        shutil.copyfile(image, drive(vb) / "firmware.uf2")
        wait_for("the drive to vanish (reboot into the new flash)", lambda: not drive(vb).exists())
        flashed = flash_path(vb.config.state_dir).read_bytes()
        assert flashed == uf2_flash(image.read_bytes(), PICO.flash.image_base, PICO.flash.size)
        listed = [b for b in list_json(capsys) if b["name"] == "bootsel-a"]
        assert listed[0]["bootsel_drive"] is None

        with SerialTransport(vb.port) as t:
            facts = agent.info(t)
            assert facts["board"] == "Raspberry Pi Pico with RP2040"
            assert facts["identity"]["state"] == "none"
            out = t.exec(
                "import os\n"
                "print(sorted(os.listdir()), sorted(os.listdir('ioconnect')))\n"
                "print(open('config.json').read())\n"
            ).decode()
        top, config = out.strip().splitlines()
        wanted = {f.path for f in firmware_files(mpy_arch=host_mpy_arch())}
        names = {p for p in wanted if "/" not in p} | {"config.json", "ioconnect"}
        modules = {p.split("/")[1] for p in wanted if p.startswith("ioconnect/")} | {".manifest"}
        assert top == f"{sorted(names)} {sorted(modules)}"
        assert json.loads(config) == {"device.name": "bench-3"}

        inv = tmp_path / "inv.sqlite3"
        code = main(
            ["provision", "--port", vb.port, "--project-id", "42", "--json",
             "--inventory", str(inv), "--out", str(tmp_path / "bundle.json")]
        )  # fmt: skip
        out_text, err = capsys.readouterr()
        assert code == 0, err
        result = json.loads(out_text)
        assert result["created"] is True

        # What the board wrote went into the flashed partition, not the old folder.
        files = read_flash_files(vb.config.state_dir, PICO.filesystem)
        assert "identity.key" in files
        assert json.loads(files["config.json"])["w3bstream.project_id"] == "42"
        assert not (vb.config.state_dir / "flash" / "identity.key").exists()

        vb.power_cut()
        with SerialTransport(vb.port) as t:
            assert agent.info(t)["identity"]["did"] == result["did"]

    # The firmware gets the board's heap budget whichever filesystem is mounted:
    # free heap after boot as on a board that keeps its files in the folder.
    st2 = tmp_path / "st2"
    with start_board("rpi-pico", name="bs-z", state_dir=st2) as b, SerialTransport(b.port) as t:
        assert abs(agent.info(t)["free_heap"] - facts["free_heap"]) < 1024


def mangled(data: bytes) -> dict[str, bytes]:
    wrong_family = bytearray(data)
    for off in range(0, len(wrong_family), 512):
        struct.pack_into("<I", wrong_family, off + 28, 0x1C5F21B0)  # ESP32 family
    return {
        "family.uf2": bytes(wrong_family),
        "cut.uf2": data[: len(data) // 2],
        "magic.uf2": b"\0" * 4 + data[4:],
    }


def test_bad_uf2_is_refused_and_the_drive_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = build_image(tmp_path, capsys, {"device.name": "x"})
    with start_board("rpi-pico", name="bootsel-b", state_dir=tmp_path / "st", bootsel=True) as vb:
        log = vb.config.state_dir / "console.log"
        says = {
            "family.uf2": "family id 0x1c5f21b0, this board needs 0xe48bff56",
            "cut.uf2": "truncated",
            "magic.uf2": "no UF2 magic",
        }
        for name, data in mangled(image.read_bytes()).items():
            (drive(vb) / name).write_bytes(data)
            said = f"refused {name}: "
            wait_for(f"{name} to be refused", lambda s=said: s in log.read_text())
            assert in_bootsel(vb) and not (drive(vb) / name).exists()
            # The drive says why, in one line naming the file (what `ioconnect flash` reads).
            [why] = (drive(vb) / "REFUSED.TXT").read_text().splitlines()
            assert name in why and says[name] in why
        text = log.read_text()
        assert "family id 0x1c5f21b0, this board needs 0xe48bff56" in text
        assert "truncated" in text and "no UF2 magic" in text
        assert not flash_path(vb.config.state_dir).exists()  # nothing written
        shutil.copyfile(image, drive(vb) / "good.uf2")
        wait_for("the good image to boot", lambda: not drive(vb).exists())
        with SerialTransport(vb.port) as t:
            assert agent.info(t)["firmware"] == "0.1.0"


def test_bootloader_call_and_1200_baud_touch_enter_bootsel(tmp_path: Path) -> None:
    with start_board("rpi-pico", name="bootsel-c", state_dir=tmp_path / "st") as vb:
        assert not in_bootsel(vb)
        with SerialTransport(vb.port) as t:
            t.exec("import machine")
        with serial.Serial(vb.port, 115200, timeout=1) as s:
            s.write(b"\x03\x02machine.bootloader()\r\n")  # never returns: no raw-REPL exec
        wait_for("BOOTSEL after machine.bootloader()", lambda: in_bootsel(vb))
        vb.power_cut()  # unplug, plug in: out of BOOTSEL, the old flash boots
        wait_for("the drive to vanish after the power cut", lambda: not drive(vb).exists())
        with SerialTransport(vb.port) as t:
            assert agent.info(t)["firmware"] == "0.1.0"
        with serial.Serial(vb.port, 1200):
            pass  # the touch: open at 1200 baud, close
        wait_for("BOOTSEL after the 1200 baud touch", lambda: in_bootsel(vb))


def test_a_copy_that_pauses_is_not_taken_half_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copy stalls mid-way (page cache flushing, a slow disk): the drive must
    # wait for the writer to close the file, not judge what it sees so far.
    data = build_image(tmp_path, capsys, {"device.name": "slow"}).read_bytes()
    with start_board("rpi-pico", name="bootsel-d", state_dir=tmp_path / "st", bootsel=True) as vb:
        log = vb.config.state_dir / "console.log"
        with open(drive(vb) / "slow.uf2", "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(1.5)  # several looks by the drive while nothing changes
            assert (drive(vb) / "slow.uf2").exists() and "refused" not in log.read_text()
            f.write(data[len(data) // 2 :])
        wait_for("the completed copy to boot", lambda: not drive(vb).exists())
        assert "flashed slow.uf2" in log.read_text()


def test_sim_start_bootsel_names_the_drive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The drive is where a user copies a UF2: `sim start` says where it is, in text and JSON.
    state = tmp_path / "st"
    argv = ["sim", "start", "--board", "rpi-pico", "--state", str(state), "--bootsel", "--detach"]
    try:
        assert main([*argv, "--name", "bootsel-cli"]) == 0
        out = capsys.readouterr().out
        assert f"bootsel-cli BOOTSEL drive (copy a UF2 there): {state / 'RPI-RP2'}\n" in out
        assert main(["sim", "stop", "bootsel-cli"]) == 0
        capsys.readouterr()
        assert main([*argv, "--name", "bootsel-cli", "--json"]) == 0
        started = json.loads(capsys.readouterr().out)
        assert started["bootsel_drive"] == str(state / "RPI-RP2")
        wait_for("the drive", lambda: (state / "RPI-RP2" / "INFO_UF2.TXT").is_file())
    finally:
        main(["sim", "stop", "bootsel-cli"])


def test_image_for_the_chip_on_a_virtual_pico_says_to_deploy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The mass-production image (armv6m native code) flashed onto a virtual Pico,
    # whose VM runs this machine's code: the first signing request names the fix,
    # and the fix works.
    out = tmp_path / "line.uf2"
    code = main(["image", "build", "--board", "rpi-pico", "--firmware", str(pico_firmware()),
                 "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with start_board(
        "rpi-pico", name="bootsel-arch", state_dir=tmp_path / "st", bootsel=True
    ) as vb:
        shutil.copyfile(out, drive(vb) / "line.uf2")
        wait_for("the reboot into the new flash", lambda: not drive(vb).exists())
        capsys.readouterr()
        assert main(["identity", "create", "-p", vb.port]) == 1
        err = capsys.readouterr().err
        assert err == (
            "ioconnect: error: invalid_argument: incompatible .mpy arch (the board's firmware "
            "was compiled for another CPU: `ioconnect deploy` sends modules built for this one)\n"
        )
        # Nothing was stored by the failed create (the answer is made before the key
        # is written), so after the deploy a create succeeds.
        assert main(["identity", "show", "-p", vb.port]) == 1
        assert main(["deploy", "-p", vb.port]) == 0
        assert main(["identity", "create", "-p", vb.port]) == 0
        assert main(["identity", "show", "-p", vb.port]) == 0
