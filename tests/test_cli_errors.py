"""Bad input to every ``ioconnect`` command: one stderr line naming the fix, a non-zero
exit, nothing printed on stdout (``--json`` users parse it), nothing created or lost.

The commands run in-process through ``main()``; the board-dependent cases use one
detached virtual ESP32 started at the heap floor, which also proves the floor is
enough for the firmware to boot, make an identity and sign.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import run_cli
from ioconnect_host import agent
from ioconnect_host.cli import build_parser, main
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import MIN_HEAP_KIB, HeapError, parse_heap

SIM_START = "see `ioconnect sim start --help`"
SEED_RULE = "give a whole number from 0 to 4294967295"
NAME_RULE = "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
HEAP_FLOOR = f"give at least {MIN_HEAP_KIB}K, or leave --heap out for the board's budget"
NOT_A_SIZE = "give bytes, or KiB/MiB as in 96K or 2M"
DIR_FIX = "give --dir a folder you can write: the device filesystem"
STATE_FIX = "give --state a folder you can write, or leave it out"


def _commands() -> list[str]:
    # The top-level commands as registered (other modules add theirs).
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


COMMANDS = _commands()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IOCONNECT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# argv (with {tmp} for a fresh folder holding a regular file "file"), exit, stderr line.
NO_BOARD_NEEDED = [
    ([], 2, f"give a command: {', '.join(COMMANDS)} (see `ioconnect --help`)"),
    (
        ["sim"],
        2,
        "sim: give a command: start, list, stop, reset, fault (see `ioconnect sim --help`)",
    ),
    (
        ["identity"],
        2,
        "identity: give a command: new, show, create, rotate, diddoc "
        "(see `ioconnect identity --help`)",
    ),
    (
        ["sim", "strat"],
        2,
        "sim: argument COMMAND: invalid choice: 'strat' (choose from 'start', 'list', 'stop', "
        "'reset', 'fault', 'pin') (did you mean 'start'?)",
    ),
    (
        ["sim", "start"],
        2,
        f"sim start: the following arguments are required: --board ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp-32"],
        2,
        "sim start: argument --board: invalid choice: 'esp-32' (choose from 'esp32', "
        "'esp32-c3', 'esp32-s3', 'rpi-pico', 'rpi-pico-w') (did you mean 'esp32'?)",
    ),
    (
        ["sim", "start", "--board", "esp32", "--heap", "abc"],
        2,
        f"sim start: argument --heap: heap 'abc' is not a size ({NOT_A_SIZE}) ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--heap", "1.5M"],
        2,
        f"sim start: argument --heap: heap '1.5M' is not a size ({NOT_A_SIZE}) ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--heap", "96KB"],
        2,
        f"sim start: argument --heap: heap '96KB' is not a size ({NOT_A_SIZE}) ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--heap=-5K"],
        2,
        f"sim start: argument --heap: heap '-5K' is not a size ({NOT_A_SIZE}) ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--heap", "-5K"],
        2,
        "sim start: argument --heap: expected one argument (a value starting with '-' is "
        f"written --option=VALUE; {SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--heap", "1K"],
        2,
        f"sim start: argument --heap: heap 1K is below the {MIN_HEAP_KIB}K the firmware needs "
        f"({HEAP_FLOOR}) ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--heap", "0"],
        2,
        f"sim start: argument --heap: heap 0 is below the {MIN_HEAP_KIB}K the firmware needs "
        f"({HEAP_FLOOR}) ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--heap", "9M"],
        2,
        "sim start: argument --heap: heap 9M is above the largest board heap (give at most 8M) "
        f"({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--seed", "abc"],
        2,
        f"sim start: argument --seed: 'abc' is not a seed: {SEED_RULE} ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--seed", "-1"],
        2,
        f"sim start: argument --seed: '-1' is not a seed: {SEED_RULE} ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--seed", str(2**32)],
        2,
        f"sim start: argument --seed: '4294967296' is not a seed: {SEED_RULE} ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--name", "a/b"],
        2,
        f"sim start: argument --name: 'a/b' is not a device name: {NAME_RULE} ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--name", "../x"],
        2,
        f"sim start: argument --name: '../x' is not a device name: {NAME_RULE} ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--name", "\U0001f600"],
        2,
        f"sim start: argument --name: '\U0001f600' is not a device name: {NAME_RULE} ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--name", "x" * 64],
        2,
        f"sim start: argument --name: '{'x' * 64}' is not a device name: {NAME_RULE} ({SIM_START})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--state", "{tmp}/file", "--detach"],
        2,
        f"--state {{tmp}}/file is not a directory ({STATE_FIX})",
    ),
    (
        ["sim", "start", "--board", "esp32", "--state", "{tmp}/file/sub", "--detach"],
        2,
        f"cannot create --state {{tmp}}/file/sub: Not a directory ({STATE_FIX})",
    ),
    (
        ["sim", "stop", "nope"],
        1,
        "no virtual board named 'nope' is running (see `ioconnect sim list`)",
    ),
    (
        ["sim", "stop", "nope", "--json"],
        1,
        "no virtual board named 'nope' is running (see `ioconnect sim list`)",
    ),
    (
        ["sim", "fault", "nope"],
        2,
        "sim fault: give a fault: --power-cut, --wifi, --sensor or --flash "
        "(see `ioconnect sim fault --help`)",
    ),
    (
        ["sim", "fault", "nope", "--wifi", "down", "--json"],
        1,
        "no virtual board named 'nope' is running (see `ioconnect sim list`)",
    ),
    (
        ["sim", "fault", "nope", "--wifi", "sideways"],
        2,
        "sim fault: argument --wifi: invalid choice: 'sideways' (choose from 'up', 'down') "
        "(see `ioconnect sim fault --help`)",
    ),
    (
        ["identity", "new", "--curve", "ed448", "--dir", "{tmp}/dev"],
        2,
        "identity new: argument --curve: invalid choice: 'ed448' (choose from 'secp256k1', "
        "'p256', 'ed25519') (see `ioconnect identity new --help`)",
    ),
    (
        ["identity", "new", "--dir", "{tmp}/file", "--json"],
        1,
        "{tmp}/file is not a directory (--dir names the folder that holds identity.key, "
        "not a file)",
    ),
    (
        ["identity", "show", "--dir", "{tmp}/file", "--json"],
        1,
        "{tmp}/file is not a directory (--dir names the folder that holds identity.key, "
        "not a file)",
    ),
    (
        ["identity", "new", "--dir", "{tmp}/file/sub", "--json"],
        1,
        f"cannot create {{tmp}}/file/sub: Not a directory ({DIR_FIX})",
    ),
    (
        ["identity", "show", "--dir", "{tmp}/none", "--json"],
        1,
        "no identity in {tmp}/none (create one with `ioconnect identity new`)",
    ),
    # flash: the command line is checked before any port is looked for
    (
        ["flash", "--board", "nosuch", "--firmware", "{tmp}/file"],
        1,
        "unknown board 'nosuch' (known boards: esp32, esp32-c3, esp32-s3, rpi-pico, rpi-pico-w)",
    ),
    (
        ["flash", "--board", "esp32", "--firmware", "{tmp}/none.bin"],
        2,
        "--firmware {tmp}/none.bin: no such file",
    ),
]


@pytest.mark.parametrize(
    ("argv", "code", "line"), NO_BOARD_NEEDED, ids=[" ".join(c[0]) or "-" for c in NO_BOARD_NEEDED]
)
def test_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path,
    argv: list[str], code: int, line: str,
) -> None:  # fmt: skip
    (tmp_path / "file").write_text("kept")
    before = sorted(tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run_cli(capsys, *argv) == (
        code,
        "",
        f"ioconnect: error: {line.replace('{tmp}', str(tmp_path))}\n",
    )
    assert sorted(tmp_path.rglob("*")) == before  # nothing made, nothing lost
    assert (tmp_path / "file").read_text() == "kept"


def _mkdir_error(path: Path) -> str:
    """What the OS says to making ``path`` (to expect it verbatim, whoever runs the test)."""
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        return exc.strerror or ""
    path.rmdir()
    pytest.fail(f"{path} could be created; pick a path this machine refuses")


def test_a_folder_the_os_refuses(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    # /sys refuses new folders even to root (EPERM, or EROFS in containers).
    refused = Path("/sys/ioconnect-test")
    why = _mkdir_error(refused)
    code, out, err = run_cli(capsys, "identity", "new", "--dir", str(refused), "--json")
    assert (code, out, err) == (
        1,
        "",
        f"ioconnect: error: cannot create {refused}: {why} ({DIR_FIX})\n",
    )
    code, out, err = run_cli(capsys, "sim", "start", "--board", "esp32", "--state", str(refused))
    assert (code, out) == (2, "")
    assert err == f"ioconnect: error: cannot create --state {refused}: {why} ({STATE_FIX})\n"


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run as an ordinary user for a moment: root may write into read-only folders.

    Only the effective ids change (seteuid), so root gets them back; nothing
    started inside may exec a program (the interpreter may live under /root).
    """
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


