"""machine.Timer, UART, SPI, PWM, Signal, time_pulse_us, Pin.irq and a full flash
on the virtual board, driven as a host drives a real one.

Boards run in-process (VirtualBoard) behind their ptys: device code goes through
the raw REPL (ioconnect's SerialTransport), UART(1) through its own pty with
pyserial, pin levels through ``ioconnect sim pin`` on a detached board. No
assertion is about speed: counts are bounded by what the board itself measured.
"""

from __future__ import annotations

import ast
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from ioconnect_host.boards import Board, load_board
from ioconnect_host.cli import main
from ioconnect_host.transport import DeviceExecError, SerialTransport
from ioconnect_sim.supervisor import SimConfig, VirtualBoard

ENOSPC = 28
BOARDS = ["esp32", "rpi-pico"]  # the two ports whose machine modules differ


class PeriphBoard:
    """A started virtual board and a raw-REPL session on its console pty."""

    def __init__(self, name: str, state_dir: Path) -> None:
        self.name = name
        self.spec: Board = load_board(name)
        cfg = SimConfig(
            "periph",
            board=self.spec.vm_config(),
            state_dir=state_dir,
            heap=self.spec.heap,
            preload=self.spec.sim_preload(),
        )
        self.vb = VirtualBoard(cfg)
        self.t = SerialTransport(self.vb.start())
        self.t.read_until(b">>> ", timeout_s=60, what="the first prompt")
        self.t.enter_raw_repl()

    @property
    def rp2(self) -> bool:
        return self.spec.port == "rp2"

    def run(self, code: str, timeout_s: float = 30) -> list[Any]:
        """Run code; every printed line read as a Python literal."""
        out = self.t.exec(code, timeout_s=timeout_s).decode()
        return [ast.literal_eval(line) for line in out.splitlines() if line.strip()]

    def error(self, code: str) -> DeviceExecError:
        with pytest.raises(DeviceExecError) as exc:
            self.t.exec(code)
        return exc.value

    def close(self) -> None:
        self.t.close()
        self.vb.stop()


@pytest.fixture(scope="module", params=BOARDS)
def board(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PeriphBoard]:
    b = PeriphBoard(request.param, tmp_path_factory.mktemp(request.param))
    yield b
    b.close()


def last_line(err: DeviceExecError) -> str:
    return err.traceback.splitlines()[-1]


def timer_id(board: PeriphBoard) -> int:
    return -1 if board.rp2 else 0  # rp2: virtual timers only; esp32: hardware 0..3


# -- Timer --------------------------------------------------------------------


def test_periodic_timer_counts_over_a_window(board: PeriphBoard) -> None:
    n, elapsed, after, same_thread = board.run(
        "import machine, time, _thread\n"
        "main = _thread.get_ident()\n"
        "ticks = []\n"
        "def cb(t):\n"
        "    ticks.append(_thread.get_ident() == main)\n"
        f"tm = machine.Timer({timer_id(board)})\n"
        "t0 = time.ticks_ms()\n"
        "tm.init(mode=machine.Timer.PERIODIC, period=20, callback=cb)\n"
        "time.sleep_ms(1000)\n"
        "tm.deinit()\n"
        "elapsed = time.ticks_diff(time.ticks_ms(), t0)\n"
        "n = len(ticks)\n"
        "time.sleep_ms(200)\n"
        "print(n); print(elapsed); print(len(ticks)); print(all(ticks))"
    )
    # At most one tick per 20 ms the board itself counted; at least a steady stream.
    assert 10 <= n <= elapsed // 20 + 1, (n, elapsed)
    assert after == n  # deinit stops it
    assert same_thread is True  # callbacks ran on the main thread (micropython.schedule)


# Until the timer fired (a loaded host may hold the ticker thread back for a
# while), then 0.5 s more (10 periods or more), in which a wrong second firing
# would show.
FIRED = (
    "t0 = time.ticks_ms()\n"
    "while not {0} and time.ticks_diff(time.ticks_ms(), t0) < 20000:\n"
    "    time.sleep_ms(5)\n"
    "time.sleep_ms(500)\n"
)


