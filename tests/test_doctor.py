"""``ioconnect doctor``: findings and exit status.

Real here: a virtual board's port held open by another process (found through
the real /proc), the running virtual boards, the installed tools, the mode and
group of a real device file. Not arrangeable here, so made up and said so:
- the user: these tests run as root, who may open anything, so the access check
  is given another user's ids (UserIds) against a real file's mode and group;
- a Pico's RPI-RP2 drive mounted read-only, and ModemManager running: no
  mounting and no such daemon in this container, so a /proc-like folder with a
  ``mounts`` file and a ``PID/comm`` file stands in for /proc.
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ioconnect_host.cli import main
from ioconnect_host.doctor import UserIds, check_drives, check_grabbers, check_port_access
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualBoard]:
    vb = start_board(
        "rpi-pico", name=f"doc-{os.getpid()}", state_dir=tmp_path_factory.mktemp("doc")
    )
    try:
        yield vb
    finally:
        vb.stop()


def doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["doctor", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_port_held_by_another_program_blocks(
    board: VirtualBoard, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time\n"
         f"fd = os.open({board.port!r}, os.O_RDWR | os.O_NOCTTY)\n"
         "print('open', flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        code, report = doctor(capsys)
        assert code == 1 and report["blocked"] is True
        findings: list[dict[str, str]] = report["findings"]  # type: ignore[assignment]
        held = [f for f in findings if f["level"] == "block"]
        name = Path(f"/proc/{holder.pid}/comm").read_text().strip()
        assert [f["what"] for f in held] == [
            f"{board.port} is open in process {holder.pid} ({name})"
        ]
        assert "close that program" in held[0]["fix"]
        listed = [f["what"] for f in findings]
        assert f"virtual board {board.config.name} (rpi-pico) on {board.port}" in listed
    finally:
        holder.kill()
        holder.wait()
    code, report = doctor(capsys)
    findings = report["findings"]  # type: ignore[assignment]
    assert not [f for f in findings if board.port in f["what"] and f["level"] == "block"]
    # The board's own process (its supervisor, here this test) holds the pty: no finding.
    assert main(["doctor"]) == code
    lines = capsys.readouterr().out.splitlines()
    assert all(line[:5] in ("ok   ", "WARN ", "BLOCK") for line in lines if line[:7] != "doctor:")


def test_port_access_by_mode_and_group(tmp_path: Path) -> None:
    port = tmp_path / "ttyACM9"
    port.write_bytes(b"")
    dialout = grp.getgrnam("dialout").gr_gid
    os.chown(port, 0, dialout)
    os.chmod(port, 0o660)
    stranger = UserIds(uid=4242, name="maker", gids=frozenset({4242}))
    f = check_port_access(str(port), stranger)
    assert f.level == "block" and f.what == f"{port} belongs to group dialout; maker is not in it"
    assert f.fix == "`sudo usermod -aG dialout maker`, then log in again"
    member = UserIds(uid=4242, name="maker", gids=frozenset({4242, dialout}))
    assert check_port_access(str(port), member).level == "ok"
    os.chmod(port, 0o600)  # owner only: group membership does not help
    f = check_port_access(str(port), member)
    assert f.level == "block" and "mode -rw-------" in f.what and "udev rule" in f.fix
    assert check_port_access(str(tmp_path / "gone"), member).level == "block"


def test_read_only_pico_drive_and_port_grabbers(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "812").mkdir(parents=True)
    (proc / "812" / "comm").write_text("ModemManager\n")
    (proc / "813").mkdir()
    (proc / "813" / "comm").write_text("bash\n")
    (proc / "mounts").write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        "/dev/sdb1 /media/maker/RPI-RP2 vfat ro,nosuid,nodev,relatime 0 0\n"
        "/dev/sdc1 /media/maker/second\\040pico/RPI-RP2 vfat rw,nosuid 0 0\n"
    )
    [ro, rw] = check_drives(proc)
    assert ro.level == "block" and ro.what == "Pico drive /media/maker/RPI-RP2 is mounted read-only"
    assert "remount,rw /media/maker/RPI-RP2" in ro.fix
    assert rw.level == "ok" and "/media/maker/second pico/RPI-RP2 is writable" in rw.what
    [mm] = check_grabbers(proc)
    assert mm.level == "warn" and mm.what == "ModemManager runs (pid 812)"
    assert "ID_MM_DEVICE_IGNORE" in mm.fix
