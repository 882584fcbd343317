"""The virtual board's serial port, byte for byte, for every board type.

Real parts only: the MicroPython VM, a pseudo-terminal opened with pyserial,
and mpremote from PyPI run as a separate process.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
import serial
from ioconnect_host import agent
from ioconnect_host.boards import list_boards, load_board
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard, heap_factor

BOARDS = list_boards()


@pytest.fixture(scope="module")
def started_boards() -> Iterator[dict[str, VirtualBoard]]:
    """One board of each type for the whole module, started on first use.

    Kept side by side (not one module-scoped board per param) so tests can run
    in any order without a board being stopped and started between them.
    """
    boards: dict[str, VirtualBoard] = {}
    yield boards
    for vb in boards.values():
        vb.stop()


@pytest.fixture(params=BOARDS)
def board(
    request: pytest.FixtureRequest,
    started_boards: dict[str, VirtualBoard],
    tmp_path_factory: pytest.TempPathFactory,
) -> VirtualBoard:
    name: str = request.param
    if name not in started_boards:
        state = tmp_path_factory.mktemp(f"sim-{name}")
        started_boards[name] = start_board(name, name=f"test-{name}", state_dir=state, seed=7)
    return started_boards[name]


class Console:
    """pyserial on the board's port, with reads that name what they waited for."""

    def __init__(self, port: str) -> None:
        self.s = serial.Serial(port, 115200, timeout=0.05)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.s.write(data)

    def expect(self, marker: bytes, timeout_s: float = 60.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while marker not in self.buf:
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout_s} s for {marker!r}; got {self.buf!r}")
            self.buf += self.s.read(4096)
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    def friendly(self) -> None:
        # Interrupt whatever runs, leave raw mode: Ctrl-B ends with a fresh banner.
        self.send(b"\r\x03\x03\x02")
        self.expect(b'Type "help()" for more information.\r\n>>> ')
        # A Ctrl-C reaches the VM as a signal, so the prompt it prints (when the
        # board already sat at the friendly prompt) may come after the banner.
        self.quiet()

    def quiet(self, gap_s: float = 0.2) -> None:
        """Read and drop output until the board has said nothing for ``gap_s``."""
        last = time.monotonic()
        while time.monotonic() - last < gap_s:
            if self.s.read(4096):
                last = time.monotonic()
        self.buf = b""

    def close(self) -> None:
        self.s.close()


@pytest.fixture
def console(board: VirtualBoard) -> Iterator[Console]:
    c = Console(board.port)
    c.friendly()
    yield c
    c.close()


def test_friendly_repl_round_trip(console: Console) -> None:
    console.send(b"1+2\r")
    assert console.expect(b">>> ") == b"1+2\r\n3\r\n>>> "
    console.send(b"for i in range(2):\r")
    console.expect(b"...     ")  # auto-indent after a colon, as on a board
    # As on a board, auto-indent refills two empty lines; a third, bare, ends the block.
    console.send(b"print(i * 10)\r\r\r\r")
    out = console.expect(b">>> ")
    assert b"0\r\n10\r\n" in out
    console.send(b"undefined_name\r")
    out = console.expect(b">>> ")
    assert b"NameError: name 'undefined_name' isn't defined\r\n" in out
    assert b"console.py" not in out  # the simulator's own frames never show


def test_raw_repl_exact_bytes(console: Console) -> None:
    console.send(b"\r\x01")
    console.expect(b"raw REPL; CTRL-B to exit\r\n>")
    console.send(b"print('x' * 3)\x04")
    assert console.expect(b">") == b"OKxxx\r\n\x04\x04>"
    console.send(b"1/0\x04")
    out = console.expect(b"\x04>")  # "<stdin>" in the traceback holds a ">" too
    assert out.startswith(b"OK\x04Traceback (most recent call last):\r\n")
    assert out.endswith(b"ZeroDivisionError: divide by zero\r\n\x04>")
    console.send(b"\x02")
    console.expect(b">>> ")


def test_raw_paste_flow_control(console: Console) -> None:
    console.send(b"\r\x01")
    console.expect(b"raw REPL; CTRL-B to exit\r\n>")
    console.send(b"\x05A\x01")
    head = console.expect(b"\x01")
    assert head == b"R\x01"
    window = int.from_bytes(console.expect(b"\x01")[:2], "little")
    assert window == 128
    # 1000 bytes of code: the host may send two windows, then one per 0x01 it gets.
    code = b"s = 0\n" + b"".join(b"s += %d\n" % i for i in range(120)) + b"print(s)\n"
    credit, sent = 2 * window, 0
    while sent < len(code):
        n = min(credit, len(code) - sent)
        console.send(code[sent : sent + n])
        sent += n
        credit -= n
        if sent < len(code):
            assert console.expect(b"\x01") == b"\x01"
            credit += window
    console.send(b"\x04")
    out = console.expect(b"\x04>")
    assert out.lstrip(b"\x01") == b"\x04" + str(sum(range(120))).encode() + b"\r\n\x04\x04>"
    console.send(b"\x02")
    console.expect(b">>> ")


def test_ctrl_c_interrupts_busy_loop(console: Console) -> None:
    console.send(b"print('go')\r")
    console.expect(b"go\r\n>>> ")
    # The loop says when it runs (the echo of the typed line has no "in 42"): a ^C
    # sent before it ran would be a plain ^C at the prompt.
    console.send(b"exec(\"print('in', 6 * 7)\\nwhile True: pass\")\r")
    console.expect(b"in 42\r\n")
    console.send(b"\x03")
    out = console.expect(b">>> ")
    assert b"KeyboardInterrupt" in out
    console.send(b"2*21\r")
    assert console.expect(b">>> ").endswith(b"42\r\n>>> ")