NOBODY = 65534


def test_read_only_and_unreadable_folders(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest's tmp_path is private to root: make one every user may enter.
    top = Path(tempfile.mkdtemp(prefix="ioconnect-perm-"))
    top.chmod(0o755)
    ro, closed = top / "ro", top / "closed"
    ro.mkdir(mode=0o555)
    closed.mkdir(mode=0o000)
    monkeypatch.setenv("IOCONNECT_HOME", str(top / "home"))  # none yet: no board runs
    try:
        with unprivileged():
            new_ro = run_cli(capsys, "identity", "new", "--dir", str(ro), "--json")
            new_sub = run_cli(capsys, "identity", "new", "--dir", str(ro / "sub"))
            show_closed = run_cli(capsys, "identity", "show", "--dir", str(closed), "--json")
            start_ro = run_cli(capsys, "sim", "start", "--board", "esp32", "--state", str(ro))
            monkeypatch.setenv("IOCONNECT_HOME", str(closed))  # the registry of boards
            list_closed = run_cli(capsys, "sim", "list", "--json")
        assert new_ro == (
            1, "", f"ioconnect: error: cannot write a key in {ro}: permission denied ({DIR_FIX})\n"
        )  # fmt: skip
        assert new_sub == (
            1, "", f"ioconnect: error: cannot create {ro / 'sub'}: Permission denied ({DIR_FIX})\n"
        )  # fmt: skip
        assert show_closed == (
            1, "", f"ioconnect: error: cannot read {closed}: permission denied ({DIR_FIX})\n"
        )  # fmt: skip
        assert start_ro[:2] == (2, "")
        assert start_ro[2] == (
            f"ioconnect: error: cannot write in --state {ro}: permission denied ({STATE_FIX})\n"
        )
        assert list_closed == (
            1, "", f"ioconnect: error: {closed / 'run'}: Permission denied\n"
        )  # fmt: skip
        assert sorted(top.rglob("*")) == [closed, ro]  # nothing made
    finally:
        closed.chmod(0o755)
        shutil.rmtree(top)


def test_parse_heap_bounds() -> None:
    assert parse_heap(f"{MIN_HEAP_KIB}K") == MIN_HEAP_KIB * 1024
    assert parse_heap(" 96k ") == 96 * 1024
    assert parse_heap("2M") == 2 * 1024 * 1024
    assert parse_heap("8M") == 8 * 1024 * 1024
    assert parse_heap(str(MIN_HEAP_KIB * 1024)) == MIN_HEAP_KIB * 1024
    for bad in (f"{MIN_HEAP_KIB - 1}K", str(MIN_HEAP_KIB * 1024 - 1), "8193K", "", "K", "1e5"):
        with pytest.raises(HeapError):
            parse_heap(bad)


def test_library_refuses_a_small_heap_before_starting(home: Path, tmp_path: Path) -> None:
    # Below the floor the VM rebooted in a loop and mpremote waited forever.
    with pytest.raises(HeapError, match=f"heap 1K is below the {MIN_HEAP_KIB}K"):
        start_board("esp32", name="tiny", state_dir=tmp_path / "tiny", heap="1K")
    assert not (tmp_path / "tiny" / ".lock").exists()  # no lock, no port, no VM taken
    assert not (home / "run").exists()


@pytest.fixture(scope="module")
def floor_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A detached ESP32 named 'floor' on the smallest heap `sim start` accepts."""
    home = tmp_path_factory.mktemp("errors-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IOCONNECT_HOME", str(home))
        argv = ["sim", "start", "--board", "esp32", "--name", "floor", "--detach", "--json"]
        assert main([*argv, "--heap", f"{MIN_HEAP_KIB}K"]) == 0
        try:
            yield {"home": str(home)}
        finally:
            main(["sim", "stop", "floor"])


@pytest.fixture
def floor(floor_board: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IOCONNECT_HOME", floor_board["home"])
    return Path(floor_board["home"])


def test_the_heap_floor_is_enough_for_the_firmware(
    capsys: pytest.CaptureFixture[str], floor: Path
) -> None:
    _, out, _ = run_cli(capsys, "sim", "list", "--json")
    [rec] = json.loads(out)
    with SerialTransport(rec["port"], byte_timeout_s=5.0) as t:
        assert agent.info(t)["api"] == agent.API_VERSION
        ident = agent.identity_show(t) if agent.info(t)["identity"]["state"] != "none" else (
            agent.identity_create(t, "secp256k1")
        )  # fmt: skip
        assert agent.sign(t, "eip191", payload="floor")["signature"]
        assert ident["curve"] == "secp256k1"


def test_fault_refusals_name_the_fix(capsys: pytest.CaptureFixture[str], floor: Path) -> None:
    sensors = "(its sensors: temperature, climate)"
    states = "(give temperature=fail or temperature=ok)"
    board = "floor (esp32) has no sensor"
    cases = [
        (["--sensor", "temperature=bogus"],
         f"--sensor temperature=bogus: 'bogus' is not a sensor state {states}"),
        (["--sensor", "temperature="], f"--sensor temperature=: '' is not a sensor state {states}"),
        (["--sensor", "humidity"], f"--sensor humidity: {board} 'humidity' {sensors}"),
        (["--sensor", "Temperature=fail"],
         f"--sensor Temperature=fail: {board} 'Temperature' {sensors}"),
    ]  # fmt: skip
    faults = floor / "sims" / "floor" / "faults.json"
    before = faults.read_bytes() if faults.exists() else None
    for extra, line in cases:
        for json_flag in ([], ["--json"]):
            assert run_cli(capsys, "sim", "fault", "floor", *extra, *json_flag) == (
                2, "", f"ioconnect: error: {line}\n"
            )  # fmt: skip
    assert (faults.read_bytes() if faults.exists() else None) == before  # nothing half-applied


def test_sensor_faults_add_up_and_print_json(
    capsys: pytest.CaptureFixture[str], floor: Path
) -> None:
    # A second --sensor used to replace the first one's fault.
    code, out, err = run_cli(capsys, "sim", "fault", "floor", "--sensor", "temperature", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["faults"]["sensors"]["temperature"] == "fail"
    code, out, err = run_cli(capsys, "sim", "fault", "floor", "--sensor", "climate=fail", "--json")
    assert (code, err) == (0, "")
    got = json.loads(out)
    assert got["name"] == "floor" and got["power_cut"] is False
    assert got["faults"]["sensors"] == {"temperature": "fail", "climate": "fail"}
    code, out, err = run_cli(capsys, "sim", "fault", "floor", "--sensor", "temperature=ok",
                         "--sensor", "climate=ok")  # fmt: skip
    assert (code, err) == (0, "")
    assert out == "floor: sensors={'temperature': 'ok', 'climate': 'ok'}\n"
    state = json.loads((floor / "sims" / "floor" / "faults.json").read_bytes())
    assert state["sensors"] == {"temperature": "ok", "climate": "ok"}


def test_state_folder_and_name_in_use(capsys: pytest.CaptureFixture[str], floor: Path) -> None:
    state = floor / "sims" / "floor"
    code, out, err = run_cli(capsys, "sim", "start", "--board", "esp32", "--name", "other",
                         "--state", str(state), "--detach")  # fmt: skip
    assert (code, out) == (2, "")
    assert err == (
        f"ioconnect: error: --state {state} is in use by virtual board 'floor' "
        "(stop it first (`ioconnect sim stop floor`) or use another folder)\n"
    )
    code, out, err = run_cli(capsys, "sim", "list", "--json")
    [rec] = json.loads(out)
    for detach in ([], ["--detach"]):
        assert run_cli(capsys, "sim", "start", "--board", "esp32", "--name", "floor", *detach) == (
            1, "", f"ioconnect: error: a virtual board named 'floor' is already running on "
            f"{rec['port']}\n"
        )  # fmt: skip
    assert not (floor / "sims" / "other").exists()


def test_wifi_fault_on_a_board_without_wifi(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    assert main(["sim", "start", "--board", "rpi-pico", "--name", "nowifi", "--detach"]) == 0
    try:
        capsys.readouterr()
        for json_flag in ([], ["--json"]):
            assert run_cli(capsys, "sim", "fault", "nowifi", "--wifi", "down", *json_flag) == (
                2, "", "ioconnect: error: --wifi: nowifi (rpi-pico) has no Wi-Fi\n"
            )  # fmt: skip
        code, out, err = run_cli(capsys, "sim", "stop", "nowifi", "--json")
        assert (code, err) == (0, "")
        stopped = json.loads(out)["stopped"]
        assert stopped["name"] == "nowifi" and stopped["board"] == "rpi-pico"
        # stopping twice, and faulting a stopped board, are refused the same way
        for argv in (
            ["stop", "nowifi"],
            ["stop", "nowifi", "--json"],
            ["fault", "nowifi", "--power-cut"],
        ):
            assert run_cli(capsys, "sim", *argv) == (
                1, "", "ioconnect: error: no virtual board named 'nowifi' is running "
                "(see `ioconnect sim list`)\n"
            )  # fmt: skip
    finally:
        main(["sim", "stop", "nowifi"])


def test_errno_names_are_the_os_words() -> None:
    # The expected lines above spell ENOTDIR as the OS does.
    assert os.strerror(errno.ENOTDIR) == "Not a directory"


def test_ctrl_c_is_one_line_and_exit_130() -> None:
    # A board that never answers (a TCP port that accepts and stays silent): `info`
    # waits for its raw REPL until Ctrl-C (SIGINT, as a terminal sends it).
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ioconnect_host.launcher",
                "info",
                "-p",
                f"socket://127.0.0.1:{port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            server.settimeout(60)
            conn, _ = server.accept()
            with conn:
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert (proc.returncode, out, err) == (130, "", "ioconnect: info interrupted\n")
