"""``ioconnect relay --serial``: a board without a network (a virtual Raspberry Pi
Pico running its own attestation loop on its real pty) gets its signed readings
to the local node through the relay, each exactly once, across a relay SIGKILL.

The relay owns the board's port for its whole run: it reads the loop's task
frames and writes the acks on the same open port (the loop reads them between
readings); the board drops what was acked and sends the rest again.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from boardsetup import PROJECT, provision
from ioconnect_host import agent
from ioconnect_host.frames import FrameReader, encode_frame
from ioconnect_host.node import Node, serve
from ioconnect_host.relay_service import RelayOptions, RelayService
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard
from relayparts import OTHER, approve_device, body


def signed_on_console(state: Path) -> dict[int, str]:
    """Every reading the board's loop printed (console.log keeps all it printed)."""
    out: dict[int, str] = {}
    for name in ("console.log.1", "console.log"):
        path = state / name
        if path.exists():
            for e in agent.parse_events(path.read_bytes()):
                if e["event"] == "task":
                    out.setdefault(e["nonce"], e["body"])
    return out


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def pico(tmp_path: Path) -> Iterator[tuple[VirtualBoard, Path, str]]:
    """A provisioned rpi-pico (no Wi-Fi: the serial fallback) running its loop."""
    state = tmp_path / "pico"
    address = provision(state / "flash", "rpi-pico")
    vb = start_board("rpi-pico", name=f"rs-{tmp_path.name}"[:30], state_dir=state)
    try:
        yield vb, state, address
    finally:
        vb.stop()


def relay_command(tmp: Path, node_port: int, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "ioconnect_host.cli", "relay",
           "--w3bstream", f"http://127.0.0.1:{node_port}", "--store", str(tmp / "relay.db"),
           "--inventory", str(tmp / "none"), *args]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)


def outbox_of(vb: VirtualBoard) -> list[int]:
    with SerialTransport(vb.port) as t:
        t.enter_raw_repl()  # Ctrl-C: the loop stops into the REPL
        listing = t.exec(
            "import os\nprint(sorted(int(n) for n in os.listdir('outbox') if n.isdigit()))"
        )
    pending: list[int] = json.loads(listing)
    return pending


def test_pico_readings_reach_the_node_once_across_a_relay_kill(
    tmp_path: Path, pico: tuple[VirtualBoard, Path, str]
) -> None:
    vb, state, address = pico
    node = Node(tmp_path / "node.db", approved=lambda project, a: a == address)
    server = serve(node)

    def at_node() -> list[int]:
        return [t["nonce"] for t in node.tasks_of(address)]

    relays: list[subprocess.Popen[str]] = []
    try:
        # The inventory's say picks the device among the two recovered signers.
        relays.append(relay_command(tmp_path, server.port, "--serial", vb.port,
                                    "--approve", address))  # fmt: skip
        wait_for("3 readings at the node", lambda: len(at_node()) >= 3)
        relays[0].send_signal(signal.SIGKILL)
        relays[0].wait(20)
        killed_at = max(at_node())
        # The board goes on signing; nothing acks it now.
        wait_for("3 readings signed while no relay ran",
                 lambda: max(signed_on_console(state)) >= killed_at + 3)  # fmt: skip
        # Restarted with no inventory say (approve all): the relay learns the
        # device from two messages' common signer; by name (sim:NAME) this time.
        relays.append(relay_command(tmp_path, server.port, "--serial",
                                    f"sim:{vb.config.name}", "--approve-all"))  # fmt: skip
        target = max(signed_on_console(state))
        wait_for(f"every reading up to {target} at the node",
                 lambda: set(range(1, target + 1)) <= set(at_node()))  # fmt: skip
        relays[1].send_signal(signal.SIGTERM)
        assert relays[1].wait(30) == 0
        stderr = relays[1].stderr.read() if relays[1].stderr else ""
        assert "stopped" in stderr
    finally:
        for proc in relays:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        server.stop()

    nonces = at_node()
    assert nonces == sorted(set(nonces)) == list(range(1, len(nonces) + 1))  # once each, no gap
    signed = signed_on_console(state)
    tasks = {t["nonce"]: t for t in node.tasks_of(address)}
    with sqlite3.connect(tmp_path / "node.db") as db:
        bodies = dict(db.execute("SELECT nonce, body FROM tasks"))
    for n in nonces:  # byte for byte what the board signed
        assert bytes(bodies[n]).decode() == signed[n], n
        assert tasks[n]["projectID"] == PROJECT
    with sqlite3.connect(tmp_path / "relay.db") as db:
        rows = db.execute("SELECT nonce, status FROM messages ORDER BY nonce").fetchall()
    stored = {n for n, _ in rows}
    assert len(rows) == len(stored)  # the relay stored each reading once
    # Nothing lost: every reading the board signed is at the node, in the relay's
    # queue, or still in the board's outbox; what was acked left the outbox.
    pending = set(outbox_of(vb))
    assert set(signed) <= set(nonces) | stored | pending
    assert not pending & set(nonces), (sorted(pending), nonces[-3:])
    node.close()


