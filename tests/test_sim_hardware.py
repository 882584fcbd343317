"""The virtual board's hardware shims, on every board, through mpremote's transport.

Each board type is started once (module-scoped fixture) and driven over its
pseudo-terminal with mpremote's SerialTransport, as a host tool would drive a
real board. Sensor readings are checked with host-side formulas (RP2040 and
Sensirion/Bosch datasheets), never with the simulator's own code.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ioconnect_host.boards import Board, list_boards, load_board
from ioconnect_host.vm import micropython_command
from ioconnect_sim.supervisor import SimConfig, VirtualBoard, heap_factor
from mpremote.transport import TransportExecError
from mpremote.transport_serial import SerialTransport
from sensorrefs import bme280_float, crc8

BOARDS = list_boards()
# Chosen at collection, so a board without Wi-Fi never starts the servers these tests need.
WIFI_BOARDS = [b for b in BOARDS if load_board(b).network == "wifi"]
EIO, ENODEV = 5, 19
# machine.reset_cause() values of the esp32 and rp2 ports.
PWRON, HARD, WDT, DEEPSLEEP, SOFT = 1, 2, 3, 4, 5


class Sim:
    """A started virtual board and a raw-REPL session on its serial port."""

    def __init__(self, name: str, state_dir: Path, *, dev: str = "dev-a", seed: int = 7) -> None:
        self.board: Board = load_board(name)
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        cfg = SimConfig(
            dev,
            board=self.board.vm_config(),
            state_dir=state_dir,
            heap=self.board.heap,
            seed=seed,
            preload=self.board.sim_preload(),
        )
        self.vb = VirtualBoard(cfg)
        self.t = SerialTransport(self.vb.start(), baudrate=115200)
        self.banner = self.attach()

    def attach(self) -> bytes:
        """Wait for the friendly REPL of a fresh boot, then enter the raw REPL."""
        seen = self.t.read_until(1, b">>> ", timeout=60)
        assert seen.endswith(b">>> "), f"no REPL prompt; got {seen[-300:]!r}"
        self.t.enter_raw_repl(soft_reset=False)
        self.banner = seen
        return seen

    def run(self, code: str) -> list[Any]:
        """Run code on the board; every printed line read as a Python literal."""
        out = self.t.exec(code).decode()
        return [ast.literal_eval(line) for line in out.splitlines() if line.strip()]

    def error(self, code: str) -> str:
        """Run code that must raise; returns the board's traceback."""
        with pytest.raises(TransportExecError) as exc:
            self.t.exec(code)
        return exc.value.error_output

    def reboot(self, code: str | None, timeout_s: float = 30.0) -> float:
        """Send code that resets the board (None: cut the power); returns the
        seconds until the new VM started, after re-entering the raw REPL."""
        boots = self.vb.boots
        start = time.monotonic()
        if code is None:
            self.vb.power_cut()
        else:
            self.t.exec_raw_no_follow(code)
        while self.vb.boots == boots:
            assert time.monotonic() - start < timeout_s, f"no reboot after {code!r}"
            time.sleep(0.01)
        took = time.monotonic() - start
        self.attach()
        return took

    def cause(self) -> int:
        value: int = self.run("import machine; print(machine.reset_cause())")[0]
        return value

    def close(self) -> None:
        self.t.close()
        self.vb.stop()


@pytest.fixture(scope="module")
def started_sims() -> Iterator[dict[str, Sim]]:
    """One board of each type for the whole module, started on first use.

    Kept side by side (not one module-scoped board per param) so tests can run
    in any order without a board being stopped and started between them.
    """
    sims: dict[str, Sim] = {}
    yield sims
    for board in sims.values():
        board.close()


@pytest.fixture(params=BOARDS)
def sim(
    request: pytest.FixtureRequest,
    started_sims: dict[str, Sim],
    tmp_path_factory: pytest.TempPathFactory,
) -> Sim:
    """The board of the test's param (override with ``indirect`` to choose boards)."""
    name: str = request.param
    if name not in started_sims:
        started_sims[name] = Sim(name, tmp_path_factory.mktemp(name))
    return started_sims[name]


