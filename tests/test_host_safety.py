"""Host safety: caches built across processes, private files, bounded logs and buffers.

Real processes throughout: builds race in separate Python processes, boards run
the MicroPython VM behind a pty.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from ioconnect_host.boards import load_board
from ioconnect_host.cli import main
from ioconnect_host.errors import VMError
from ioconnect_host.paths import firmware_dir
from ioconnect_host.transport import PortError, SerialTransport, TransportError
from ioconnect_host.vm import run_script
from ioconnect_sim.launch import list_running, start_board, start_detached, stop_running
from ioconnect_sim.statelock import lock_holder
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
        port_mode = mode(Path(vb.port))  # only this user reads or writes the serial port
        with SerialTransport(vb.port) as t:
            # What the board writes to its flash (a key) is private on the host too.
            t.exec("f = open('secret.key', 'wb'); f.write(b'k' * 32); f.close()")
            # Print 2.5 times the bound: 640 lines of 64 bytes.
            out = t.exec("for i in range(640):\n    print('%05d' % i + 'x' * 57)")
    finally:
        vb.stop()
    line = b"x" * 57 + b"\r\n"
    assert out == b"".join(b"%05d" % i + line for i in range(640))
    assert (mode(state), port_mode) == (0o700, 0o600)
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
        deadline = time.monotonic() + 60
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


# -- bounded buffers ----------------------------------------------------------------


@pytest.fixture
def quiet_board(tmp_path: Path) -> Iterator[VirtualBoard]:
    vb = small_log_board(tmp_path / "state", 1 << 20)
    vb.start()
    yield vb
    vb.stop()


def test_read_until_gives_up_after_its_byte_cap(quiet_board: VirtualBoard) -> None:
    with SerialTransport(quiet_board.port, max_reply_bytes=3000) as t:
        with pytest.raises(TransportError) as err:
            # More than any one read can bring, so the marker cannot come with it.
            t.exec("for i in range(200):\n    print('z' * 1000)")
        m = re.fullmatch(
            r"\S+: (\d+) bytes arrived without b'\\x04' while running code "
            r"\(more than the 3000 allowed\) \(is the board printing without end\?\)",
            str(err.value),
        )
        assert m, str(err.value)
        assert 3000 < int(m.group(1)) < 200 * 1002
        # The next call starts over with the board (Ctrl-C, raw REPL) and works; the
        # output already on its way (up to the supervisor's 64 KiB) is skipped then.
        t.max_reply_bytes = 1 << 20
        assert t.eval("6 * 7") == 42


def test_host_input_waits_while_the_vm_does_not_read(quiet_board: VirtualBoard) -> None:
    port = serial.Serial(quiet_board.port, timeout=0.1)
    try:
        # The console stops reading its input while the VM sleeps; the line says when
        # it is about to (its echo does not hold "sl-eep").
        port.write(b"import time; print('sl' + '-eep'); time.sleep(20)\r")
        seen, deadline = b"", time.monotonic() + 30
        while b"sl-eep\r\n" not in seen and time.monotonic() < deadline:
            seen += port.read(4096)
        assert b"sl-eep\r\n" in seen, seen
        fd = port.fileno()
        os.set_blocking(fd, False)
        chunk, accepted, idle_since = b"a" * 65536, 0, time.monotonic()
        while accepted < 8 << 20 and time.monotonic() - idle_since < 1.0:
            try:
                accepted += os.write(fd, chunk)
                idle_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        # The VM's pipe, the supervisor's bound and the pty's buffer: well under 1 MiB,
        # the rest of the 8 MiB is still the host's to send.
        assert accepted < 1 << 20
    finally:
        port.close()


def test_vm_stderr_line_without_end_is_cut(quiet_board: VirtualBoard) -> None:
    code = "import sys\nfor i in range(50):\n    sys.stderr.write('e' * 1000)\n"
    with SerialTransport(quiet_board.port) as t:
        t.exec(code + "sys.stderr.write('\\n')")
        t.exec("sys.stderr.write('after\\n')")
    log = (quiet_board.config.state_dir / "console.log").read_bytes()
    deadline = time.monotonic() + 30
    while b"[vm stderr] after\n" not in log and time.monotonic() < deadline:
        time.sleep(0.05)
        log = (quiet_board.config.state_dir / "console.log").read_bytes()
    # (The VM's stdout may land in the log between two stderr lines.)
    assert b"[vm stderr] " + b"e" * 4096 + b" [cut]\n" in log
    assert b"[sim] 45904 more bytes dropped\n" in log
    assert b"e" * 4097 not in log
    assert b"[vm stderr] after\n" in log


def output(log: bytes) -> bytes:
    """What the board printed, without the supervisor's notes in the log."""
    return re.sub(rb"\r\n\[sim\] [^\r]*\r\n", b"", log)


def test_output_for_a_host_that_does_not_read_is_dropped_saying_so(
    quiet_board: VirtualBoard,
) -> None:
    log_path = quiet_board.config.state_dir / "console.log"
    line = b"y" * 99 + b"\r\n"
    port = serial.Serial(quiet_board.port, timeout=0.1)
    try:
        port.write(b"for i in range(4000): print('y' * 99)\r\r")  # 404000 bytes, not read
        deadline = time.monotonic() + 90
        while output(log_path.read_bytes()).count(line) < 4000 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = b""
        while not got.endswith(line + b">>> ") and time.monotonic() < deadline:
            got += port.read(65536)
    finally:
        port.close()
    log = log_path.read_bytes()
    assert output(log).count(line) == 4000  # the log keeps all of it
    assert b"\r\n[sim] the host is not reading: dropping the oldest output\r\n" in log
    # One drop or several (a loaded host may fall behind again after catching up).
    drops = re.findall(rb"\r\n\[sim\] the host reads again; (\d+) bytes dropped\r\n", log)
    assert drops, log[-300:]
    # The host got the newest output, up to the prompt; what it missed was counted.
    assert got.endswith(line + b">>> ")
    assert got.count(line) < 4000
    assert len(got) + sum(int(d) for d in drops) == len(output(log))


def test_a_detached_board_that_does_not_stop_is_killed_and_only_it(home: Path) -> None:
    rec = start_detached("esp32", name="stuck-dev")
    assert rec.own_process
    os.kill(rec.pid, signal.SIGSTOP)  # frozen: it cannot answer the stop request
    try:
        assert stop_running("stuck-dev", timeout_s=1.0) == rec
        try:  # killed: a zombie (our child, not reaped yet), or reaped already
            state = Path(f"/proc/{rec.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "Z"
        assert state == "Z"
        assert lock_holder(Path(rec.state_dir)) is None
        assert list_running() == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(rec.pid, 0)