def test_relay_serial_refuses_probing_port_forms(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from ioconnect_host.cli import main

    common = ["--w3bstream", "http://127.0.0.1:9", "--store", str(tmp_path / "r.db"),
              "--approve-all"]  # fmt: skip
    cases: list[tuple[list[str], str]] = [
        (["relay", *common], "give --broker URL and/or --serial PORT"),
        (["relay", *common, "--serial", "auto"], "would probe boards"),
        (["relay", *common, "--serial", "did:io:0x" + "1" * 40], "would probe boards"),
    ]
    for argv, words in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (argv, err)


class BoardSide:
    """The board's end of a pty, played by the test: prints frames, answers acks."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.port = os.ttyname(slave)
        os.close(slave)  # the relay opens it by name
        self.reader = FrameReader()

    def print_task(self, nonce: int, body: bytes | str) -> None:
        text = body.decode() if isinstance(body, bytes) else body
        os.write(self.master, encode_frame({"event": "task", "nonce": nonce, "body": text}))

    def acks(self, n: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """The next n ack requests the relay wrote, each answered as the loop does."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < n:
            assert time.monotonic() < deadline, f"{len(got)} of {n} acks: {got}"
            if not select.select([self.master], [], [], 0.2)[0]:
                continue
            for req in self.reader.feed(os.read(self.master, 4096)):
                assert req["op"] == "ack" and req["v"] == 1
                got.append(req)
                answer = {"id": req["id"], "ok": True, "result": {"nonce": req["nonce"]}}
                os.write(self.master, encode_frame(answer))
        return got

    def close(self) -> None:
        os.close(self.master)


def test_serial_readings_refused_with_their_reason_and_held_until_the_device_is_known(
    tmp_path: Path,
) -> None:
    side = BoardSide()
    svc = RelayService(
        RelayOptions(broker=None, w3bstream="http://127.0.0.1:9", store=tmp_path / "r.db",
                     serial=(side.port,)),
        approved=approve_device, log=lambda m: None,
    )  # fmt: skip
    svc.start()
    try:
        wait_for("the relay to open the port", lambda: svc.serial.stats()[side.port]["open"])
        side.print_task(7, "not json")
        side.print_task(4, body(3))  # the frame's nonce is not the signed one
        side.print_task(1, body(1))
        assert [(a["nonce"], a["status"], a["reason"]) for a in side.acks(3)] == [
            (7, "rejected", "malformed"),
            (4, "rejected", "nonce_mismatch"),
            (1, "queued", ""),
        ]
        # Signed by a key the inventory does not know: which of the two recovered
        # addresses is the device is only known at its second message; the first
        # is held, then both are judged in nonce order.
        side.print_task(1, body(1, key=OTHER))
        side.print_task(2, body(2, key=OTHER))
        assert [(a["nonce"], a["reason"]) for a in side.acks(2)] == [
            (1, "not_approved"),
            (2, "not_approved"),
        ]
        stats = svc.stats()
        assert stats["serial"][side.port]["unknown_device"] == 1
        assert stats["rejections"]["malformed"] == 1
        assert stats["queued"] == 1  # only the approved device's reading is stored
        wait_for("the answers counted", lambda: svc.serial.stats()[side.port]["acked"] == 5)
    finally:
        svc.stop()
        side.close()