@pytest.fixture
def booted(sim: Sim) -> Sim:
    """The test's board just after a power cut: a power-on boot, a fresh heap, Wi-Fi not
    joined, whatever tests ran on it before."""
    sim.reboot(None)
    return sim


def direct_vm(sim: Sim, name: str, seed: int, code: str) -> list[Any]:
    """Run code in a bare VM with the shims of ``sim`` and a given device name and seed."""
    cfg = sim.state_dir / f"direct-{name}-{seed}.json"
    cfg.write_text(json.dumps({"name": name, "seed": seed, "board": sim.board.vm_config()}))
    env = dict(os.environ, MICROPYPATH=str(sim.state_dir / "vmlib"), IOCONNECT_SIM=str(cfg))
    prologue = "import _simboard\n_simboard._load()\n"
    done = subprocess.run(
        [*micropython_command("1M"), "-c", prologue + code],
        capture_output=True,
        env=env,
        timeout=30,
        check=True,
    )
    return [ast.literal_eval(line) for line in done.stdout.decode().splitlines()]


# -- identity and modules ---------------------------------------------------------


def test_banner_and_modules(booted: Sim) -> None:
    sim = booted
    b = sim.board
    assert f"; {b.board_name} with {b.mcu_name}\r\n".encode() in sim.banner
    got = sim.run(
        "import sys, machine\n"
        "def has(m):\n"
        "    try:\n"
        "        __import__(m)\n"
        "        return True\n"
        "    except ImportError:\n"
        "        return False\n"
        "e = sys.modules.get('esp32')\n"
        "print([getattr(machine, '__file__', ''), machine.reset_cause(),\n"
        "    machine.freq(), has('network'), has('esp32'),\n"
        "    hasattr(e, 'raw_temperature'), hasattr(e, 'mcu_temperature')])\n"
    )[0]
    # `import machine` is our shim, not the unix port's built-in module.
    assert got[0].endswith(("machine.mpy", "machine.py"))
    assert got[1] == PWRON
    assert got[2] == b.cpu_freq_hz
    assert got[3] == (b.network == "wifi")
    assert got[4] == (b.port == "esp32")
    assert got[5] == (b.chip == "esp32")  # raw_temperature only on the original ESP32
    assert got[6] == (b.chip in ("esp32s3", "esp32c3"))


def test_unique_id_stable_and_per_device(sim: Sim, tmp_path: Path) -> None:
    code = "import machine; print(repr(machine.unique_id().hex()))"
    uid = bytes.fromhex(sim.run(code)[0])
    assert len(uid) == sim.board.unique_id_bytes
    if sim.board.unique_id_bytes == 6:  # an ESP32's base MAC starts with the OUI
        assert uid[:3] == bytes.fromhex(sim.board.mac_oui.replace(":", ""))
    sim.reboot(None)  # power cut
    assert sim.cause() == PWRON
    assert bytes.fromhex(sim.run(code)[0]) == uid
    other = Sim(sim.board.name, tmp_path / "b", dev="dev-b")
    try:
        other_uid = bytes.fromhex(other.run(code)[0])
    finally:
        other.close()
    assert len(other_uid) == len(uid) and other_uid != uid


# -- sensors ----------------------------------------------------------------------


def read_temperature_code(board: Board) -> str:
    """Code printing [raw reading, the shim's own signal value at that time]."""
    if board.chip == "esp32":
        read = "import esp32; v = esp32.raw_temperature()"
    elif board.port == "esp32":
        read = "import esp32; v = esp32.mcu_temperature()"
    else:
        read = "import machine; v = machine.ADC(4).read_u16()"
    return f"import _sensors\n{read}\nprint([v, _sensors.temperature_at(_sensors.elapsed())])"


