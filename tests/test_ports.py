"""Board selection (``--port``): sim:NAME, paths, socket:// through a real TCP bridge,
auto with zero, one and several boards, $IOCONNECT_PORT, DIDs, finding a board again,
and a port where nothing answers. Real virtual boards over their ptys, real sockets.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import error_message, run_cli
from ioconnect_host.ports import BoardRef, PortSelectionError, find_again, list_ports, select_port
from ioconnect_host.session import open_session
from ioconnect_host.transport import TransportError
from ioconnect_sim.launch import start_board, start_detached, stop_running

NO_USB_BOARDS = not any(p.likely for p in list_ports(include_virtual=False))
needs_no_usb = pytest.mark.skipif(not NO_USB_BOARDS, reason="a real USB board is plugged in")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private registry of virtual boards; detached ones are stopped afterwards."""
    monkeypatch.setenv("IOCONNECT_HOME", str(tmp_path))
    monkeypatch.delenv("IOCONNECT_PORT", raising=False)
    yield tmp_path
    from ioconnect_sim.launch import list_running

    for rec in list_running():
        stop_running(rec.name)


class PtyBridge:
    """socket:// to a board: a TCP server that copies bytes to and from its pty."""

    def __init__(self, pty_path: str) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.pty_path = pty_path
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            fd = os.open(self.pty_path, os.O_RDWR | os.O_NOCTTY)
            tty.setraw(fd)
            try:
                self._pump(conn, fd)
            finally:
                os.close(fd)
                conn.close()

    def _pump(self, conn: socket.socket, fd: int) -> None:
        while not self.stopped.is_set():
            ready, _, _ = select.select([conn, fd], [], [], 0.2)
            if conn in ready:
                data = conn.recv(4096)
                if not data:
                    return
                os.write(fd, data)
            if fd in ready:
                conn.sendall(os.read(fd, 4096))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.server.close()


