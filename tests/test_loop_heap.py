"""The whole attestation loop over MQTT (app.Loop + deliver + mqtt + outbox +
nonce + attest + sensors) on virtual boards at their own heap: ESP32 (96 KB) and
ESP32-C3 (128 KB), against a real mosquitto and a relay-side acker.

Every reading must arrive, in nonce order, signed by the device (recovered on
the host with coincurve), with no MemoryError, and the free heap after the
loop's collection must not trend down (the lowest over the last cycles is
compared with the lowest over early cycles). The agent must still serve host
commands on a board whose loop has run, at 96 KB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import coincurve
import pytest
from boardsetup import k256, provision, task_signers
from brokers import Acker, Broker
from ioconnect_host import agent
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from loopheap import loop_settings, run_loop

CYCLES = 150
WINDOW = 40  # cycles per window: the first one skipped (warm-up), then compared with the last
# Allowed drop of the windows' lowest free heap (measured on a flat loop: 0).
# The windows' lows are 70 readings or more apart: a leak of one small object
# per reading (one 32-byte block of this VM's heap) loses over 2 KB; a
# bytearray(8) kept per cycle in Loop.cycle failed this with 5.5 KB.
DRIFT = 512


@pytest.mark.parametrize("board", ["esp32", "esp32-c3"])
def test_mqtt_loop_runs_flat_at_the_board_heap(board: str, broker: Broker, tmp_path: Path) -> None:
    run = run_loop(board, broker, tmp_path, cycles=CYCLES, every=50, window=WINDOW, timeout_s=900)
    dev = run.device
    errors = [e for e in run.events if e.get("event") in ("error", "halted")]
    assert not errors, f"the loop reported: {errors[:3]}"
    assert dev["cycles"] == CYCLES
    assert dev["stuck"] == 0 and dev["pending"] == 0, dev["stats"]
    nonces = [json.loads(body)["nonce"] for body in run.received]
    assert list(dict.fromkeys(nonces)) == list(range(1, CYCLES + 1))  # all, in order
    for body in run.received:
        assert run.address.lower() in task_signers(body), body
    assert dev["low_last"] >= dev["low_first"] - DRIFT, (
        f"free heap fell from {dev['low_first']} (cycles {WINDOW}..{2 * WINDOW - 1}) "
        f"to {dev['low_last']} (last {WINDOW}); every 50: {dev['per_interval']}"
    )


def _wait(cond: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.xfail(
    strict=False,
    reason="known defect, issue 8 left open: in 2 of 3 full-suite runs (never alone, 14 "
    "runs) the agent's first request after the loop answers no_memory at 96 KB; cause not "
    "found (not the Ctrl-C in main.py's cleanup: the console log shows the loop stopped "
    "cleanly)",
)
def test_agent_serves_a_board_whose_mqtt_loop_runs_at_96k(broker: Broker, tmp_path: Path) -> None:
    # The loop starts from main.py at boot; a host's Ctrl-C takes the console
    # (as every host command does) and the agent answers on the heap the loop
    # leaves; after a reset the loop goes on with the next nonces.
    settings = {"wifi.ssid": "lab", "sample.interval_s": 1, **loop_settings(broker, tls=False)}
    address = provision(tmp_path / "flash", "esp32", settings)
    with Acker(broker.port, client_id="loopheap-agent") as acker:

        def arrived() -> list[int]:
            with acker.lock:
                got = list(acker.received)
            return [json.loads(p)["nonce"] for t, p in got if address.lower() in t] or [0]

        vb = start_board("esp32", name="loopheap-agent", state_dir=tmp_path)
        try:
            _wait(lambda: max(arrived()) >= 3, "3 readings from the boot-started loop")
            with SerialTransport(vb.port) as t:
                info = agent.info(t)
                assert info["identity"]["did"].lower() == "did:io:" + address.lower()
                res = agent.sign(t, "eip191", payload="agent after the loop")
                sig = bytes.fromhex(res["signature"])
                msg = b"agent after the loop"
                digest = k256(b"\x19Ethereum Signed Message:\n" + str(len(msg)).encode() + msg)
                pub = coincurve.PublicKey.from_signature_and_message(
                    sig[:64] + bytes([sig[64] - 27]), digest, hasher=None
                )
                assert "0x" + k256(pub.format(False)[1:])[-20:].hex() == address.lower()
            before = max(arrived())
            vb.power_cut()
            _wait(lambda: max(arrived()) >= before + 3, "readings after the restart")
        finally:
            vb.stop()