def test_one_shot_timer_fires_once_with_the_timer(board: PeriphBoard) -> None:
    got = board.run(
        "import machine, time\n"
        "seen = []\n"
        f"tm = machine.Timer({timer_id(board)})\n"
        "tm.init(mode=machine.Timer.ONE_SHOT, period=30, callback=lambda t: seen.append(t is tm))\n"
        + FIRED.format("seen")
        + "print(seen)"
    )
    assert got == [[True]]
    # freq= instead of period=, and the timer id rules of each port.
    assert board.run(
        "import machine, time\nc = []\n"
        f"tm = machine.Timer({timer_id(board)}, mode=machine.Timer.ONE_SHOT, freq=20, "
        "callback=c.append)\n" + FIRED.format("c") + "print(len(c))"
    ) == [1]
    bad = board.error(f"import machine\nmachine.Timer({0 if board.rp2 else 4})")
    why = "Timer doesn't exist" if board.rp2 else "invalid Timer number"
    assert last_line(bad) == f"ValueError: {why}"


def test_ctrl_c_stops_a_busy_loop_while_a_timer_runs(board: PeriphBoard) -> None:
    # A 1 ms timer whose callback allocates, and user loops that spin or
    # allocate at a sensor's pace: every Ctrl-C must come back as
    # KeyboardInterrupt, the VM never deadlocks, and the timer keeps running
    # (as on a board until soft reset). (A loop that allocates without pause
    # is the known gap: see the README, "Ctrl-C".)
    board.run(
        "import machine\nhits = [0]\n"
        "def cb(t):\n    hits[0] += 1\n    s = str(hits[0])\n"
        f"tm = machine.Timer({timer_id(board)})\n"
        "tm.init(period=1, callback=cb)"
    )
    port = board.t.port
    board.t.close()
    rng = random.Random(7)
    try:
        with serial.Serial(port, timeout=0.05) as ser:
            ser.write(b"\r\x01")  # Ctrl-A: the raw REPL (closing the transport left it)
            read_until(ser, b"raw REPL; CTRL-B to exit\r\n>", 30, "entering the raw REPL")
            for i in range(200):
                ser.write(LOOPS[i % 2])
                read_until(ser, b"OKgo\r\n", 30, f"round {i}: the program runs")
                time.sleep(rng.uniform(0.005, 0.05))
                ser.write(b"\x03")
                out = read_until(ser, b"\x04>", 30, f"round {i}: KeyboardInterrupt")
                assert b"KeyboardInterrupt" in out, out[-200:]
    finally:
        board.t = SerialTransport(port)
        board.t.enter_raw_repl()
    before, later = board.run(
        "import time\na = hits[0]\ntime.sleep_ms(100)\nprint(a); print(hits[0])\ntm.deinit()"
    )
    assert later > before  # the timer survived every interrupt


# User loops; "go" says one runs (a Ctrl-C sent while the board still compiles
# is a character in its input, as on a board).
LOOPS = (
    b"print('go')\nx = 0\nwhile True:\n    x += 1\n\x04",
    b"import time\nprint('go')\nx = 0\nwhile True:\n    x = (x + 1) & 0xFFFF\n"
    b"    s = [str(x)]\n    time.sleep_ms(2)\n\x04",
)


def read_until(ser: serial.Serial, marker: bytes, timeout_s: float, what: str) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout_s
    while marker not in buf:
        assert time.monotonic() < deadline, f"{what}: no {marker!r} in {bytes(buf[-200:])!r}"
        buf += ser.read(max(1, ser.in_waiting))
    return bytes(buf)


# -- UART ---------------------------------------------------------------------


def test_uart1_is_the_second_pty(board: PeriphBoard) -> None:
    assert board.vb.uart_port.startswith("/dev/pts/") and board.vb.uart_port != board.t.port
    with serial.Serial(board.vb.uart_port, 9600, timeout=20) as host:
        board.run(
            "import machine\nu = machine.UART(1, 9600, timeout=2000)\n"
            "print(u.write(b'hello\\n'))"
        )
        assert host.read(6) == b"hello\n"
        host.write(b"ping\r\nabcdefg")
        got = board.run(
            "import time\nline = u.readline()\n"
            "t0 = time.ticks_ms()\n"
            "while u.any() < 7 and time.ticks_diff(time.ticks_ms(), t0) < 20000:\n"
            "    time.sleep_ms(5)\n"
            "print(line); print(u.any()); print(u.read(3))\n"
            "buf = bytearray(8)\nprint(u.readinto(buf)); print(bytes(buf))"
        )
        assert got == [b"ping\r\n", 7, b"abc", 4, b"defg\x00\x00\x00\x00"]
    # Nothing arrives: None after the timeout, as the ports answer.
    assert board.run("u.init(9600, timeout=50)\nprint(u.read()); print(u.readline())") == [
        None,
        None,
    ]
    assert board.error("import machine\nmachine.UART(3)").code == "ValueError"