def to_celsius(board: Board, raw: int) -> float:
    if board.chip == "esp32":  # esp32.raw_temperature(): degrees Fahrenheit
        return (raw - 32) * 5 / 9
    if board.port == "esp32":  # esp32.mcu_temperature(): degrees Celsius
        return float(raw)
    # RP2040 datasheet 4.9.5, with the 3.3 V reference of the Pico.
    return 27 - (raw * 3.3 / 65535 - 0.706) / 0.001721


def test_temperature_plausible_and_matches_signal(sim: Sim) -> None:
    raw, model = sim.run(read_temperature_code(sim.board))[0]
    assert isinstance(raw, int)
    celsius = to_celsius(sim.board, raw)
    assert 15 <= celsius <= 45
    # The port's units and quantisation (12-bit ADC: 0.47 degC a step) hold.
    assert abs(celsius - model) < 1.0


def test_signals_deterministic_by_seed(sim: Sim) -> None:
    times = [0, 0.5, 1, 59.9, 3600, 86400.25]
    code = f"import _sensors\nprint([_sensors.temperature_at(t) for t in {times!r}])"
    on_board = sim.run(code)[0]
    same = direct_vm(sim, "dev-a", 7, code)[0]
    other_seed = direct_vm(sim, "dev-a", 8, code)[0]
    assert on_board == same
    assert all(a != b for a, b in zip(on_board, other_seed, strict=True))
    assert on_board[0] == on_board[1]  # a reading holds for its second
    assert len(set(on_board[2:])) == 4


def test_temperature_sensor_fault(sim: Sim) -> None:
    code = read_temperature_code(sim.board)
    sim.vb.set_fault(sensors={"temperature": "fail"})
    try:
        err = sim.error(code)
        assert "OSError: 5" in err or "[Errno 5] EIO" in err, err
    finally:
        sim.vb.set_fault(sensors={"temperature": "ok"})
    assert 15 <= to_celsius(sim.board, sim.run(code)[0][0]) <= 45


def test_first_readings_keep_nothing_on_the_firmware_heap(booted: Sim) -> None:
    # A board reads its ADC channels and temperature sensor with C code that
    # keeps nothing on the heap. The shims' state for them is made at power-on
    # (the supervisor counts that heap as the board's own), not at the
    # firmware's first reading: made there, it stayed wherever the firmware's
    # garbage left room and cut the free heap a 96 KB board has after its loop.
    board = booted.board
    if board.chip == "esp32":
        temp = "esp32.raw_temperature()"
    elif board.port == "esp32":
        temp = "esp32.mcu_temperature()"
    else:
        temp = "machine.ADC(4).read_u16()"
    # _simboard.faults() parses the host's fault settings once per boot (they
    # survive a power cut): done first, it is not counted here.
    held = booted.run(
        "import gc, machine, _simboard\n_simboard.faults()\n"
        + ("import esp32\n" if board.port == "esp32" else "")
        + f"a = [machine.ADC(machine.Pin(p)) for p in {list(board.pins.adc)!r}]\n"
        "x = f = None\ngc.collect()\nf = gc.mem_free()\n"
        "for x in a:\n    x.read_u16()\n"
        f"{temp}\n"
        "gc.collect()\nprint(f - gc.mem_free())"
    )[0]
    assert held == 0


def test_crc8_published_vector() -> None:
    assert crc8(b"\xbe\xef") == 0x92  # SHT3x datasheet example


def i2c_open(sda: int, scl: int, bus: int) -> str:
    pins = f"sda=machine.Pin({sda}), scl=machine.Pin({scl})"
    return f"import machine\ni2c = machine.I2C({bus}, {pins})\n"


