"""The virtual board is not special: it answers as its port does, and the firmware
cannot tell it from a board.

Each check compares with what the real port's C code gives: ``os.uname()``
(extmod/modos.c), ``sys.platform``, ``sys.implementation._machine``, tick counters
that start at power-on, ``mpremote df`` rows, and tracebacks without the
simulator's frames.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import serial
from ioconnect_host import agent
from ioconnect_host.boards import Board, list_boards, load_board
from ioconnect_host.paths import firmware_dir
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard

BOARDS = list_boards()


@pytest.fixture(scope="module", params=BOARDS)
def board(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VirtualBoard]:
    state = tmp_path_factory.mktemp(f"faithful-{request.param}")
    vb = start_board(request.param, name=f"faithful-{request.param}", state_dir=state)
    yield vb
    vb.stop()


def spec(vb: VirtualBoard) -> Board:
    return load_board(str(vb.config.board["name"]))


def wait_boots(vb: VirtualBoard, boots: int) -> None:
    deadline = time.monotonic() + 20
    while vb.boots < boots and time.monotonic() < deadline:
        time.sleep(0.02)
    assert vb.boots == boots, f"board did not reboot (boots {vb.boots}, wanted {boots})"


def test_firmware_never_imports_the_simulator() -> None:
    hits = [
        str(p.relative_to(firmware_dir()))
        for p in firmware_dir().rglob("*.py")
        if "_simboard" in p.read_text()
    ]
    assert hits == []


def test_identity_as_the_port_gives_it(board: VirtualBoard) -> None:
    b = spec(board)
    machine = f"{b.board_name} with {b.mcu_name}"
    with SerialTransport(board.port) as t:
        got = t.eval(
            "(tuple(__import__('os').uname()), __import__('sys').platform,"
            " __import__('sys').implementation._machine, __import__('sys').version,"
            " __import__('sys').implementation.version)"
        )
        text = t.exec(
            "import os, sys, time, utime, uos, usys\n"
            "print(repr(os.uname()))\n"
            "print(utime is time, uos is os, usys is sys, sys)\n"
        )
        info = agent.info(t)
        # The shims' own helpers are not the modules' names (tab completion lists those).
        leaked = t.eval(
            "[m + '.' + n for m in ('os', 'time', 'sys') for n in ('uos', 'usys', 'utime',"
            " 'cpu_per_us') if hasattr(__import__(m), n)]"
        )
    uname, platform, impl_machine, version, v = got
    release = ".".join(str(n) for n in v[:3])
    # extmod/modos.c: sysname and nodename are MICROPY_PY_SYS_PLATFORM, machine is
    # MICROPY_HW_BOARD_NAME " with " MICROPY_HW_MCU_NAME.
    assert tuple(uname) == (
        b.platform,
        b.platform,
        release,
        f"v{release} on 2026-07-05",
        machine,
    )
    assert platform == b.platform
    assert impl_machine == machine
    assert version.endswith(f"; MicroPython v{release} on 2026-07-05")
    assert info["board"] == machine  # op_info reads os.uname() as on a board
    lines = text.decode().splitlines()
    assert lines[0] == (
        f"(sysname='{b.platform}', nodename='{b.platform}', release='{release}', "
        f"version='v{release} on 2026-07-05', machine='{machine}')"
    )
    assert lines[1] == "True True True <module 'sys'>"
    assert leaked == []


def reset_and_wait(port: str, code: bytes, ready: bytes) -> None:
    """Send ``code`` (which resets the board) in the raw REPL; wait for ``ready``."""
    with serial.Serial(port, 115200, timeout=0.1) as s:
        s.write(b"\r\x03\x03\x01")
        buf = b""
        deadline = time.monotonic() + 20
        while not buf.endswith(b"raw REPL; CTRL-B to exit\r\n>"):
            assert time.monotonic() < deadline, buf
            buf += s.read(4096)
        s.write(code + b"\x04")  # an empty line is a soft reset
        buf = b""
        while not buf.endswith(ready):  # the new boot is done talking
            assert time.monotonic() < deadline, buf
            buf += s.read(4096)


def _ticks(t: SerialTransport) -> list[int]:
    got: list[int] = t.eval("[__import__('time').ticks_ms(), __import__('time').ticks_us()]")
    return got


def test_ticks_start_at_power_on_and_survive_soft_reset(board: VirtualBoard) -> None:
    cpu_per_us = spec(board).cpu_freq_hz // 1_000_000 if spec(board).port == "esp32" else 1
    boots = board.boots
    before = time.monotonic()
    board.power_cut()
    wait_boots(board, boots + 1)
    with SerialTransport(board.port) as t:
        ms, us = _ticks(t)
        cpu = t.eval("__import__('time').ticks_cpu()")
        uptime = agent.info(t)["uptime_ms"]
        elapsed = time.monotonic() - before
        # Nothing counted before the power came back: at most the time since the cut.
        assert 0 <= ms <= elapsed * 1000
        assert 0 <= us <= elapsed * 1e6
        assert 0 <= cpu <= elapsed * 1e6 * cpu_per_us
        assert ms <= uptime <= elapsed * 1000
    # A soft reset keeps the counter running, as the chips' timers do.
    reset_and_wait(board.port, b"", b"soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
    assert board.boots == boots + 2
    with SerialTransport(board.port) as t:
        assert _ticks(t)[0] >= uptime
    # machine.reset() is a hard reset: the counter starts again.
    before = time.monotonic()
    reset_and_wait(
        board.port, b"import machine\nmachine.reset()", b'help()" for more information.\r\n>>> '
    )
    assert board.boots == boots + 3
    with SerialTransport(board.port) as t:
        assert 0 <= _ticks(t)[0] <= (time.monotonic() - before) * 1000


def test_mpremote_df_prints_rows_as_a_board(board: VirtualBoard) -> None:
    cmd = [sys.executable, "-m", "mpremote", "connect", board.port, "df"]
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=True)
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["filesystem", "size", "used", "avail", "use%", "mounted", "on"]
    assert len(lines) == 2, lines
    m = re.fullmatch(r"<VfsLfs2> +(\d+) +(\d+) +(\d+) +(\d+) /", lines[1])
    assert m, lines[1]
    size, used, avail, pct = map(int, m.groups())
    assert size == spec(board).filesystem.size
    assert used + avail == size
    assert pct == 100 * used // size


def test_user_tracebacks_show_only_user_frames(board: VirtualBoard) -> None:
    head = b'Traceback (most recent call last):\r\n  File "<stdin>", line 1, in <module>\r\n'
    with SerialTransport(board.port) as t:
        out, err = t.exec_raw("import machine\nmachine.Pin(99)")
        assert (out, err) == (
            b"",
            head.replace(b"line 1", b"line 2") + b"ValueError: invalid pin\r\n",
        )
        out, err = t.exec_raw("machine.Nothing")
        assert err == head + b"AttributeError: module 'machine' has no attribute 'Nothing'\r\n"
        out, err = t.exec_raw("undefined_name")
        assert err == head + b"NameError: name 'undefined_name' isn't defined\r\n"


def test_friendly_repl_traceback_is_a_boards(board: VirtualBoard) -> None:
    s = serial.Serial(board.port, 115200, timeout=0.1)
    try:
        s.write(b"\r\x03\x03\x02")
        buf = b""
        deadline = time.monotonic() + 60
        while not buf.endswith(b'Type "help()" for more information.\r\n>>> '):
            assert time.monotonic() < deadline, buf
            buf += s.read(4096)
        s.write(b"print('in' 'sync')\r")  # whatever else was on its way arrives first
        while not buf.endswith(b"insync\r\n>>> "):
            assert time.monotonic() < deadline, buf
            buf += s.read(4096)
        s.write(b"import machine; machine.Pin(99)\r")
        want = (
            b"import machine; machine.Pin(99)\r\n"
            b"Traceback (most recent call last):\r\n"
            b'  File "<stdin>", line 1, in <module>\r\n'
            b"ValueError: invalid pin\r\n>>> "
        )
        got = b""
        while len(got) < len(want) and time.monotonic() < deadline + 10:
            got += s.read(len(want) - len(got))
        assert got == want
    finally:
        s.close()