# -- SPI, PWM, Signal, time_pulse_us ----------------------------------------------


def test_spi_floating_bus_and_loopback(board: PeriphBoard) -> None:
    bus = 0 if board.rp2 else 1
    got = board.run(
        "import machine\n"
        f"s = machine.SPI({bus}, baudrate=1000000, polarity=0, phase=0)\n"
        "print(s.read(3)); b = bytearray(2); s.readinto(b, 0x55); print(bytes(b))\n"
        "print(s.write(b'\\x01\\x02'))\n"
        "w = machine.SoftSPI(baudrate=100000, sck=machine.Pin(10), mosi=machine.Pin(11), "
        "miso=machine.Pin(11))\n"
        "r = bytearray(3); w.write_readinto(b'\\xa5\\x00\\x7f', r); print(bytes(r))\n"
        "print(w.read(2, 0x42))\n"
        "print([machine.SPI.MSB, machine.SPI.LSB, machine.SoftSPI.MSB])"
    )
    msb, lsb = (1, 0) if board.rp2 else (0, 1)  # pico-sdk SPI_MSB_FIRST = 1
    assert got == [b"\xff\xff\xff", b"\xff\xff", None, b"\xa5\x00\x7f", b"\x42\x42", [msb, lsb, 0]]
    err = board.error("w.write_readinto(b'ab', bytearray(3))")
    assert last_line(err) == "ValueError: buffers must be the same length"
    assert board.error("import machine\nmachine.SPI(5)").code == "ValueError"


def test_pwm_signal_and_pulses(board: PeriphBoard) -> None:
    got = board.run(
        "import machine\n"
        "p = machine.PWM(machine.Pin(15), freq=1000, duty_u16=16384)\n"
        "print([p.freq(), p.duty_u16()]); p.duty_ns(500000); print(p.duty_u16())\n"
        "print(p.duty_ns())\n"
        "led = machine.Pin(2, machine.Pin.OUT)\n"
        "s = machine.Signal(led, invert=True); s.on(); print([led.value(), s.value()])\n"
        "s.off(); print([led.value(), s.value()])\n"
        "down = machine.Pin(5, machine.Pin.IN, machine.Pin.PULL_DOWN)\n"
        "up = machine.Pin(6, machine.Pin.IN, machine.Pin.PULL_UP)\n"
        "print(machine.time_pulse_us(down, 1, 20000)); print(machine.time_pulse_us(up, 1, 20000))\n"
        "p.init(freq=100, duty_u16=16384)\n"
        # The shortest of five: a VM held back by a loaded host mid-pulse can find
        # the next period's high phase and measure past one period.
        "print(min(machine.time_pulse_us(machine.Pin(15), 1, 100000) for _ in range(5)))"
    )
    assert got[0] == [1000, 16384]
    assert got[1] == 500000 * 65535 // 1000000  # 32767
    assert got[2] == 32767 * 1000000 // 65535  # 499992 ns
    assert got[3] == [0, 1] and got[4] == [1, 0]
    assert got[5:7] == [-2, -1]  # never reached the level; pulse outlasted the timeout
    assert 0 < got[7] <= 10000  # a 2.5 ms high phase of a 10 ms period, seen in part or whole


# -- flash ----------------------------------------------------------------------


