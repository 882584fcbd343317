"""``ioconnect monitor``, ``repl`` and ``reset`` against virtual boards over their
real pty, the commands run as a user runs them (a subprocess, Ctrl-C as SIGINT,
stdin a pipe or a terminal). The monitor must show a forged frame, printed by the
board among the genuine ones, as failing verification.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import coincurve
import pytest
from boardsetup import PROJECT, k256, provision
from ioconnect_host.cli import main
from ioconnect_host.console import ConsoleSplitter
from ioconnect_host.frames import encode_frame
from ioconnect_host.identity import show_identity
from ioconnect_host.inventory import Device, Inventory
from ioconnect_host.monitor import FrameChecker
from ioconnect_host.signer import claim_from
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard

CLI = [sys.executable, "-m", "ioconnect_host.cli"]


# -- the console splitter --------------------------------------------------------


def split(chunks: list[bytes]) -> list[tuple[str, Any]]:
    s = ConsoleSplitter()
    out = [piece for chunk in chunks for piece in s.feed(chunk)]
    return out + list(s.flush())


def test_splitter_text_and_frames_in_order() -> None:
    frame = encode_frame({"event": "task", "nonce": 3}).replace(b"\n", b"\r\n")
    stream = b"boot\r\n>>> " + frame + b"after\r\n"
    expect = [
        ("text", b"boot\r\n>>> "),
        ("frame", {"event": "task", "nonce": 3}),
        ("text", b"after\r\n"),
    ]
    assert split([stream]) == expect
    # Cut anywhere, the same pieces (text may come in more parts).
    for cut in range(1, len(stream)):
        pieces = split([stream[:cut], stream[cut:]])
        assert [p for p in pieces if p[0] == "frame"] == [expect[1]], cut
        assert b"".join(p[1] for p in pieces if p[0] == "text") == b"boot\r\n>>> after\r\n", cut


def test_splitter_damaged_and_stray_separators() -> None:
    frame = bytearray(encode_frame({"a": 1}))
    frame[-3] ^= 1  # body changed, CRC kept
    assert split([b"x" + bytes(frame) + b"y"]) == [
        ("text", b"x"),
        ("damaged", bytes(frame[:-1])),
        ("text", b"y"),
    ]
    # A record separator that starts no frame is text; a prompt is not held back.
    assert split([b"a\x1eb\nc"]) == [("text", b"a"), ("text", b"\x1e"), ("text", b"b\nc")]
    s = ConsoleSplitter()
    assert list(s.feed(b">>> ")) == [("text", b">>> ")]
    assert list(s.feed(b"\x1eIOC1 12")) == []  # may be a frame: held


# -- on a virtual board ----------------------------------------------------------


@pytest.fixture
def looping(tmp_path: Path) -> Iterator[tuple[VirtualBoard, str]]:
    """A provisioned ESP32 running its attestation loop (serial fallback)."""
    address = provision(tmp_path / "flash", "esp32")
    vb = start_board("esp32", name=f"mon-{tmp_path.name}"[:30], state_dir=tmp_path)
    try:
        yield vb, address
    finally:
        vb.stop()


class Lines:
    """A subprocess's stdout read line by line with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.seen: list[Any] = []
        assert proc.stdout is not None
        self.out: IO[bytes] = proc.stdout
        os.set_blocking(self.out.fileno(), False)
        self._buf = b""

    def until(self, want: Any, timeout_s: float = 60.0) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while not want(self.seen):
            assert time.monotonic() < deadline, f"not seen in time: {self.seen[-10:]}"
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.seen[-10:]}"
            chunk = self.out.read(65536)
            if not chunk:
                time.sleep(0.05)
                continue
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            self.seen += [json.loads(line) for line in lines if line.strip()]
        return self.seen


def frames(seen: list[Any]) -> list[Any]:
    return [e for e in seen if e["type"] == "frame" and e["frame"].get("event") == "task"]


def interrupt(proc: subprocess.Popen[bytes]) -> tuple[int, str, list[Any]]:
    """Ctrl-C; the exit status, stderr and the remaining JSON lines."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    rest = [json.loads(line) for line in out.split(b"\n") if line.strip()]
    return proc.returncode, err.decode(), rest


def forged_task(nonce: int) -> dict[str, Any]:
    """A task request signed by a key that is not the device's."""
    key = coincurve.PrivateKey()
    signed = b'{"nonce":%d,"projectID":"%s","payload":{"temp_c":99}}' % (nonce, PROJECT.encode())
    sig = key.sign_recoverable(hashlib.sha256(signed).digest(), hasher=None)[:64]
    body = signed[:-1] + b',"signature":"0x' + sig.hex().encode() + b'"}'
    return {"event": "task", "nonce": nonce, "body": body.decode()}


