"""A virtual board's console moves bytes no faster than its board's wire.

The bounds asserted are lower bounds (bytes / wire rate): a loaded machine only
makes a transfer slower, so they cannot fail by load; a pty with no limit moves
these bytes in a few milliseconds, so they fail when the limit is gone.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import serial
from ioconnect_host.boards import USB_FULL_SPEED_BULK_BYTES_PER_S, BoardError, load_board
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board


def test_board_files_name_their_wire() -> None:
    assert load_board("esp32").console.bytes_per_s == 11_520  # 115200 baud, 8N1
    for name in ("esp32-s3", "esp32-c3", "rpi-pico", "rpi-pico-w"):
        assert load_board(name).console.bytes_per_s == USB_FULL_SPEED_BULK_BYTES_PER_S


def test_a_bad_console_table_is_named(tmp_path: Path) -> None:
    text = (Path(load_board("esp32").source)).read_text()
    bad = tmp_path / "esp32.toml"
    bad.write_text(text.replace('link = "uart"', 'link = "rs485"'))
    with pytest.raises(BoardError, match=r"console\.link"):
        load_board(bad)


def _send_and_echo(port: str, payload_len: int, chunks: int) -> tuple[float, float, bytes]:
    """Seconds to send ``payload_len`` bytes of code to the board, and to read back
    ``chunks`` lines of 10,000 bytes; and the last line read."""
    with SerialTransport(port, byte_timeout_s=30) as tr:
        tr.enter_raw_repl()
        t0 = time.monotonic()
        got = tr.exec(b"x=" + repr(b"a" * payload_len).encode() + b"\nprint(len(x))")
        sent_s = time.monotonic() - t0
        assert got.strip() == str(payload_len).encode()
        t0 = time.monotonic()
        out = tr.exec(f"for i in range({chunks}): print(str(i) * 10000)", timeout_s=60)
        read_s = time.monotonic() - t0
    lines = out.split(b"\r\n")
    assert [len(line) for line in lines[:-1]] == [10000 * len(str(i)) for i in range(chunks)]
    return sent_s, read_s, lines[-2]


def test_esp32_devkit_line_is_115200_baud(tmp_path: Path) -> None:
    with start_board("esp32", name="wire-esp32", state_dir=tmp_path, fast=False) as vb:
        sent_s, read_s, last = _send_and_echo(vb.port, 11_520, 3)
    assert last == b"2" * 10000  # nothing dropped while the VM waited for the wire
    assert sent_s >= 11_520 / 11_520 * 0.95  # 1 s of wire, whatever the host's speed
    assert read_s >= 30_006 / 11_520 * 0.95


def test_native_usb_line_is_full_speed(tmp_path: Path) -> None:
    with start_board("esp32-s3", name="wire-s3", state_dir=tmp_path, fast=False) as vb:
        _, read_s, _ = _send_and_echo(vb.port, 1000, 70)
    assert read_s >= 700_000 / USB_FULL_SPEED_BULK_BYTES_PER_S * 0.95


def _read_until(port: serial.Serial, end: bytes, timeout_s: float, pause_s: float = 0.0) -> bytes:
    """Read until ``end``, ``pause_s`` between reads of at most 4 KiB (a slow host)."""
    buf = b""
    deadline = time.monotonic() + timeout_s
    while not buf.endswith(end):
        assert time.monotonic() < deadline, buf[-300:]
        buf += port.read(4096)
        time.sleep(pause_s)
    return buf


PRINT_300K = b"for i in range(30): print(str(i % 10) * 10000)\r\r"


def test_native_usb_output_waits_for_a_slow_host_not_for_an_absent_one(tmp_path: Path) -> None:
    # USB CDC has flow control: a host that reads, however slowly, gets every byte
    # (the board's print waits). One that stopped reading is not waited for: the
    # oldest output is dropped after the CDC timeout, and the board goes on.
    with start_board("esp32-s3", name="usb-flow", state_dir=tmp_path) as vb:
        log = vb.config.state_dir / "console.log"
        with serial.Serial(vb.port, timeout=0.05) as port:
            port.write(b"\r\x03\x03\x02")  # the friendly REPL
            _read_until(port, b">>> ", 60)
            port.write(PRINT_300K)
            # About 400 KB/s at most: far slower than the VM prints (or the USB wire).
            got = _read_until(port, b"9" * 10000 + b"\r\n>>> ", 120, pause_s=0.01)
            lines = [x for x in got.split(b"\r\n") if len(x) == 10000]
            assert lines == [str(i % 10).encode() * 10000 for i in range(30)]
            assert b"not reading" not in log.read_bytes()

            port.write(PRINT_300K)  # and now nobody reads
            deadline = time.monotonic() + 60
            while b"the host is not reading" not in log.read_bytes():
                assert time.monotonic() < deadline, "the board waited for an absent host"
                time.sleep(0.05)
            _read_until(port, b"9" * 10000 + b"\r\n>>> ", 60)
    assert b"bytes dropped" in log.read_bytes()