def test_flash_full_raises_enospc_and_keeps_earlier_files(board: PeriphBoard) -> None:
    size = board.spec.filesystem.size
    block = board.spec.filesystem.block_size
    got = board.run(
        "import os\n"
        "with open('keep.txt', 'w') as f:\n    f.write('precious')\n"
        "free0 = os.statvfs('/')[3]\n"
        "chunk = bytes(4096)\nwritten = 0\nerr = None\n"
        "try:\n"
        "    with open('big.bin', 'wb') as f:\n"
        "        while True:\n"
        "            f.write(chunk)\n"
        "            written += len(chunk)\n"
        "except OSError as e:\n"
        "    err = e.errno\n"
        "st = os.statvfs('/')\n"
        "print(err); print(written); print(os.stat('big.bin')[6]); print([st[0], st[2], st[3]])\n"
        "print(repr(open('keep.txt').read()))\n"
        "os.remove('big.bin'); print([free0, os.statvfs('/')[3]])",
        timeout_s=120,
    )
    err, written, on_disk, (bsize, blocks, free), keep, (free0, free_after) = got
    assert err == ENOSPC
    assert (bsize, blocks) == (block, size // block)
    assert free == 0 and on_disk == written
    assert written == (free0 - 1) * block + block  # the free blocks, a file's first included
    assert keep == "precious"
    assert free_after == free0
    # Nothing else broke: a small write fits again.
    again = "open('after.txt', 'w').write('ok')\nprint(repr(open('after.txt').read()))"
    assert board.run(again) == ["ok"]


# -- Pin.irq from the host ----------------------------------------------------------


# Callbacks run at the VM's safe points while code runs (the console waiting
# for input runs none): each look at the events lets them run first.
WAIT = "import time\ntime.sleep_ms(2)\n"


@pytest.fixture
def detached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("IOCONNECT_HOME", str(tmp_path))
    assert main(["sim", "start", "--board", "esp32", "--name", "pins-dev", "--detach"]) == 0
    try:
        yield {"name": "pins-dev"}
    finally:
        main(["sim", "stop", "pins-dev"])


def test_pin_irq_fires_on_host_edges(
    detached: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["sim", "list", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)[0]
    assert rec["uart_port"].startswith("/dev/pts/") and rec["uart_port"] != rec["port"]
    with SerialTransport(rec["port"]) as t:
        t.enter_raw_repl(timeout_s=30)  # whatever runs (the firmware's main.py): Ctrl-C
        t.exec(
            "import machine\nP = machine.Pin\nev = []; rise = []\n"
            "p4 = P(4, P.IN)\n"
            "edges = P.IRQ_RISING | P.IRQ_FALLING\n"
            "irq = p4.irq(lambda p: ev.append((p.value(), irq.flags())), edges)\n"
            "p5 = P(5, P.IN)\n"
            "p5.irq(lambda p: rise.append(p.value()), trigger=P.IRQ_RISING)"
        )

        def events(expect: int) -> list[Any]:
            deadline = time.monotonic() + 30
            while True:
                got: list[Any] = ast.literal_eval(t.exec(WAIT + "print([ev, rise])").decode())
                if len(got[0]) + len(got[1]) >= expect or time.monotonic() > deadline:
                    return got
                time.sleep(0.02)

        assert main(["sim", "pin", "pins-dev", "4", "1"]) == 0
        assert capsys.readouterr().out == "pins-dev: pin 4 = 1\n"
        assert events(1) == [[(1, 1)], []]  # esp32 IRQ_RISING = 1
        assert main(["sim", "pin", "pins-dev", "4", "0"]) == 0
        assert events(2) == [[(1, 1), (0, 2)], []]  # IRQ_FALLING = 2
        main(["sim", "pin", "pins-dev", "5", "1"])
        assert events(3) == [[(1, 1), (0, 2)], [1]]
        main(["sim", "pin", "pins-dev", "5", "0"])  # falling: not asked for on pin 5
        main(["sim", "pin", "pins-dev", "4", "1", "--json"])
        out = capsys.readouterr().out.strip().splitlines()[-1]
        assert json.loads(out) == {
            "name": "pins-dev",
            "pin": 4,
            "level": 1,
            "pins": {"4": 1, "5": 0},
        }
        assert events(4) == [[(1, 1), (0, 2), (1, 1)], [1]]
        assert t.exec(WAIT + "print([p4.value(), p5.value(), irq.trigger()])") == b"[1, 0, 3]\r\n"
    # A pin the board does not have: one line, non-zero exit.
    assert main(["sim", "pin", "pins-dev", "40", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ioconnect: error: esp32 has no pin '40'")
