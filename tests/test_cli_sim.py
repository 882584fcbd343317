"""``ioconnect sim start|list|fault|stop`` with detached boards (real processes, real ptys)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import error_line, run_cli
from ioconnect_host import agent
from ioconnect_host.cli import main
from ioconnect_host.transport import SerialTransport, TransportError
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import StateInUseError


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("IOCONNECT_HOME", str(tmp_path))
    yield tmp_path
    main(["sim", "stop", "cli-dev"])  # never leave a detached board behind


def test_detached_board_lifecycle(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "sim", "start", "--board", "rpi-pico", "--name", "cli-dev", "--detach", "--json"
    )
    assert code == 0
    started = json.loads(out)
    assert started["name"] == "cli-dev" and started["port"].startswith("/dev/pts/")
    assert Path(started["state_dir"]) == home / "sims" / "cli-dev"

    code, out, _ = run_cli(capsys, "sim", "list", "--json")
    [listed] = json.loads(out)
    assert listed["port"] == started["port"] and listed["board"] == "rpi-pico"

    # one board per name: a second start is refused with one line
    code, _, err = run_cli(
        capsys, "sim", "start", "--board", "rpi-pico", "--name", "cli-dev", "--detach"
    )
    assert code == 1
    assert error_line(err) == (
        f"ioconnect: error: a virtual board named 'cli-dev' is already running on {started['port']}"
    )

    with SerialTransport(started["port"]) as t:
        assert agent.info(t)["board"] == "Raspberry Pi Pico with RP2040"  # os.uname().machine
        t.exec("marker = 123")  # lives in RAM: a power cut loses it

    # a power cut from another process: the board boots again with a power-on reset
    code, out, _ = run_cli(
        capsys, "sim", "fault", "cli-dev", "--power-cut", "--sensor", "temperature"
    )
    assert code == 0 and "power cut" in out
    # SIGUSR1 is asynchronous: until the marker is gone we may still see the old VM.
    deadline = time.monotonic() + 60
    cause, kept, err = None, True, b""
    while kept and time.monotonic() < deadline:
        try:
            with SerialTransport(started["port"]) as t:
                kept = t.eval("'marker' in globals()")
                t.exec("import machine")
                cause = t.eval("machine.reset_cause()")
                _, err = t.exec_raw("machine.ADC(4).read_u16()")  # the RP2040 sensor, now failing
        except TransportError:  # rebooting
            time.sleep(0.1)
    assert cause == 1  # PWRON_RESET
    assert kept is False
    assert b"EIO" in err or b"OSError: 5" in err

    code, out, _ = run_cli(capsys, "sim", "stop", "cli-dev")
    assert code == 0 and out.strip() == "stopped cli-dev"
    code, out, _ = run_cli(capsys, "sim", "list")
    assert out.strip() == "no virtual boards running"
    code, _, err = run_cli(capsys, "sim", "stop", "cli-dev")
    assert code == 1 and "no virtual board named 'cli-dev' is running" in err


def test_unknown_board_is_a_usage_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "sim", "start", "--board", "arduino-uno")
    assert code == 2
    assert "invalid choice: 'arduino-uno'" in err


def test_foreground_start_prints_port_and_stops_on_sigint(home: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ioconnect_host.cli", "sim", "start", "--board", "esp32",
         "--name", "cli-fg"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "sim start printed nothing in 30 s"
        line = proc.stdout.readline()
        assert line.startswith("cli-fg (esp32) serial port: /dev/pts/")
        port = line.rsplit(" ", 1)[1].strip()
        with SerialTransport(port) as t:
            assert t.eval("6*7") == 42
        proc.send_signal(2)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_one_board_per_state_folder(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Two VMs writing one flash would lose data: the second start is refused, by name or not.
    state = home / "shared-state"
    code, _, _ = run_cli(
        capsys, "sim", "start", "--board", "esp32", "--name", "cli-dev", "--state", str(state),
        "--detach",
    )  # fmt: skip
    assert code == 0
    with pytest.raises(StateInUseError, match="in use by another virtual board"):
        start_board("esp32", name="other-name", state_dir=state)
    code, _, _ = run_cli(capsys, "sim", "stop", "cli-dev")
    assert code == 0
    vb = start_board("esp32", name="other-name", state_dir=state)  # free again
    vb.stop()


def test_stop_all(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Every board this home runs, however started; nothing left to stop is not an error.
    try:
        for name in ("all-a", "all-b"):
            argv = ["sim", "start", "--board", "esp32", "--name", name, "--detach"]
            code, _, err = run_cli(capsys, *argv)
            assert code == 0, err
        code, out, err = run_cli(capsys, "sim", "stop", "--all")
        assert code == 0, err
        assert sorted(out.splitlines()) == ["stopped all-a", "stopped all-b"]
        assert run_cli(capsys, "sim", "list", "--json")[1] == "[]\n"
        assert run_cli(capsys, "sim", "stop", "--all") == (0, "no virtual boards running\n", "")
        code, _, err = run_cli(capsys, "sim", "stop")
        assert code == 2
        assert error_line(err) == (
            "ioconnect: error: sim stop: give a board's name or --all (see `ioconnect sim list`)"
        )
    finally:
        for name in ("all-a", "all-b"):
            main(["sim", "stop", name])