def test_i2c_sensors(sim: Sim) -> None:
    board = sim.board
    assert board.i2c, "every shipped board models one I2C sensor"
    nack = EIO if board.port == "rp2" else ENODEV  # each port's errno for a NACK
    for dev in board.i2c:
        opened = i2c_open(dev.sda, dev.scl, dev.bus)
        scan, absent = sim.run(
            opened + "try:\n    i2c.readfrom(0x50, 1)\n    e = 0\n"
            "except OSError as x:\n    e = x.errno\nprint(i2c.scan())\nprint(e)"
        )
        assert dev.address in scan and 0x50 not in scan
        assert absent == nack
        if dev.model == "sht3x":
            measure = (
                f"i2c.writeto({dev.address}, b'\\x24\\x00')\n"  # single shot, high repeatability
            )
            read = measure + f"print(list(i2c.readfrom({dev.address}, 6)))"
            raw = bytes(sim.run(opened + read)[0])
            for word in (raw[0:3], raw[3:6]):
                assert crc8(word[:2]) == word[2]
            temp = -45 + 175 * int.from_bytes(raw[0:2], "big") / 65535
            rh = 100 * int.from_bytes(raw[3:5], "big") / 65535
            status = bytes(
                sim.run(
                    opened + f"i2c.writeto({dev.address}, b'\\xf3\\x2d')\n"
                    f"print(list(i2c.readfrom({dev.address}, 3)))"
                )[0]
            )
            assert crc8(status[:2]) == status[2]
            assert 10 <= temp <= 35 and 20 <= rh <= 80
        else:
            a = dev.address
            read = (
                f"cid = i2c.readfrom_mem({a}, 0xD0, 1)[0]\n"
                f"cal = i2c.readfrom_mem({a}, 0x88, 26) + i2c.readfrom_mem({a}, 0xE1, 7)\n"
                f"i2c.writeto_mem({a}, 0xF2, b'\\x01')\n"
                f"i2c.writeto_mem({a}, 0xF4, b'\\x25')\n"  # 1x oversampling, forced mode
                f"buf = bytearray(8)\ni2c.readfrom_mem_into({a}, 0xF7, buf)\n"
                "print(cid)\nprint(list(cal))\nprint(list(buf))"
            )
            cid, cal, data = sim.run(opened + read)
            assert cid == 0x60
            temp, hpa, rh = bme280_float(bytes(cal), bytes(data))
            assert 10 <= temp <= 35 and 980 <= hpa <= 1050 and 20 <= rh <= 80
        # A failing sensor answers with EIO; when it recovers, it reads again.
        if dev.model == "sht3x":
            probe = opened + f"i2c.writeto({dev.address}, b'\\x24\\x00')\n"
            probe += f"print(len(i2c.readfrom({dev.address}, 6)))"
        else:
            probe = opened + f"print(len(i2c.readfrom_mem({dev.address}, 0xD0, 1)))"
        sim.vb.set_fault(sensors={dev.name: "fail"})
        try:
            err = sim.error(probe)
            assert "OSError: 5" in err or "[Errno 5] EIO" in err, err
        finally:
            sim.vb.set_fault(sensors={})
        assert sim.run(probe) == [6 if dev.model == "sht3x" else 1]
    if board.port == "rp2":  # the RP2040 pin mux fixes which pins each controller uses
        err = sim.error("import machine\nmachine.I2C(0, sda=machine.Pin(5), scl=machine.Pin(4))")
        assert "ValueError" in err and "bad SCL pin" in err


# -- network ----------------------------------------------------------------------

WAIT = (
    "import time, network\n"
    "w = network.WLAN(network.STA_IF)\n"
    "t0 = time.ticks_ms()\n"
    "while not w.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < 30000:\n"
    "    time.sleep_ms(20)\n"
)


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A real TCP echo server on loopback; yields its port."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    while data := conn.recv(1024):
                        conn.sendall(data)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    srv.close()


