"""The attestation loop on a provisioned virtual board without network: the
serial fallback. ESP32 (96 KB heap) everywhere, the Pico for the main path too.

The board's flash gets what provisioning writes (an identity made by the device
code, config.json, board.json); it boots main.py into the loop, which prints one
framed task per interval on the console. The host reads the frames from the
pty, checks each signature with coincurve, and acknowledges through the agent
(after Ctrl-C took the console), which empties the outbox.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boardsetup import PROJECT, provision, task_signers
from ioconnect_host import agent
from ioconnect_host.boards import load_board
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard


class Console:
    """The board's serial port, read as the host relay reads it."""

    def __init__(self, vb: VirtualBoard) -> None:
        self.vb = vb
        self.t = SerialTransport(vb.port)
        self.seen = b""

    def events(self, kind: str, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Read until ``count`` new events of ``kind`` arrived; returns them."""
        start = len(agent.parse_events(self.seen))
        deadline = time.monotonic() + timeout_s
        while True:
            got = [e for e in agent.parse_events(self.seen)[start:] if e["event"] == kind]
            if len(got) >= count:
                return got
            assert time.monotonic() < deadline, (
                f"{count} {kind!r} events expected; console: {self.seen[-800:]!r}"
            )
            self.seen += self.t._serial.read(4096)

    def tasks(self, count: int, exclude: set[int] | None = None) -> list[dict[str, Any]]:
        """The first ``count`` distinct tasks read from now on whose nonce is not in
        ``exclude`` (unacknowledged messages are re-sent, so nonces repeat)."""
        self.seen = b""
        skip = set(exclude or ())
        deadline = time.monotonic() + 60.0
        while True:
            out: dict[int, dict[str, Any]] = {}
            for e in agent.parse_events(self.seen):
                if e["event"] == "task" and e["nonce"] not in skip:
                    out.setdefault(e["nonce"], e)
            if len(out) >= count:
                return [out[n] for n in sorted(out)][:count]
            assert time.monotonic() < deadline, (
                f"{count} new tasks expected; console: {self.seen[-800:]!r}"
            )
            self.seen += self.t._serial.read(4096)

    def close(self) -> None:
        self.t.close()


@pytest.fixture
def board(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[VirtualBoard, Console, str]]:
    """A provisioned board (``esp32`` unless parametrized) running its loop."""
    name = getattr(request, "param", "esp32")
    state = tmp_path / name
    address = provision(state / "flash", name)
    vb = start_board(name, name=f"app-{tmp_path.name}"[:30], state_dir=state)
    con = Console(vb)
    try:
        yield vb, con, address
    finally:
        con.close()
        vb.stop()


@pytest.mark.parametrize("board", ["esp32", "rpi-pico"], indirect=True)
def test_loop_emits_signed_tasks_and_acks_empty_the_outbox(
    board: tuple[VirtualBoard, Console, str],
) -> None:
    _vb, con, address = board
    tasks = con.tasks(3)
    nonces = [e["nonce"] for e in tasks]
    assert nonces[0] >= 1 and nonces == sorted(nonces)
    for e in tasks:
        body = json.loads(e["body"])
        assert body["nonce"] == e["nonce"] and body["projectID"] == PROJECT
        assert address in task_signers(e["body"])
        payload = body["payload"]
        assert set(payload) == {"timestamp", "temperature", "adc", "climate"}
        assert abs(payload["timestamp"] - time.time()) < 30
        assert 10 <= payload["climate"]["temp_c"] <= 35 and 0 <= payload["climate"]["rh"] <= 100
        spec = load_board(_vb.config.board["name"])  # type: ignore[arg-type]
        chip = spec.sensors[0]
        margin = chip.swing_c + 2  # ESP32: whole degrees Fahrenheit; rp2: 12-bit ADC
        assert abs(payload["temperature"]["temp_c"] - chip.mean_c) <= margin
        assert sorted(payload["adc"]) == sorted(str(p) for p in spec.pins.adc)
    # Unacknowledged messages are sent again (oldest first) with later ones,
    # byte for byte.
    con.seen = b""
    resent = con.events("task", 2)
    assert resent[0]["nonce"] == nonces[0] and resent[0]["body"] == tasks[0]["body"]

    # Ctrl-C gives the host the REPL; the agent acknowledges what it read.
    # At 96 KB the agent wants the fresh heap of a soft reset (main.py does not
    # run then), as mpremote takes one by default; the Pico's heap has room
    # for the agent beside what the loop left.
    t = con.t
    t.enter_raw_repl(soft_reset=_vb.config.board["name"] == "esp32")
    assert agent.info(t)["identity"]["state"] == "ok"
    seen = sorted({e["nonce"] for e in agent.parse_events(con.seen) if e["event"] == "task"})
    left = None
    for n in seen:
        out = agent.ack(t, n, "accepted", task_id="0x" + "ab" * 32)
        assert out["nonce"] == n and out["removed"] is True
        left = out["pending"]
    assert left is not None
    again = agent.ack(t, seen[0], "rejected", reason="duplicate")
    assert again["removed"] is False
    assert again["pending"] == left
    # Whatever the loop queued after the host's last read is still there.
    listing = t.exec(
        "import os\nprint(sorted(int(n) for n in os.listdir('outbox') if n.isdigit()))"
    )
    pending = json.loads(listing)
    assert len(pending) == left and all(n > seen[-1] for n in pending)
    for n in pending:
        agent.ack(t, n, "accepted")
    assert json.loads(t.exec("import os\nprint(len(os.listdir('outbox')))")) == 0
    with pytest.raises(agent.AgentError) as err:
        agent.ack(t, 1, "maybe")  # type: ignore[arg-type]
    assert err.value.code == "bad_request"


def test_sensor_fault_is_a_field_and_the_loop_goes_on(
    board: tuple[VirtualBoard, Console, str],
) -> None:
    vb, con, address = board
    first = con.tasks(1)[0]
    vb.set_fault(sensors={"climate": "fail", "temperature": "fail"})
    failed = con.tasks(2, exclude={first["nonce"]})[-1]  # past one signed before the fault
    payload = json.loads(failed["body"])["payload"]
    assert payload["climate"] == {"error": "eio"}
    assert payload["temperature"] == {"error": "eio"}
    assert address in task_signers(failed["body"])
    vb.set_fault(sensors={})
    healed = con.tasks(2, exclude=set(range(failed["nonce"] + 1)))[-1]
    assert "temp_c" in json.loads(healed["body"])["payload"]["climate"]
    assert healed["nonce"] > failed["nonce"]


def test_power_cuts_never_reuse_a_nonce(board: tuple[VirtualBoard, Console, str]) -> None:
    vb, con, _address = board
    before = {e["nonce"]: e["body"] for e in con.tasks(2)}
    for _ in range(3):
        vb.power_cut()
        fresh = con.tasks(1, exclude=set(before))[0]
        assert fresh["nonce"] > max(before)  # never a nonce used before the cut
        for e in agent.parse_events(con.seen):  # queued before the cut: resent unchanged
            if e["event"] == "task" and e["nonce"] in before:
                assert e["body"] == before[e["nonce"]]
        before[fresh["nonce"]] = fresh["body"]


def test_ctrl_c_stops_the_loop_into_the_repl(board: tuple[VirtualBoard, Console, str]) -> None:
    vb, con, address = board
    con.tasks(1)
    boots = vb.boots
    t = con.t
    t.enter_raw_repl()  # Ctrl-C: the loop stops, the REPL answers
    assert t.exec("print(6 * 7)").strip() == b"42"
    time.sleep(2.5)  # two intervals: the loop is not running behind the REPL
    assert t.exec("import gc\nprint(1)").strip() == b"1"
    assert vb.boots == boots
    # The agent, on a fresh heap (soft reset into the raw REPL: no main.py).
    t.enter_raw_repl(soft_reset=True)
    assert agent.info(t)["identity"]["state"] == "ok"
    listing = json.loads(
        t.exec("import os\nprint(sorted(int(n) for n in os.listdir('outbox') if n.isdigit()))")
    )
    assert listing and agent.ack(t, listing[0], "accepted")["removed"] is True
    assert address.startswith("0x")


def test_nonce_store_fault_stops_signing_not_the_board(
    board: tuple[VirtualBoard, Console, str],
) -> None:
    vb, con, address = board
    before = con.tasks(1)[0]
    boots = vb.boots
    vb.set_fault(flash="eio")
    vb.power_cut()  # the new boot can neither reserve nonces nor open its outbox
    con.seen = b""
    halted = con.events("halted", 2)
    assert all("errno 5" in e["reason"] or "EIO" in e["reason"] for e in halted), halted
    assert "task" not in [e["event"] for e in agent.parse_events(con.seen)]  # nothing signed
    assert vb.boots == boots + 1  # reported and waiting: no reboot loop
    vb.set_fault(flash=None)
    after = con.tasks(1, exclude=set(range(before["nonce"] + 1)))[0]  # the storage is back
    assert after["nonce"] > before["nonce"] and address in task_signers(after["body"])
    assert vb.boots == boots + 1


@pytest.fixture
def configured(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[VirtualBoard, Console, str]]:
    """An esp32 provisioned with extra settings (``request.param``)."""
    state = tmp_path / "esp32"
    address = provision(state / "flash", "esp32", request.param)
    vb = start_board("esp32", name=f"cfg-{tmp_path.name}"[:30], state_dir=state)
    con = Console(vb)
    try:
        yield vb, con, address
    finally:
        con.close()
        vb.stop()


@pytest.mark.parametrize("configured", [{"watchdog_s": 1, "sample.interval_s": 3}], indirect=True)
def test_watchdog_is_fed_through_long_intervals(
    configured: tuple[VirtualBoard, Console, str],
) -> None:
    vb, con, _address = configured
    first = con.tasks(1)[0]
    boots = vb.boots
    # Three 3 s intervals with a 1 s watchdog: fed while waiting, no reset.
    later = con.tasks(3, exclude=set(range(first["nonce"] + 1)))
    assert vb.boots == boots
    assert [e["nonce"] for e in later] == list(range(first["nonce"] + 1, first["nonce"] + 4))


@pytest.mark.parametrize("configured", [{"sample.deep_sleep": 1}], indirect=True)
def test_deep_sleep_between_readings_keeps_nonces_and_outbox(
    configured: tuple[VirtualBoard, Console, str],
) -> None:
    vb, con, address = configured
    boots = vb.boots
    seen: dict[int, str] = {}
    for _ in range(3):  # each reading is followed by a deep sleep (a reboot)
        fresh = con.tasks(1, exclude=set(seen))[0]
        assert not seen or fresh["nonce"] > max(seen)
        assert address in task_signers(fresh["body"])
        for e in agent.parse_events(con.seen):  # queued before the sleep: resent as it was
            if e["event"] == "task" and e["nonce"] in seen:
                assert e["body"] == seen[e["nonce"]]
        seen[fresh["nonce"]] = fresh["body"]
    assert vb.boots >= boots + 2


def test_acks_while_the_loop_runs(board: tuple[VirtualBoard, Console, str]) -> None:
    vb, con, _address = board
    boots = vb.boots
    first = con.tasks(2)
    port = con.t._serial
    seen = bytearray()
    for e in first:
        out = agent.ack_inline(port, e["nonce"], "accepted", task_id="0x01", seen=seen)
        assert out["nonce"] == e["nonce"] and out["removed"] is True
    again = agent.ack_inline(port, first[0]["nonce"], "rejected", seen=seen)
    assert again["removed"] is False
    with pytest.raises(agent.AgentError) as err:
        agent.ack_inline(port, 5, "maybe", seen=seen)  # type: ignore[arg-type]
    assert err.value.code == "bad_request"
    # The loop never stopped: new readings follow, and acked ones are not resent.
    acked = {e["nonce"] for e in first}
    later = con.tasks(2, exclude=acked | set(range(max(acked) + 1)))
    assert later[0]["nonce"] > max(acked)
    resent = {e["nonce"] for e in agent.parse_events(con.seen) if e["event"] == "task"}
    assert not resent & acked
    assert vb.boots == boots
