"""``ioconnect flash`` for the ESP32 family, against virtual boards' ROM download mode.

esptool's Python API does the flashing; the virtual board's ROM (romboot.py)
answers as a chip would. No ESP32 MicroPython build runs here: the images are
valid ESP images (tests/espimage.py) and the virtual board keeps running the
unix port's VM, but it mounts the filesystem partition that was flashed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import error_message, interrupt_when, run_cli
from espimage import app_image, merged_image, wait_until
from ioconnect_host import agent
from ioconnect_host.boards import load_board
from ioconnect_host.firmware import host_mpy_arch
from ioconnect_host.flash_esp import FlashError, flash_esp
from ioconnect_host.ports import select_port
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.flashfs import FLASH_FILE
from ioconnect_sim.launch import start_board, start_detached, stop_running
from ioconnect_sim.supervisor import VirtualBoard


@pytest.fixture
def esp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VirtualBoard]:
    board = getattr(request, "param", "esp32")
    with start_board(board, name=f"fl-{board}", state_dir=tmp_path / "state") as vb:
        yield vb


def booted(vb: VirtualBoard) -> None:
    wait_until(lambda: not vb.in_download_mode, "the board to leave download mode")


@pytest.mark.parametrize("esp", ["esp32", "esp32-s3"], indirect=True)
def test_flash_merged_image_then_the_board_mounts_its_filesystem(
    esp: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = load_board(esp.config.board["name"])  # type: ignore[arg-type]
    image = merged_image(board, {"hello.txt": b"from the image", "lib/x.py": b"X = 42\n"})
    (tmp_path / "m.bin").write_bytes(image)
    code, out, err = run_cli(
        capsys, "flash", "--board", board.name, "--firmware", str(tmp_path / "m.bin"),
        "-p", f"sim:{esp.config.name}", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["verified"] and result["virtual"] and not result["erased"]
    # A merged image from flash offset 0: written from the firmware offset on.
    offset = board.flash.firmware_offset
    assert result["offset"] == offset and result["size"] == len(image) - offset
    assert (esp.config.state_dir / FLASH_FILE).read_bytes()[: len(image)] == image
    booted(esp)
    with SerialTransport(esp.port) as t:
        listing = t.exec("import os; print(sorted(os.listdir('/')), open('hello.txt').read())")
    assert listing.decode().strip() == "['hello.txt', 'lib'] from the image"


def test_image_build_flash_boot_provision_end_to_end(
    esp: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `image build` (MicroPython stand-in + our firmware as .mpy for the VM + a
    # config) -> `flash` -> boot -> `provision`, each the real command.
    (tmp_path / "mp.bin").write_bytes(app_image("esp32", b"\x5a" * 4096))
    (tmp_path / "config.json").write_text(json.dumps({"device.name": "line-9"}))
    code, _, err = run_cli(
        capsys, "image", "build", "--board", "esp32", "--firmware", str(tmp_path / "mp.bin"),
        "--config", str(tmp_path / "config.json"), "--mpy-arch", "host",
        "-o", str(tmp_path / "fw.bin"),
    )  # fmt: skip
    assert code == 0, err
    # Not the firmware the virtual board was made with: prove the flashed one is used.
    with SerialTransport(esp.port) as t:
        t.exec("import os; os.remove('boot.py')")
    code, _, err = run_cli(
        capsys, "flash", "--board", "esp32", "--firmware", str(tmp_path / "fw.bin"),
        "-p", f"sim:{esp.config.name}",
    )  # fmt: skip
    assert code == 0, err
    booted(esp)
    code, out, err = run_cli(
        capsys, "provision", "--port", esp.port, "--project-id", "7",
        "--inventory", str(tmp_path / "inv.sqlite3"), "--out", str(tmp_path / "b.json"), "--json",
    )  # fmt: skip
    assert code == 0, err
    did = json.loads(out)["did"]
    with SerialTransport(esp.port) as t:
        assert agent.identity_show(t)["did"] == did
        assert b"boot.py" in t.exec("import os; print(os.listdir('/'))")
        assert b"line-9" in t.exec("print(open('config.json').read())")


def test_image_for_another_architecture_is_refused_before_the_board_is_touched(
    esp: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The ESP32's own build (xtensawin .mpy): this virtual board's VM loads only
    # this machine's native code, so the image would flash and then not boot.
    (tmp_path / "mp.bin").write_bytes(app_image("esp32", b"\x5a" * 4096))
    code, _, err = run_cli(
        capsys, "image", "build", "--board", "esp32", "--firmware", str(tmp_path / "mp.bin"),
        "-o", str(tmp_path / "fw.bin"),
    )  # fmt: skip
    assert code == 0, err
    flash = esp.config.state_dir / FLASH_FILE
    before = flash.read_bytes() if flash.exists() else None
    code, _, err = run_cli(
        capsys, "flash", "--board", "esp32", "--firmware", str(tmp_path / "fw.bin"),
        "-p", f"sim:{esp.config.name}",
    )  # fmt: skip
    assert code != 0
    assert error_message(err).startswith(
        f"fw.bin holds firmware compiled for xtensawin, but the virtual board "
        f"{esp.config.name} runs {host_mpy_arch()} code"
    )
    assert not esp.in_download_mode
    assert (flash.read_bytes() if flash.exists() else None) == before
    with SerialTransport(esp.port) as t:
        assert agent.info(t)["firmware"] == "0.1.0"


def test_ctrl_c_mid_flash_says_what_the_board_holds_and_flashing_again_recovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = load_board("esp32")
    # An incompressible 256 KB app over the wire's 115200 baud: about 20 s of writing,
    # time to press Ctrl-C (SIGINT, as a terminal sends it) half-way.
    image = merged_image(board, {"hello.txt": b"hi"}, app=app_image("esp32", os.urandom(1 << 18)))
    (tmp_path / "m.bin").write_bytes(image)
    start = board.flash.firmware_offset
    probe = slice(start + 0x2000, start + 0x3000)  # past the header esptool may adjust
    # --erase-identity: this blank board's filesystem need not be read first (minutes
    # at this baud rate).
    argv = ["flash", "--board", "esp32", "--firmware", str(tmp_path / "m.bin"),
            "-p", "sim:fl-ctrl-c", "--erase-identity"]  # fmt: skip
    with start_board("esp32", name="fl-ctrl-c", state_dir=tmp_path / "st", fast=False) as vb:
        flash = vb.config.state_dir / FLASH_FILE

        def chip() -> bytes:
            return flash.read_bytes()[: len(image)] if flash.exists() else b""

        def writing() -> bool:
            assert proc.poll() is None, proc.communicate()
            return chip()[probe] == image[probe]

        proc = subprocess.Popen(
            [sys.executable, "-m", "ioconnect_host.launcher", *argv, "--baud", "115200"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = interrupt_when(proc, writing, "the write to begin", 180)
        assert proc.returncode == 130, err
        assert err == (
            "ioconnect: flash interrupted: the board may hold a half-written image and not "
            "boot; flash it again (the ESP32's ROM download mode and the Pico's BOOTSEL are "
            "in ROM and still work)\n"
        )
        assert out == ""
        assert chip() != image  # cut mid-write indeed
        # What the line says: flashing again works.
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
        assert chip() == image
        booted(vb)


def test_reflash_keeps_identity_and_erase_needs_erase_identity(
    esp: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SerialTransport(esp.port) as t:
        did = agent.identity_create(t)["did"]
    app = tmp_path / "app.bin"
    app.write_bytes(app_image("esp32"))  # the app alone: the filesystem is not in the image
    port = f"sim:{esp.config.name}"
    code, _, err = run_cli(capsys, "flash", "--board", "esp32", "--firmware", str(app), "-p", port)
    assert code == 0, err
    booted(esp)
    with SerialTransport(esp.port) as t:
        assert agent.identity_show(t)["did"] == did
    merged = tmp_path / "merged.bin"  # brings its own filesystem: the key would go
    merged.write_bytes(merged_image(load_board("esp32"), {"x.txt": b"x"}))
    code, _, err = run_cli(
        capsys, "flash", "--board", "esp32", "--firmware", str(merged), "-p", port
    )
    assert code == 1
    assert "this image (it holds a filesystem) would DESTROY" in error_message(err)
    booted(esp)  # refused: reset back into MicroPython, untouched
    code, _, err = run_cli(
        capsys, "flash", "--board", "esp32", "--firmware", str(app), "-p", port, "--erase"
    )
    assert code == 1
    assert "--erase would DESTROY this device's identity key" in error_message(err)
    booted(esp)
    with SerialTransport(esp.port) as t:
        assert agent.identity_show(t)["did"] == did
    code, out, err = run_cli(
        capsys, "flash", "--board", "esp32", "--firmware", str(app), "-p", port,
        "--erase", "--erase-identity", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert "DESTROYS the device's identity key" in err
    assert json.loads(out)["erased"]
    booted(esp)
    with SerialTransport(esp.port) as t:
        assert t.exec("import os; print(os.listdir('/'))").strip() == b"[]"


def flash_refused(
    capsys: pytest.CaptureFixture[str], esp: VirtualBoard, path: Path, image: bytes
) -> str:
    """``image`` saved as ``path`` and flashed onto ``esp`` as --board esp32: the
    command must exit 1; returns its one error message."""
    path.write_bytes(image)
    code, _, err = run_cli(
        capsys, "flash", "--board", "esp32", "--firmware", str(path), "-p", f"sim:{esp.config.name}"
    )
    assert code == 1
    return error_message(err)


def test_wrong_chip_image_is_refused_before_the_board_is_touched(
    esp: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said = flash_refused(capsys, esp, tmp_path / "s3.bin", app_image("esp32s3"))
    assert said.startswith("the image is for esp32s3, not esp32 (--board esp32)")
    assert not esp.in_download_mode and not (esp.config.state_dir / FLASH_FILE).exists()
    said = flash_refused(capsys, esp, tmp_path / "junk.bin", b"MZ" + bytes(100))
    assert said.startswith("not an ESP firmware image: it starts with 0x4d")


@pytest.mark.parametrize("esp", ["esp32-s3"], indirect=True)
def test_a_board_of_another_chip_is_refused(
    esp: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said = flash_refused(capsys, esp, tmp_path / "e.bin", app_image("esp32"))
    assert said.startswith(f"the board on {esp.port} is an ESP32-S3, not esp32")
    assert (esp.config.state_dir / FLASH_FILE).read_bytes()[:1] == b"\xff"  # nothing written
    booted(esp)  # refused: back in MicroPython, not left in the ROM loader
    with SerialTransport(esp.port) as t:
        assert agent.info(t)["firmware"] == "0.1.0"


def test_garbage_on_the_line_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A port whose device only ever sends noise (no ROM loader, no MicroPython).
    master, slave = pty.openpty()
    port = os.ttyname(slave)
    stop = threading.Event()

    def noise() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.write(master, os.urandom(64))
            time.sleep(0.01)

    thread = threading.Thread(target=noise, daemon=True)
    thread.start()
    (tmp_path / "e.bin").write_bytes(app_image("esp32"))
    try:
        code, _, err = run_cli(
            capsys, "flash", "--board", "esp32", "--firmware", str(tmp_path / "e.bin"),
            "-p", port,
        )  # fmt: skip
    finally:
        stop.set()
        thread.join()
        os.close(master)
        os.close(slave)
    assert code == 1
    assert error_message(err).startswith(f"no ESP ROM loader answered on {port}")


def test_unplugged_mid_transfer_is_one_line_error(tmp_path: Path) -> None:
    # The board (its own process, as a detached `sim start`) goes away while esptool writes.
    rec = start_detached("esp32", name="fl-unplug", state_dir=tmp_path / "state")
    board = load_board("esp32")
    image = merged_image(board, {"a.bin": os.urandom(200_000)})
    pulled: list[bool] = []

    def pull_the_cable(done: int, total: int) -> None:
        if not pulled and done > total // 4:
            pulled.append(True)
            stop_running(rec.name)

    try:
        with pytest.raises(FlashError) as err:
            flash_esp(board, image, select_port(f"sim:{rec.name}"), progress=pull_the_cable)
    finally:
        if not pulled:
            stop_running(rec.name)
    assert pulled
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("virtual board fl-unplug went away during the transfer")


def test_baud_rate_steps_down_when_the_line_fails(esp: VirtualBoard) -> None:
    # A fault: the line garbles everything above 230400 baud (a long cable).
    esp.set_fault(line_max_baud=230400)
    board = load_board("esp32")
    image = app_image("esp32")
    result = flash_esp(board, image, select_port(f"sim:{esp.config.name}"), baud=921600)
    assert (result.baud, result.attempts, result.verified) == (230400, 3, True)
    flash = (esp.config.state_dir / FLASH_FILE).read_bytes()
    assert flash[0x1000 : 0x1000 + len(image)] == image
