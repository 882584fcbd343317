"""The demo end to end: real broker (mosquitto and the embedded one), the local node
over HTTP, the relay, virtual boards running the firmware's own attestation loop."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import interrupt_when
from ioconnect_host import w3bstream as w3b
from ioconnect_host.cli import main
from ioconnect_host.demo import DemoOptions, DeviceView, _result, run_demo
from ioconnect_host.node import Node


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_every_signed_reading_is_accepted_once(broker: str, tmp_path: Path) -> None:
    result = run_demo(
        DemoOptions(devices=2, messages=3, broker=broker, workdir=tmp_path, settle_s=30)
    )
    assert result.ok, result.problems
    assert result.totals["devices"] == 2
    assert result.totals["rejected"] == 0
    for view in result.devices:
        # result.ok: every reading signed before the stop was accepted (readings
        # signed while the demo waited for the last ones need not be).
        assert len(view.signed) >= 3 and len(view.accepted) >= 3
    # The node's own store, read independently: each reading once, each signature
    # recovering to the device that the demo provisioned.
    with sqlite3.connect(tmp_path / "node.sqlite3") as db:
        for view in result.devices:
            rows = db.execute("SELECT nonce, body FROM tasks WHERE device=?", (view.address,))
            nonces = []
            for nonce, body in rows:
                task = w3b.parse_task(bytes(body))
                assert view.address in w3b.recover_signers(task)
                nonces.append(nonce)
            # Each once; every reading the demo saw accepted is there. A reading
            # signed after the stop may still reach the node while the demo shuts
            # down (the relay drains what it stored), after the demo's last look.
            assert len(nonces) == len(set(nonces))
            assert set(view.accepted) <= set(nonces)


def test_summary_fails_when_a_signed_reading_is_missing() -> None:
    ok = DeviceView(
        name="a", address="0x" + "1" * 40, signed={1: 1.0, 2: 2.0}, accepted={1: 1.5, 2: 2.5}
    )
    short = DeviceView(
        name="b", address="0x" + "2" * 40, signed={1: 1.0, 2: 2.0, 3: 9.0}, accepted={1: 1.2}
    )
    stats = {"accepted": 3, "rejections": {}, "ingest": {}}
    result = _result([ok, short], stats, stop_at=5.0)
    assert not result.ok
    assert result.problems == ["b: 1 signed readings never accepted: [2]"]  # 3 came after
    assert result.totals["signed"] == 4
    assert result.totals["latency_p50_ms"] is not None


def test_demo_command_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["demo", "--devices", "1", "--messages", "2", "--json", "--workdir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] is True
    assert out["devices"][0]["accepted"] >= 2
    # Each accepted body in the node verifies on its own (parse + recovery).
    node = Node(tmp_path / "node.sqlite3", approved=lambda p, a: True)
    try:
        [dev] = out["devices"]
        for task in node.tasks_of(dev["address"]):
            assert task["payload"] is not None
    finally:
        node.close()


def _accepted_at_node(node_db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{node_db}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM tasks").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def test_ctrl_c_mid_demo_prints_the_counts_so_far_and_exits_130(tmp_path: Path) -> None:
    # A long run, stopped by Ctrl-C (SIGINT, as a terminal sends it) once the node
    # holds two readings: the summary of what was counted, then the interrupt line.
    # (Not at the first: the demo counts a reading signed when the board's console
    # line about it has been read, which may come just after the node has it.)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ioconnect_host.launcher", "demo", "--devices", "1",
         "--duration", "3600", "--broker", "mosquitto", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    out, err = interrupt_when(
        proc,
        lambda: _accepted_at_node(tmp_path / "node.sqlite3") >= 2,
        "two readings at the node",
        300,
        wait=180,
    )
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == "ioconnect: demo interrupted"
    lines = out.splitlines()
    assert lines, f"no summary printed; stderr: {err}"
    counts = re.fullmatch(
        r"1 devices: (\d+) readings signed before the stop, (\d+) relayed \(in all\), "
        r"(\d+) accepted by the node, 0 rejected, \d+ duplicates suppressed",
        lines[0],
    )
    assert counts, out
    signed, relayed, accepted = (int(n) for n in counts.groups())
    assert signed >= 1 and relayed >= 1 and accepted >= 1, out
    assert accepted <= signed
    assert lines[-1].startswith("interrupted: the counts so far")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["demo", "--devices", "0"], "out of range"),
        (["demo", "--duration", "abc"], "not a number of seconds"),
        (["demo", "--messages", "2", "--duration", "5"], "not allowed with"),
        (["demo", "--board", "nosuchboard", "--messages", "1"], "unknown board 'nosuchboard'"),
        (["demo", "--board", "rpi-pico", "--messages", "1"], "has no Wi-Fi"),
    ],
)
def test_demo_bad_input_is_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_demo_faults_still_accepts_every_reading_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Broker restart, node outage, relay SIGKILL and restart, a board's power cut
    # and another's Wi-Fi drop, all in one 30 s run (about a minute in all).
    argv = ["demo", "--faults", "--devices", "2", "--duration", "30", "--json"]
    code = main([*argv, "--workdir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] is True, out["problems"]
    t = out["totals"]
    assert t["signed"] == t["accepted"] > 0 and t["rejected"] == 0
    faults = {f["fault"]: f for f in out["faults"]}
    assert set(faults) == {"broker restart", "node outage", "relay SIGKILL", "power cut",
                           "wifi drop"}  # fmt: skip
    assert all(f["took_effect"] for f in out["faults"])
    # Each one bit: the relay lost the broker, the forwarder retried while the node
    # was down, the relay died by SIGKILL and came back, a board booted again, and
    # readings signed while Wi-Fi was down waited for it.
    assert faults["broker restart"]["relay_saw_broker_go"] is True
    assert faults["node outage"]["forwarder_retries"] > 0
    assert faults["relay SIGKILL"]["exit_status"] == -9 and t["relay_restarts"] == 1
    cut = next(d for d in out["devices"] if d["device"] == faults["power cut"]["target"])
    assert cut["boots"] >= 2
    assert faults["wifi drop"]["readings_held"] > 0
    # The node's own store: each reading once, signed by its device.
    stored = 0
    with sqlite3.connect(tmp_path / "node.sqlite3") as db:
        for dev in out["devices"]:
            rows = db.execute("SELECT nonce, body FROM tasks WHERE device=?", (dev["address"],))
            nonces = [n for n, body in rows if dev["address"] in
                      w3b.recover_signers(w3b.parse_task(bytes(body)))]  # fmt: skip
            assert len(nonces) == len(set(nonces)) == dev["accepted"]
            stored += len(nonces)
    assert stored >= t["signed"]
