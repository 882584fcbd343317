"""`ioconnect image build`: one flashable file per board, read back independently.

The Pico image is built from the real MicroPython v1.28.0 RPI_PICO UF2 in
shared/firmware; the UF2 is checked with tests/uf2check.py (written from the
spec, not ioconnect_host.uf2) and the filesystem partition read back with
littlefs-python, then compared with what `ioconnect deploy` sends the board.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import littlefs
import pytest
from clirun import error_line, run_cli
from ioconnect_host.boards import load_board
from ioconnect_host.deploy import MANIFEST, firmware_files, read_manifest
from uf2check import SPEC_FAMILY_FLAG, pico_firmware, uf2_blocks, uf2_flash

PICO_SHA256 = "4dbcb0aa6be64a944ed73c71cea56d170f3149c601452e07e5af791dc29e292c"
CONFIG = {"device.name": "line-7", "w3bstream.project_id": "42"}
MPY_ARMV6M = 4  # sys.implementation._mpy >> 10 of an RP2040 build (py/persistentcode.h)


def read_lfs(part: bytes, block_size: int) -> dict[str, bytes]:
    # littlefs-python directly (not ioconnect_sim.flashfs), block count from the superblock.
    fs = littlefs.LittleFS(block_size=block_size, block_count=0, mount=False)
    fs.context.buffer = bytearray(part)
    fs.mount()
    files = {}
    for root, _dirs, names in fs.walk("/"):
        for n in names:
            path = f"{root.rstrip('/')}/{n}".lstrip("/")
            with fs.open(path, "rb") as f:
                files[path] = f.read()
    assert fs.block_count == len(part) // block_size
    return files


def expected_files(arch: str) -> dict[str, bytes]:
    return {f.path: f.data for f in firmware_files(mpy_arch=arch)}


@pytest.fixture(scope="module")
def pico_uf2() -> Path:
    path = pico_firmware()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PICO_SHA256
    return path


def test_pico_uf2_reads_back(
    pico_uf2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = load_board("rpi-pico")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    out = tmp_path / "pico.uf2"
    code, text, err = run_cli(
        capsys, "image", "build", "--board", "rpi-pico", "--firmware", str(pico_uf2),
        "--config", str(cfg), "-o", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(text)
    data = out.read_bytes()
    assert report["format"] == "uf2" and report["bytes"] == len(data)
    assert report["sha256"] == hashlib.sha256(data).hexdigest()

    blocks = uf2_blocks(data)
    # One numbered set, every block for the RP2040 family, 256-byte pages.
    assert [b["no"] for b in blocks] == list(range(len(blocks)))
    assert {b["count"] for b in blocks} == {len(blocks)}
    assert {b["family"] for b in blocks} == {board.flash.uf2_family}
    assert all(isinstance(b["flags"], int) and b["flags"] & SPEC_FAMILY_FLAG for b in blocks)
    assert {b["size"] for b in blocks} == {256}
    # MicroPython's own blocks come first, unchanged.
    original = uf2_blocks(pico_uf2.read_bytes())
    head = blocks[: len(original)]
    assert [(b["addr"], b["data"]) for b in head] == [(b["addr"], b["data"]) for b in original]
    fs = board.filesystem
    assert all(int(b["addr"]) < board.flash.image_base + fs.offset for b in head)

    flash = uf2_flash(data, board.flash.image_base, board.flash.size)
    original_flash = uf2_flash(pico_uf2.read_bytes(), board.flash.image_base, board.flash.size)
    assert flash[: fs.offset] == original_flash[: fs.offset]
    files = read_lfs(bytes(flash[fs.offset : fs.offset + fs.size]), fs.block_size)

    wanted = expected_files("armv6m")  # what `ioconnect deploy` sends an RP2040
    assert {p: d for p, d in files.items() if p in wanted} == wanted
    assert set(files) == set(wanted) | {MANIFEST, "config.json"}
    assert json.loads(files["config.json"]) == CONFIG
    # The manifest makes these deploy's own files: a later deploy sends nothing.
    assert read_manifest(files[MANIFEST]) == {
        p: hashlib.sha256(d).hexdigest() for p, d in wanted.items()
    }
    agent_mpy = files["ioconnect/agent.mpy"]
    assert agent_mpy[:1] == b"M" and agent_mpy[2] >> 2 in (0, MPY_ARMV6M)
    assert any(d[:1] == b"M" and d[2] >> 2 == MPY_ARMV6M for d in files.values())


def esp32_standin(size: int) -> bytes:
    # No ESP32 MicroPython build may be fetched here: a stand-in with the ESP
    # image magic byte; the builder only places it, byte for byte.
    body = hashlib.shake_256(b"esp32 firmware stand-in").digest(size - 1)
    return b"\xe9" + body


def test_esp32_merged_bin_reads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    board = load_board("esp32")
    fw = tmp_path / "ESP32_GENERIC.bin"
    fw.write_bytes(esp32_standin(1_600_000))
    out = tmp_path / "esp32.bin"
    code, text, err = run_cli(
        capsys, "image", "build", "--board", "esp32", "--firmware", str(fw), "-o", str(out),
        "--json",
    )  # fmt: skip
    assert code == 0, err
    data = out.read_bytes()
    fs, start = board.filesystem, board.flash.firmware_offset
    assert len(data) == fs.offset + fs.size  # written with `esptool write_flash 0x0`
    assert data[:start] == b"\xff" * start
    assert data[start : start + len(fw.read_bytes())] == fw.read_bytes()
    assert set(data[start + len(fw.read_bytes()) : fs.offset]) == {0xFF}
    files = read_lfs(data[fs.offset :], fs.block_size)
    wanted = expected_files("xtensawin")
    assert {p: d for p, d in files.items() if p in wanted} == wanted
    assert set(files) == set(wanted) | {MANIFEST}
    assert json.loads(text)["filesystem"]["offset"] == fs.offset


def rewrite_family(data: bytes, family: int) -> bytes:
    out = bytearray(data)
    for off in range(0, len(out), 512):
        struct.pack_into("<I", out, off + 28, family)
    return bytes(out)


@pytest.mark.parametrize(
    ("name", "mangle", "says"),
    [
        ("wrong family", lambda d: rewrite_family(d, 0x1C5F21B0), "family id 0x1c5f21b0"),
        ("cut mid-block", lambda d: d[: len(d) // 2 + 100], "not whole 512-byte"),
        ("cut at a block", lambda d: d[: len(d) // 2], "truncated"),
        ("wrong magic", lambda d: b"\0" * 4 + d[4:], "no UF2 magic"),
        ("esp32 bin", lambda d: b"\xe9" + b"\0" * 1023, "no UF2 magic"),
    ],
)
def test_bad_pico_firmware_is_one_line_error(
    pico_uf2: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    mangle: object,
    says: str,
) -> None:
    assert callable(mangle)
    bad = tmp_path / "bad.uf2"
    bad.write_bytes(mangle(pico_uf2.read_bytes()))
    out = tmp_path / "out.uf2"
    code, _, err = run_cli(
        capsys, "image", "build", "--board", "rpi-pico", "--firmware", str(bad), "-o", str(out)
    )
    assert code != 0
    assert says in error_line(err), name
    assert not out.exists()


def test_firmware_into_the_filesystem_is_refused(
    pico_uf2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A UF2 whose last block lands on the filesystem partition would overwrite it.
    data = bytearray(pico_uf2.read_bytes())
    struct.pack_into("<I", data, len(data) - 512 + 12, 0x100A0000)
    bad = tmp_path / "big.uf2"
    bad.write_bytes(data)
    code, _, err = run_cli(
        capsys, "image", "build", "--board", "rpi-pico", "--firmware", str(bad),
        "-o", str(tmp_path / "o.uf2"),
    )  # fmt: skip
    assert code != 0 and "outside 0x10000000..0x100a0000" in error_line(err)
    esp = tmp_path / "big.bin"
    esp.write_bytes(esp32_standin(0x200000))
    code, _, err = run_cli(
        capsys, "image", "build", "--board", "esp32", "--firmware", str(esp),
        "-o", str(tmp_path / "o.bin"),
    )  # fmt: skip
    assert code != 0 and "runs into the filesystem at 0x200000" in error_line(err)


def test_bad_config_is_one_line_error(
    pico_uf2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.json"
    for text, says in (("[1, 2]", "must be a JSON object"), ("{nope", "is not JSON")):
        cfg.write_text(text)
        code, _, err = run_cli(
            capsys, "image", "build", "--board", "rpi-pico", "--firmware", str(pico_uf2),
            "--config", str(cfg), "-o", str(tmp_path / "o.uf2"),
        )  # fmt: skip
        assert code != 0 and says in error_line(err)


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"mqtt.prot": 1883}, "unknown setting 'mqtt.prot'"),
        ({"mqtt.port": 70000}, "mqtt.port must be an integer in 1..65535"),
        ({"mqtt.tls": "yes"}, "mqtt.tls must be true or false"),
        ({"w3bstream.project_id": "4x2"}, "w3bstream.project_id must be a decimal number"),
    ],
)
def test_config_the_firmware_refuses_is_one_line_error(
    pico_uf2: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setting: dict[str, object],
    says: str,
) -> None:
    # Checked by the firmware's own config.check on MicroPython, as `config set` is.
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**CONFIG, **setting}))
    out = tmp_path / "o.uf2"
    code, _, err = run_cli(
        capsys, "image", "build", "--board", "rpi-pico", "--firmware", str(pico_uf2),
        "--config", str(cfg), "-o", str(out),
    )  # fmt: skip
    assert code != 0
    assert error_line(err).endswith(f"--config {cfg}: {says}")
    assert not out.exists()


def test_pico_image_boots_on_the_emulated_rp2040(
    pico_uf2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The chip-level check: rp2040py runs the image's own MicroPython on an
    # emulated RP2040 with nothing but the UF2 in its flash (no --littlefs), so
    # the filesystem it mounts is the one the image carries; our armv6m native
    # code runs there. About 15 s of wall time.
    import subprocess
    import sys

    from Crypto.Hash import keccak

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    out = tmp_path / "pico.uf2"
    code, _, err = run_cli(
        capsys, "image", "build", "--board", "rpi-pico", "--firmware", str(pico_uf2),
        "--config", str(cfg), "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    script = (
        "import os, sys, binascii\n"
        "from ioconnect.keccak import keccak256\n"
        "print('MPY', sys.implementation._mpy >> 10)\n"
        "print('FILES', ' '.join(sorted(os.listdir())))\n"
        "print('CONFIG', open('config.json').read())\n"
        "print('K', binascii.hexlify(keccak256(b'ioconnect')).decode())\n"
    )
    rp2040py = Path(sys.executable).with_name("rp2040py")
    done = subprocess.run(
        [str(rp2040py), "micropython", "--image", str(out), "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines.get("MPY") == str(MPY_ARMV6M), done.stdout + done.stderr
    assert lines["FILES"].split() == ["boot.py", "config.json", "ioconnect", "main.py"]
    assert json.loads(lines["CONFIG"]) == CONFIG
    assert lines["K"] == keccak.new(digest_bits=256, data=b"ioconnect").hexdigest()
