"""Host safety: caches built across processes, private files, bounded logs and buffers.

Real processes throughout: builds race in separate Python processes, boards run
the MicroPython VM behind a pty.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ioconnect_host.boards import load_board
from ioconnect_host.cli import main
from ioconnect_host.errors import VMError
from ioconnect_host.paths import firmware_dir
from ioconnect_host.transport import PortError, SerialTransport
from ioconnect_host.vm import run_script
from ioconnect_sim.launch import list_running, start_board, stop_running
from ioconnect_sim.supervisor import SimConfig, VirtualBoard, compile_vm_lib, vm_dir

# A process that builds the firmware cache and reports every file it was given.
_BUILD_AND_LIST = """
import hashlib, json, sys
from ioconnect_host.firmware import host_build
sys.stdin.readline()  # "go"
out = host_build()
files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
digest = hashlib.sha256(b"".join((out / f).read_bytes() for f in files)).hexdigest()
print(json.dumps({"files": files, "digest": digest}))
"""


def _expected_build_files() -> list[str]:
    src = firmware_dir()
    names = ["boot.py", "main.py"]
    names += [f"ioconnect/{p.stem}.mpy" for p in (src / "ioconnect").glob("*.py")]
    names += [f"ioconnect/tables/{p.name}" for p in (src / "ioconnect" / "tables").glob("*.bin")]
    return sorted(names)


def test_two_processes_building_the_firmware_cache_both_see_all_of_it(tmp_path: Path) -> None:
    env = dict(os.environ, IOCONNECT_HOME=str(tmp_path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD_AND_LIST],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    first, second = procs
    assert first.stdin and second.stdin
    first.stdin.write(b"go\n")
    first.stdin.close()
    # Freeze the first while it is writing modules, let the second build meanwhile.
    pattern = str(tmp_path / "cache" / "*" / "ioconnect" / "*.mpy")
    deadline = time.monotonic() + 60
    while not glob.glob(pattern, include_hidden=True):
        assert first.poll() is None and time.monotonic() < deadline
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second.stdin.write(b"go\n")
        second.stdin.close()
        second.wait(timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    results = []
    for proc in procs:
        proc.stdin = None  # closed above: communicate() only reads
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    want = _expected_build_files()
    assert len(want) > 15
    assert results[0]["files"] == want
    assert results[1]["files"] == want
    assert results[0]["digest"] == results[1]["digest"]
    # No temporary build is left behind.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")) == []


def test_vm_lib_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    dest = tmp_path / "vmlib"
    code = "import sys, pathlib\nfrom ioconnect_sim.supervisor import compile_vm_lib\n"
    code += "compile_vm_lib(pathlib.Path(sys.argv[1]))\n"
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], stderr=subprocess.PIPE)
    want = sorted(p.stem + ".mpy" for p in vm_dir().glob("*.py"))
    seen: list[str] = []
    while proc.poll() is None and not seen:
        # What a VM starting now would find on its import path.
        with contextlib.suppress(OSError):
            seen = sorted(p.name for p in dest.iterdir() if p.suffix == ".mpy")
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert seen in ([], want)  # [] only if the build finished between two looks
    assert sorted(p.name for p in dest.iterdir()) == want
    # A second call (another board of the fleet) reuses it without rebuilding.
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    assert compile_vm_lib(dest) == dest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_a_build_missing_a_module_is_an_error_not_a_compile_from_source(tmp_path: Path) -> None:
    # A build folder that lacks the package (half-written, or an old layout): the VM
    # must not quietly find the firmware's .py source instead.
    build = tmp_path / "build"
    build.mkdir()
    (build / "boot.py").write_bytes((firmware_dir() / "boot.py").read_bytes())
    with pytest.raises(VMError) as err:
        run_script("import ioconnect.did", fs_dir=tmp_path / "fs", extra_path=[build])
    assert "ImportError: no module named 'ioconnect" in str(err.value)
    # Without a build the shipped source is the path (device-code tools rely on it).
    src = run_script("import ioconnect.did\nprint('ok')", fs_dir=tmp_path / "fs")
    assert src.strip() == "ok"


# -- private material on the host ----------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, so a file's mode shows what the code asked for."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_identity_key_is_0600_in_a_0700_folder(
    tmp_path: Path, umask_022: None, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "made" / "identity"
    assert main(["identity", "new", "--dir", str(folder)]) == 0
    assert (mode(folder), mode(folder / "identity.key")) == (0o700, 0o600)
    # A key kept by an older version, world-readable: reading it tightens it.
    folder.chmod(0o755)
    (folder / "identity.key").chmod(0o644)
    assert main(["identity", "show", "--dir", str(folder), "--json"]) == 0
    assert (mode(folder), mode(folder / "identity.key")) == (0o700, 0o600)
    capsys.readouterr()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IOCONNECT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def small_log_board(state: Path, log_limit: int) -> VirtualBoard:
    spec = load_board("esp32")
    cfg = SimConfig(
        "log-dev",
        board=spec.vm_config(),
        state_dir=state,
        heap=spec.heap,
        preload=spec.sim_preload(),
        log_limit=log_limit,
    )
    return VirtualBoard(cfg)


def test_board_state_is_private_and_console_log_bounded(tmp_path: Path, umask_022: None) -> None:
    state = tmp_path / "state"
    limit = 16 * 1024
    vb = small_log_board(state, limit)
    vb.start()
    try:
        with SerialTransport(vb.port) as t:
            # What the board writes to its flash (a key) is private on the host too.
            t.exec("f = open('secret.key', 'wb'); f.write(b'k' * 32); f.close()")
            # Print 2.5 times the bound: 640 lines of 64 bytes.
            out = t.exec("for i in range(640):\n    print('%05d' % i + 'x' * 57)")
    finally:
        vb.stop()
    line = b"x" * 57 + b"\r\n"
    assert out == b"".join(b"%05d" % i + line for i in range(640))
    assert mode(state) == 0o700
    assert mode(state / "flash" / "secret.key") == 0o600
    log, rotated = state / "console.log", state / "console.log.1"
    assert (mode(log), mode(rotated)) == (0o600, 0o600)
    assert sorted(p.name for p in state.glob("console.log*")) == ["console.log", "console.log.1"]
    assert log.stat().st_size <= limit and rotated.stat().st_size <= limit
    # The newest output is kept, in order, across the rotation.
    kept = rotated.read_bytes() + log.read_bytes()
    tail = b"".join(b"%05d" % i + line for i in range(500, 640))
    assert tail in kept
    assert b"00100" + line not in kept  # the oldest went with the file rotated away


# -- sim list / sim stop ----------------------------------------------------------


def cli(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The ioconnect CLI in another process (as a user's shell runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "ioconnect_host.cli", *argv],
        env=dict(os.environ, IOCONNECT_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stale_record_never_kills_an_unrelated_process(home: Path, tmp_path: Path) -> None:
    # A process whose command line says "ioconnect", and a record naming it: the
    # record is from a board that stopped long ago, the pid now someone else's.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ioconnect"])
    try:
        state = tmp_path / "old-state"
        state.mkdir()
        (state / ".lock").write_text(json.dumps({"pid": bystander.pid, "name": "ghost"}))
        (home / "run").mkdir(parents=True)
        record = {"name": "ghost", "board": "esp32", "port": "/dev/pts/99",
                  "pid": bystander.pid, "state_dir": str(state)}  # fmt: skip
        (home / "run" / "ghost.json").write_text(json.dumps(record))

        listed = cli(home, "sim", "list", "--json")
        assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
        (home / "run" / "ghost.json").write_text(json.dumps(record))
        stopped = cli(home, "sim", "stop", "ghost")
        assert stopped.returncode == 1
        assert (
            stopped.stderr == "ioconnect: error: no virtual board named 'ghost' is running "
            "(see `ioconnect sim list`)\n"
        )
        time.sleep(0.2)  # a signal, had one been sent, has landed
        assert bystander.poll() is None
        assert not (home / "run" / "ghost.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_board_started_from_python_is_listed_and_stopped_by_the_cli(
    home: Path, tmp_path: Path
) -> None:
    vb = start_board("rpi-pico", name="py-dev", state_dir=tmp_path / "py-dev")
    try:
        [rec] = list_running()
        assert (rec.name, rec.board, rec.port, rec.pid) == (
            "py-dev",
            "rpi-pico",
            vb.port,
            os.getpid(),
        )
        assert rec.own_process is False
        listed = cli(home, "sim", "list", "--json")
        assert [b["name"] for b in json.loads(listed.stdout)] == ["py-dev"]

        # A power cut from another process reboots the board, not this process.
        boots = vb.boots
        assert cli(home, "sim", "fault", "py-dev", "--power-cut").returncode == 0
        deadline = time.monotonic() + 10
        while vb.boots == boots and time.monotonic() < deadline:
            time.sleep(0.02)
        assert vb.boots == boots + 1

        stopped = cli(home, "sim", "stop", "py-dev")
        assert (stopped.returncode, stopped.stdout) == (0, "stopped py-dev\n")
        assert list_running() == []
        assert vb.vm_pid is None
        with pytest.raises(PortError):
            SerialTransport(vb.port).close()
    finally:
        vb.stop()


def test_stop_running_stops_a_board_of_this_process(home: Path, tmp_path: Path) -> None:
    vb = start_board("esp32", name="py-dev2", state_dir=tmp_path / "py-dev2")
    try:
        rec = stop_running("py-dev2")
        assert (rec.name, rec.pid) == ("py-dev2", os.getpid())
        assert list_running() == []
        # Stopped means the state folder is free: a new board may use it.
        again = start_board("esp32", name="py-dev2", state_dir=tmp_path / "py-dev2")
        again.stop()
    finally:
        vb.stop()