def test_soft_reset_reruns_boot_and_main(board: VirtualBoard, console: Console) -> None:
    console.send(b"kept = 1\r")
    console.expect(b">>> ")
    boots = board.boots
    console.send(b"\x04")
    out = console.expect(b">>> ")
    assert out.startswith(b"\r\nMPY: soft reboot\r\n")
    assert b"ioconnect 0.1.0 identity:" in out  # main.py ran again
    assert board.boots == boots + 1
    console.send(b"kept\r")
    assert b"NameError" in console.expect(b">>> ")  # a fresh heap


def test_heap_budget_is_enforced(board: VirtualBoard) -> None:
    # The board's budget scaled for the 64-bit VM (supervisor.heap_factor).
    spec = load_board(board.config.board["name"])  # type: ignore[arg-type]
    budget = int(spec.heap_bytes * heap_factor())
    with SerialTransport(board.port) as t:
        # A fresh heap: earlier tests on this module's board may have split it
        # (the agent keeps its hash modules loaded), as a long-running board's is.
        t.enter_raw_repl(soft_reset=True)
        assert t.eval(f"len(bytearray({budget // 8}))") == budget // 8
        _, err = t.exec_raw(f"bytearray({budget + 4096})")
        assert b"MemoryError" in err
        assert t.eval("1+1") == 2  # and the board keeps going


def _mpremote(port: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "mpremote", "connect", port, *args]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, (args, done.stdout[-500:], done.stderr[-500:])
    return done


def test_mpremote_unchanged(board: VirtualBoard, tmp_path: Path) -> None:
    port = board.port
    assert _mpremote(port, "exec", "print(6*7)").stdout.strip() == b"42"
    assert _mpremote(port, "eval", "'ab' * 2").stdout.strip() == b"abab"
    script = tmp_path / "script.py"
    script.write_text("import sys\nprint('ran on', sys.implementation.name)\n")
    assert b"ran on micropython" in _mpremote(port, "run", str(script)).stdout
    # binary file with every byte value, there and back
    blob = bytes(range(256)) * 33 + b"\r\n\n\r\x03\x04\x01"
    local = tmp_path / "blob.bin"
    local.write_bytes(blob)
    _mpremote(port, "fs", "mkdir", ":data")
    _mpremote(port, "fs", "cp", str(local), ":data/blob.bin")
    listing = _mpremote(port, "fs", "ls", ":data").stdout
    assert f"{len(blob)} blob.bin".encode() in listing
    sha = _mpremote(port, "fs", "sha256sum", ":data/blob.bin").stdout
    assert hashlib.sha256(blob).hexdigest().encode() in sha
    back = tmp_path / "back.bin"
    _mpremote(port, "fs", "cp", ":data/blob.bin", str(back))
    assert back.read_bytes() == blob
    assert (Path(board.config.flash_dir) / "data" / "blob.bin").read_bytes() == blob
    (tmp_path / "t.txt").write_text("hello\n")
    _mpremote(port, "fs", "cp", str(tmp_path / "t.txt"), ":t.txt")
    assert b"hello" in _mpremote(port, "fs", "cat", ":t.txt").stdout
    _mpremote(port, "fs", "rm", ":t.txt", ":data/blob.bin")
    _mpremote(port, "fs", "rmdir", ":data")
    assert b"data" not in _mpremote(port, "fs", "ls").stdout
    _mpremote(port, "soft-reset")
    assert _mpremote(port, "eval", "1").stdout.strip() == b"1"


def test_mpremote_repl(board: VirtualBoard) -> None:
    child = pexpect.spawn(
        sys.executable, ["-m", "mpremote", "connect", board.port, "repl"], timeout=60
    )
    try:
        child.expect("Connected to MicroPython")
        child.send("\r")
        child.expect(">>> ")
        child.send("100+23\r")
        child.expect("123")
        child.sendcontrol("]")  # mpremote's exit key
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_identity_survives_power_cut_and_restart(board: VirtualBoard) -> None:
    with SerialTransport(board.port) as t:
        # A fresh heap, as on a board just booted (other tests fill and fragment it).
        t.enter_raw_repl(soft_reset=True)
        state = agent.info(t)["identity"]
        if state["state"] == "none":
            agent.identity_create(t, "secp256k1")
        before = agent.identity_show(t)
    boots = board.boots
    board.power_cut()
    deadline = time.monotonic() + 60
    while board.boots == boots and time.monotonic() < deadline:
        time.sleep(0.05)
    assert board.boots == boots + 1  # the power cut really rebooted the VM
    with SerialTransport(board.port) as t:
        assert agent.identity_show(t) == before
        assert agent.info(t)["identity"]["did"] == before["did"]
    # a whole new supervisor on the same state folder: the flash persists
    board.stop()
    try:
        cfg = board.config
        name = str(cfg.board["name"])
        again = start_board(name, name=cfg.name + "-again", state_dir=cfg.state_dir)
        try:
            with SerialTransport(again.port) as t:
                assert agent.identity_show(t) == before
        finally:
            again.stop()
    finally:
        board.start()  # the module's other tests go on with it