@pytest.mark.parametrize("sim", WIFI_BOARDS, indirect=True)
def test_sockets_follow_the_wifi_link(booted: Sim, echo_server: int) -> None:
    sim = booted
    # Before the station joins, nothing is reachable, as on a board.
    err = sim.error(f"import socket\nsocket.getaddrinfo('127.0.0.1', {echo_server})")
    assert "113" in err or "EHOSTUNREACH" in err
    open_socket = (
        "import network, socket, time\n"
        "w = network.WLAN(network.STA_IF)\nw.active(True)\nw.connect('ioconnect-sim', '')\n"
        + WAIT.replace("import time, network\n", "")
        + f"s = socket.socket()\ns.connect(socket.getaddrinfo('127.0.0.1', {echo_server})[0][-1])\n"
    )
    assert sim.run(open_socket + "s.write(b'ping')\nprint(repr(s.read(4)))") == [b"ping"]
    # The link drops: the open socket fails on its next use, new ones cannot connect.
    sim.vb.set_fault(wifi="down")
    try:
        err = sim.error("s.write(b'again')")
        assert "103" in err or "ECONNABORTED" in err
        err = sim.error(f"socket.socket().connect(('127.0.0.1', {echo_server}))")
        assert "113" in err or "EHOSTUNREACH" in err
    finally:
        sim.vb.set_fault(wifi="up")
    # With the link back (after the rejoin), a new socket works.
    assert sim.run(open_socket + "s.write(b'back')\nprint(repr(s.read(4)))") == [b"back"]