def test_monitor_checks_frames_and_shows_a_forged_one(looping: tuple[VirtualBoard, str]) -> None:
    vb, address = looping
    # 1. Identity given: genuine frames all verify; Ctrl-C ends cleanly with 0.
    proc = subprocess.Popen(
        [*CLI, "monitor", "-p", f"sim:{vb.config.name}", "--address", address, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    Lines(proc).until(lambda seen: len(frames(seen)) >= 2)
    code, err, rest = interrupt(proc)
    assert code == 0, err
    assert "Traceback" not in err
    [summary] = [e for e in rest if e["type"] == "summary"]
    assert summary["invalid"] == 0 and summary["frames"] >= 2

    # 2. The board prints a forged task (another key) and a damaged frame at
    #    every boot; the monitor asks the board who it is, which restarts it.
    forged = forged_task(7777)
    damaged = bytearray(encode_frame(forged_task(7778)))
    damaged[40] ^= 1
    inject = encode_frame(forged).decode() + damaged.decode()
    with (vb.config.flash_dir / "boot.py").open("a") as f:
        f.write(f"\nimport sys\nsys.stdout.write({inject!r})\n")
    proc = subprocess.Popen(
        [*CLI, "monitor", "-p", f"sim:{vb.config.name}", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    lines = Lines(proc)
    seen = lines.until(lambda seen: len([f for f in frames(seen) if f["verdict"]["valid"]]) >= 2)
    [bad] = [f for f in frames(seen) if f["frame"]["nonce"] == 7777]
    assert bad["verdict"]["valid"] is False
    assert bad["verdict"]["reason"].startswith(f"its W3bstream task: not signed by {address}")
    good = [f for f in frames(seen) if f["verdict"]["valid"]]
    assert all(f["verdict"]["signer"] == address and f["verdict"]["signer_checked"] for f in good)
    assert [e for e in seen if e["type"] == "damaged"]
    assert any(e["type"] == "text" and "ioconnect attesting" in e["text"] for e in seen)
    code, err, rest = interrupt(proc)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("ioconnect: invalid: 1 frame(s) failed")
    [summary] = [e for e in rest if e["type"] == "summary"]
    assert summary["device"] == f"did:io:{address}" and summary["damaged"] == 1


def test_monitor_shows_the_restart_from_its_first_byte(
    looping: tuple[VirtualBoard, str],
) -> None:
    # Asked who it is, the board is restarted by the monitor: what it prints from
    # then on is shown whole, from the restart's first line on.
    vb, _address = looping
    run = subprocess.run(
        [*CLI, "monitor", "-p", f"sim:{vb.config.name}", "--frames", "1"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.decode().splitlines()
    # The prompt's line ends as Ctrl-D is taken, then the restart, whole.
    assert lines[:3] == ["", "MPY: soft reboot", "ioconnect attesting (Ctrl-C for the REPL)"], (
        lines[:4]
    )


def test_monitor_text_mode_and_frame_limit(looping: tuple[VirtualBoard, str]) -> None:
    vb, address = looping
    port = f"sim:{vb.config.name}"
    run = subprocess.run(
        [*CLI, "monitor", "-p", port, "--did", f"did:io:{address}", "--frames", "2"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = run.stdout.decode()
    assert out.count(f"valid, signed by {address}") + out.count("[started]") == 2
    assert "monitor: 2 frames, 2 valid, 0 failed" in run.stderr.decode()
    # A claimed identity the frames do not come from: every task fails.
    other = "0x" + "ab" * 20
    run = subprocess.run(
        [*CLI, "monitor", "-p", f"sim:{vb.config.name}", "--address", other, "--frames", "3"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert f"FAILED verification: its W3bstream task: not signed by {other}" in run.stdout.decode()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualBoard]:
    """A virtual Pico with firmware but no identity: it sits in the REPL."""
    vb = start_board(
        "rpi-pico", name=f"repl-{os.getpid()}", state_dir=tmp_path_factory.mktemp("repl")
    )
    try:
        yield vb
    finally:
        vb.stop()


def test_reset_soft_and_hard(idle: VirtualBoard, capsys: pytest.CaptureFixture[str]) -> None:
    for hard in (False, True):
        boots = idle.boots
        assert (
            main(
                ["reset", "-p", f"sim:{idle.config.name}", "--json", *(["--hard"] if hard else [])]
            )
            == 0
        )
        result = json.loads(capsys.readouterr().out)
        assert result["hard"] is hard and result["port"] == idle.port
        assert result["said"].startswith("ioconnect 0.1.0 identity: none")  # main.py ran again
        assert idle.boots == boots + 1  # a new VM: the board really restarted
    assert main(["reset", "-p", "/dev/ioconnect-absent"]) == 1
    assert "no such serial port" in capsys.readouterr().err


def test_repl_from_a_pipe(idle: VirtualBoard) -> None:
    run = subprocess.run(
        [*CLI, "repl", "-p", f"sim:{idle.config.name}"],
        input=b"\x03print(6*7)\r", capture_output=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert b"\r\n42\r\n" in run.stdout
    assert b"Ctrl-] quits" in run.stderr


def test_repl_on_a_terminal_raw_then_restored(idle: VirtualBoard) -> None:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [*CLI, "repl", "-p", f"sim:{idle.config.name}"],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out = b""
        deadline = time.monotonic() + 60
        assert proc.stderr is not None and proc.stdout is not None
        assert b"Ctrl-] quits" in proc.stderr.readline()  # connected, the terminal raw
        os.set_blocking(proc.stdout.fileno(), False)
        os.write(master, b"\x03print(6*7)\r")  # raw: Ctrl-C and \r reach the board as typed
        while b"\r\n42\r\n" not in out:
            assert time.monotonic() < deadline, out
            out += proc.stdout.read(4096) or b""
            time.sleep(0.05)
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # raw while connected
        os.write(master, b"\x1d")  # Ctrl-]
        assert proc.wait(timeout=30) == 0
        assert termios.tcgetattr(slave) == before  # the terminal is given back as it was
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_monitor_identity_from_the_inventory(
    looping: tuple[VirtualBoard, str], tmp_path: Path
) -> None:
    vb, address = looping
    ident = show_identity(vb.config.flash_dir)  # read by the device code, as provisioning does
    inv = tmp_path / "inventory.sqlite3"

    def record(public_key: str) -> None:
        Inventory(inv).record(Device(
            did=f"did:io:{address}", address=address, public_key=public_key, curve="secp256k1",
            board="esp32", usb_serial=None, firmware="0.1.0", project_id=PROJECT,
            project_version=None, provisioned_at="2026-01-01T00:00:00Z",
            updated_at="2026-01-01T00:00:00Z",
        ))  # fmt: skip

    port = f"sim:{vb.config.name}"
    absent = subprocess.run(
        [*CLI, "monitor", "-p", port, "--inventory", str(inv)], capture_output=True, timeout=120
    )
    assert absent.returncode == 1 and b"no inventory at" in absent.stderr
    assert ident.public_key is not None
    record(ident.public_key)
    run = subprocess.run(
        [*CLI, "monitor", "-p", port, "--inventory", str(inv), "--frames", "2"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert b"(from the board, as recorded in the inventory)" in run.stderr
    # The inventory knows this DID with another key: the board is not who it says.
    other = coincurve.PrivateKey().public_key.format(compressed=False).hex()
    record(other)
    run = subprocess.run(
        [*CLI, "monitor", "-p", port, "--inventory", str(inv), "--frames", "2"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.decode().strip().endswith("are different keys")


def test_frame_checker_nonces() -> None:
    key = coincurve.PrivateKey()
    address = "0x" + k256(key.public_key.format(compressed=False)[1:])[12:].hex()
    checker = FrameChecker(claim_from(address=address))

    def task(nonce: int, payload: str) -> dict[str, Any]:
        signed = b'{"nonce":%d,"projectID":"1","payload":%s}' % (nonce, payload.encode())
        sig = key.sign_recoverable(hashlib.sha256(signed).digest(), hasher=None)[:64]
        body = signed[:-1] + b',"signature":"0x' + sig.hex().encode() + b'"}'
        return {"event": "task", "nonce": nonce, "body": body.decode()}

    first = task(5, '{"t":1}')
    assert checker.check(first).valid
    assert checker.check(dict(first)).valid  # resent unchanged: fine
    again = checker.check(task(5, '{"t":2}'))  # same nonce, another reading
    assert (
        not again.valid and again.reason == "nonce 5 came before with another body (replayed nonce)"
    )
    assert checker.check({"event": "signed", "nonce": 8}).valid
    late = checker.check({"event": "signed", "nonce": 7})
    assert not late.valid and late.reason == "nonce 7 after 8: replayed or reordered"
    broken = checker.check({"event": "task", "nonce": 9})
    assert not broken.valid and "needs 'nonce' (integer) and 'body'" in broken.reason
    assert checker.check({"event": "started", "interval_s": 1}).valid
    assert not checker.check([1, 2]).valid


def test_monitor_finds_the_board_again(looping: tuple[VirtualBoard, str], tmp_path: Path) -> None:
    vb, address = looping
    proc = subprocess.Popen(
        [*CLI, "monitor", "-p", f"sim:{vb.config.name}", "--address", address, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    lines = Lines(proc)
    before = len(frames(lines.until(lambda seen: len(frames(seen)) >= 1)))
    old_port = vb.port
    vb.stop()  # the port goes away, as a USB board's does when it resets
    again = start_board("esp32", name=vb.config.name, state_dir=tmp_path)
    try:
        seen = lines.until(lambda seen: len(frames(seen)) >= before + 2)
        notes = [e["text"] for e in seen if e["type"] == "notice"]
        assert notes[0].startswith(f"lost {old_port}")
        assert notes[-1] == f"found the board again on {again.port}"
        assert all(f["verdict"]["valid"] for f in frames(seen))
        code, err, _rest = interrupt(proc)
        assert code == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        again.stop()