@pytest.fixture(scope="module")
def pico(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    vb = start_board("rpi-pico", name="ports-pico", state_dir=tmp_path_factory.mktemp("pico"))
    try:
        yield vb.port
    finally:
        vb.stop()


def test_port_by_path_and_through_socket_bridge(
    pico: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "info", "--port", pico, "--json")
    assert code == 0
    info = json.loads(out)
    pico_machine = "Raspberry Pi Pico with RP2040"  # os.uname().machine, as on a board
    assert info["board"] == pico_machine and info["port"] == pico and info["api"] == 1

    bridge = PtyBridge(pico)
    try:
        code, out, err = run_cli(capsys, "info", "--port", bridge.url, "--json")
        assert code == 0, err
        assert json.loads(out)["board"] == pico_machine
        code, out, err = run_cli(capsys, "config", "get", "--port", bridge.url, "--json")
        assert code == 0, err
        assert isinstance(json.loads(out), dict)
    finally:
        bridge.close()


def test_ioconnect_port_variable_is_the_default(
    pico: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOCONNECT_PORT", pico)
    code, out, _ = run_cli(capsys, "info", "--json")
    assert code == 0 and json.loads(out)["port"] == pico
    # --port wins over the variable
    monkeypatch.setenv("IOCONNECT_PORT", "/dev/no-such-board")
    code, out, _ = run_cli(capsys, "info", "--port", pico, "--json")
    assert code == 0 and json.loads(out)["port"] == pico
    code, _, err = run_cli(capsys, "info")
    assert code == 1
    assert error_message(err).startswith("no such serial port: /dev/no-such-board")


def test_a_port_where_nothing_answers_fails_in_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A pty nobody serves: it opens, takes what is written, and never answers.
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        start = time.monotonic()
        code, _, err = run_cli(capsys, "info", "--port", path)
        elapsed = time.monotonic() - start
    finally:
        os.close(master)
        os.close(slave)
    assert code == 1
    line = error_message(err)
    assert line.startswith(f"{path}: no MicroPython raw REPL after 3 tries (5 s): ")
    assert elapsed < 30  # a guard against a hang, not a speed test (limits: 5 s + pauses)


def test_bad_port_values_are_one_line(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "info", "--port", "sim:nobody")
    assert code == 1
    assert error_message(err).startswith("no virtual board named 'nobody' is running")
    code, _, err = run_cli(capsys, "info", "--port", "id:NO-SUCH-SERIAL")
    assert code == 1
    assert error_message(err).startswith("no USB serial port with serial number 'NO-SUCH-SERIAL'")
    code, _, err = run_cli(capsys, "info", "--port", "socket://127.0.0.1:1")
    assert code == 1
    assert error_message(err).startswith("cannot open socket://127.0.0.1:1: ")


@needs_no_usb
def test_auto_with_no_board(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "info")
    assert code == 1
    assert error_message(err).startswith("no board found (no known USB ids; no other port")


@needs_no_usb
def test_sim_name_auto_one_and_several_and_find_again(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = start_detached("esp32", name="auto-a")
    ref = select_port("sim:auto-a")
    assert ref == BoardRef(port=one.port, board="esp32", sim_name="auto-a", how="sim:auto-a")
    # one virtual board and no USB board: auto takes it
    code, out, err = run_cli(capsys, "info", "--json")
    assert code == 0, err
    assert json.loads(out)["port"] == one.port
    code, out, _ = run_cli(capsys, "identity", "create", "--port", "sim:auto-a", "--json")
    did = json.loads(out)["did"]
    code, out, _ = run_cli(capsys, "ports", "--json")
    [listed] = json.loads(out)
    assert listed["port"] == one.port and listed["virtual_name"] == "auto-a"
    esp32_machine = "Generic ESP32 module with ESP32"  # os.uname().machine, as on a board
    assert listed["answer"]["did"] == did and listed["answer"]["board"] == esp32_machine
    code, out, _ = run_cli(capsys, "ports", "--no-probe")
    assert out.split() == [
        one.port,
        "virtual",
        "sim:auto-a",
        "esp32",
        "(not",
        "asked:",
        "--no-probe)",
    ]

    two = start_detached("rpi-pico", name="auto-b")
    code, _, err = run_cli(capsys, "info")
    assert code == 1
    assert error_message(err) == (
        f"2 boards found (USB ids from boards/ and virtual boards): "
        f"{one.port} (virtual board auto-a, esp32); {two.port} (virtual board auto-b, rpi-pico) "
        "(choose one with --port)"
    )
    # selected by its identity instead
    assert select_port(did).port == one.port
    mixed_case = "did:io:0x" + did[len("did:io:0x") :].upper()  # upstream writes any case
    code, out, _ = run_cli(capsys, "info", "--port", mixed_case, "--json")
    assert code == 0 and json.loads(out)["port"] == one.port

    # the board comes back under another pty: found again by name and by DID
    stop_running("auto-a")
    with pytest.raises(PortSelectionError, match=r"did not come back within 0\.5 s"):
        find_again(ref, timeout_s=0.5)
    again = start_detached("esp32", name="auto-a", state_dir=Path(one.state_dir))
    assert find_again(ref).port == again.port
    by_did = BoardRef(port=one.port, did=did)
    assert find_again(by_did).port == again.port


def test_session_enters_raw_repl_once_per_command(pico: str) -> None:
    with open_session(select_port(pico)) as board:
        assert board.transport.in_raw_repl
        first = board.call("info")["uptime_ms"]
        board.exec("marker = 7")  # the same REPL session keeps its globals
        assert board.transport.eval("marker") == 7
        assert board.call("info")["uptime_ms"] >= first


def test_probe_of_a_dead_port_raises(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        with (
            pytest.raises(TransportError, match="no MicroPython raw REPL after 1 tries"),
            open_session(BoardRef(port=os.ttyname(slave)), attempts=(0.3,)),
        ):
            pass
    finally:
        os.close(master)
        os.close(slave)


BUSY_MAIN = """\
import time
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 2000:
    try:
        time.sleep_ms(10)
    except KeyboardInterrupt:
        pass  # a program that swallows Ctrl-C for two seconds
"""


def test_a_board_slow_to_take_ctrl_c_is_retried(tmp_path: Path) -> None:
    with start_board("rpi-pico", name="ports-busy", state_dir=tmp_path) as vb:
        (vb.config.flash_dir / "main.py").write_text(BUSY_MAIN)
        vb.power_cut()  # boots again and runs the busy main.py
        with (
            pytest.raises(TransportError, match="no MicroPython raw REPL after 1 tries"),
            open_session(BoardRef(port=vb.port), attempts=(1.0,)),
        ):
            pass
        vb.power_cut()
        with open_session(BoardRef(port=vb.port)) as board:  # tries again, with pauses
            assert board.call("info")["board"] == "Raspberry Pi Pico with RP2040"


def test_timeouts_scale_for_slow_boards(monkeypatch: pytest.MonkeyPatch) -> None:
    from ioconnect_host.session import timeout_scale

    monkeypatch.delenv("IOCONNECT_TIMEOUT_SCALE", raising=False)
    assert timeout_scale("esp32") == 1.0  # 160 MHz: the reference
    assert timeout_scale("rpi-pico") == 160 / 125  # 125 MHz
    assert timeout_scale("not-a-board") == 1.0
    monkeypatch.setenv("IOCONNECT_TIMEOUT_SCALE", "3")
    assert timeout_scale("rpi-pico") == 3 * 160 / 125


def test_bad_timeout_scale_is_one_line(
    pico: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("0.5", "fast", "nan"):
        monkeypatch.setenv("IOCONNECT_TIMEOUT_SCALE", bad)
        code, _, err = run_cli(capsys, "info", "--port", pico)
        assert code == 1
        assert error_message(err) == f"IOCONNECT_TIMEOUT_SCALE={bad!r} must be a number >= 1"


def test_the_core_does_not_import_the_simulator() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ioconnect_host.cli, ioconnect_host.ports, ioconnect_host.provision;"
        "print('ioconnect_sim' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"