@pytest.fixture
def tls_echo_server(tmp_path: Path) -> Iterator[int]:
    """A real TLS server (Python's ssl, self-signed P-256 cert) that upper-cases one message."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
            with ctx.wrap_socket(conn, server_side=True) as c:
                c.sendall(c.recv(100).upper())
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    thread.join(timeout=10)
    srv.close()


@pytest.mark.parametrize("sim", WIFI_BOARDS, indirect=True)
def test_tls_over_the_virtual_wifi(sim: Sim, tls_echo_server: int) -> None:
    # The Wi-Fi socket is a stream: the port's tls module wraps it as a real one.
    code = (
        "import network, socket, tls, time\n"
        "w = network.WLAN(network.STA_IF)\nw.active(True)\nw.connect('ioconnect-sim', '')\n"
        + WAIT.replace("import time, network\n", "")
        + "s = socket.socket()\n"
        + f"s.connect(socket.getaddrinfo('127.0.0.1', {tls_echo_server})[0][-1])\n"
        "ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)\nctx.verify_mode = tls.CERT_NONE\n"
        "ss = ctx.wrap_socket(s, server_hostname='localhost')\n"
        "ss.write(b'hello tls')\nprint(repr(ss.read(9)))\nss.close()"
    )
    assert sim.run(code) == [b"HELLO TLS"]


def test_wifi_loss_and_return(sim: Sim) -> None:
    board = sim.board
    if board.network == "none":
        err = sim.error("import network")
        assert "ImportError" in err
        return
    got_ip, lost = (1010, 200) if board.port == "esp32" else (3, -2)  # ports' STAT_* values
    connect = (
        "import network\nw = network.WLAN(network.STA_IF)\nw.active(True)\n"
        "w.connect('ioconnect-sim', '')\n" + WAIT
    )
    report = "print([w.isconnected(), w.status(), w.ifconfig()[0], w.config('mac').hex()])"
    up, status, ip, mac = sim.run(connect + report)[0]
    assert up and status == got_ip and ip != "0.0.0.0"
    assert mac[:6] == board.mac_oui.replace(":", "")
    if board.port == "esp32":  # the station uses the base MAC that unique_id() returns
        assert sim.run("import machine\nprint(repr(machine.unique_id().hex()))") == [mac]
    sim.vb.set_fault(wifi="down")
    try:
        up, status, ip, _ = sim.run(WAIT.replace("30000", "300") + report)[0]
        assert (up, status, ip) == (False, lost, "0.0.0.0")
    finally:
        sim.vb.set_fault(wifi="up")
    up, status, ip, _ = sim.run(connect + report)[0]
    assert up and status == got_ip and ip != "0.0.0.0"


# -- resets -----------------------------------------------------------------------


def test_machine_reset(sim: Sim) -> None:
    sim.reboot("import machine; machine.reset()")
    assert sim.cause() == HARD
    sim.reboot("import machine; machine.soft_reset()")
    assert sim.cause() == SOFT


def test_watchdog(sim: Sim) -> None:
    # Fed in time the board lives on (fed every 0.1 s for twice the timeout; the
    # timeout leaves a loaded machine 1.4 s between feeds); once feeding stops,
    # the watchdog resets it (sim.reboot fails if no reboot comes).
    boots = sim.vb.boots
    fed = (
        "import machine, time\nw = machine.WDT(timeout=1500)\n"
        "for i in range(30):\n    time.sleep_ms(100)\n    w.feed()\nprint(1)"
    )
    assert sim.run(fed) == [1]
    assert sim.vb.boots == boots
    sim.reboot("pass")
    assert sim.cause() == WDT


def test_deepsleep_reboots_with_cause(sim: Sim) -> None:
    sim.reboot("import machine; machine.deepsleep(200)")
    got = sim.run("import machine; print([machine.reset_cause(), machine.wake_reason()])")[0]
    assert got == [DEEPSLEEP, 4]  # machine.TIMER_WAKE


def test_deepsleep_sleeps(sim: Sim) -> None:
    took = sim.reboot("import machine; machine.deepsleep(500)")
    assert took >= 0.5


# -- heap, pins, clock ------------------------------------------------------------


def test_heap_budget(booted: Sim) -> None:
    sim = booted
    # The firmware gets the board's budget, scaled by the word-size factor (the
    # VM is 64-bit, the boards 32-bit: supervisor.WORD_SIZE_FACTOR): the
    # supervisor adds what the console and shims hold (C code in flash on a
    # board), and not much more.
    heap = int(sim.board.heap_bytes * heap_factor())
    free, fits, big, over = sim.run(
        "import gc\ngc.collect()\nprint(gc.mem_free())\n"
        "def fails(n):\n"
        "    try:\n"
        "        bytearray(n)\n"
        "        return False\n"
        "    except MemoryError:\n"
        "        return True\n"
        f"print(not fails({heap // 2}))\nprint(fails(300000))\nprint(fails({heap + 8192}))"
    )
    assert 0.9 * heap <= free <= heap + 4096
    assert fits and big and over


def test_pins(sim: Sim) -> None:
    board = sim.board
    led = json.dumps(board.pins.led)
    got = sim.run(
        "import machine\n"
        f"p = machine.Pin({led}, machine.Pin.OUT)\n"
        "p.on(); a = p.value(); p.off(); b = p.value(); p.toggle(); c = p()\n"
        "i = machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)\n"
        "print([a, b, c, i.value()])"
    )[0]
    assert got == [1, 0, 1, 1]
    err = sim.error(f"import machine\nmachine.Pin({board.pins.gpio_count})")
    assert "ValueError" in err
    named = sim.run(
        "import machine\ntry:\n    machine.Pin('LED')\n    print(1)\n"
        "except ValueError:\n    print(0)"
    )
    assert named == [1 if "LED" in board.pins.named else 0]
    # ADC on a pin that has one: a 16-bit reading, read_uv() the same in microvolts.
    adc_pin = board.pins.adc[0]
    raw, uv = sim.run(
        f"import machine\na = machine.ADC(machine.Pin({adc_pin}))\n"
        "print([a.read_u16(), a.read_uv()])"
    )[0]
    assert 0 < raw < 65535 and abs(uv - raw * 3_300_000 / 65535) < 100
    no_adc = next(p for p in range(board.pins.gpio_count) if p not in board.pins.adc)
    assert "ValueError" in sim.error(f"import machine\nmachine.ADC(machine.Pin({no_adc}))")


def test_rtc(sim: Sim) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    got = sim.run("import machine\nprint(list(machine.RTC().datetime()))")[0]
    board_now = dt.datetime(got[0], got[1], got[2], got[4], got[5], got[6], tzinfo=dt.timezone.utc)
    assert abs((board_now - now).total_seconds()) < 5
    assert got[3] == board_now.weekday()
    got = sim.run(
        "import machine\nr = machine.RTC()\nr.datetime((2031, 3, 4, 0, 5, 6, 7, 0))\n"
        "print(list(r.datetime()))"
    )[0]
    assert got[:3] == [2031, 3, 4] and got[3] == dt.date(2031, 3, 4).weekday()
    assert got[4:6] == [5, 6] and got[6] in (7, 8)
