"""The pytest plugin (``ioconnect_host.pytest_plugin``), run by pytest itself (pytester).

Every inner run is a separate pytest process on real virtual boards; "real
board" runs point ``--ioc-port`` at a virtual board started here, so the
plugin's real-hardware path drives a real serial port (a pty) it did not start.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from ioconnect_host import agent
from ioconnect_host.pytest_plugin import PortBusyError, PortLock
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard

pytest_plugins = ["pytester"]

# Inner runs leave pytest-embedded off (its autouse fixtures are not under test)
# unless a test turns it on.
NO_EMBEDDED = ("-p", "no:pytest_embedded")


@pytest.fixture
def outer_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualBoard]:
    """A board this test starts, standing in for real hardware on a serial port."""
    vb = start_board("esp32", name="plugin-outer", state_dir=tmp_path_factory.mktemp("outer"))
    yield vb
    vb.stop()


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess: the plugin's per-process state (held ports) starts clean each run.
    return pytester.runpytest_subprocess(*NO_EMBEDDED, "-p", "no:cacheprovider", *args)


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_board_is_a_fresh_virtual_board(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_info(board):
            assert board.virtual and board.board_name == "esp32"
            assert board.port.startswith("/dev/pts/")
            info = board.agent("info")
            assert info["firmware"] == "0.1.0"
            assert info["board"] == "Generic ESP32 module with ESP32"
            assert info["identity"] == {"state": "none"}

        @pytest.mark.parametrize("ioc_board_name", ["rpi-pico"], indirect=True)
        def test_param_beats_default(board):
            assert board.board_name == "rpi-pico"
            assert board.agent("info")["board"].startswith("Raspberry Pi Pico")

        @pytest.mark.hardware
        def test_needs_hardware(board):
            raise AssertionError("a hardware test ran without --ioc-port")
        """
    )
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*needs a real board: run with --ioc-port PORT*"])


def test_failure_attaches_what_the_board_printed_during_that_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_passes(board):
            board.transport.exec("print('before-' + 'the-failure')")

        def test_fails(board):
            board.transport.exec("print('console-marker-' + str(6 * 7))")
            assert board.agent("info")["identity"]["state"] == "ok"
        """
    )
    result = run(pytester, "--ioc-scope", "module")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert out.count("- ioconnect console: /dev/pts/") == 1
    section = out.split("- ioconnect console: /dev/pts/", 1)[1]
    assert "console-marker-42" in section
    # The module's board printed this for the earlier test: not this test's evidence.
    assert "before-the-failure" not in section


def test_ioc_port_drives_a_board_the_plugin_did_not_start(
    pytester: pytest.Pytester, outer_board: VirtualBoard
) -> None:
    with SerialTransport(outer_board.port) as t:
        did = agent.identity_create(t, "secp256k1")["did"]
    pytester.makepyfile(
        f"""
        import pytest

        def test_same_board(board, ioc_port):
            assert ioc_port == {outer_board.port!r}
            assert board.port == {outer_board.port!r} and not board.virtual
            assert board.agent("identity.show")["did"] == {did!r}

        @pytest.mark.hardware
        def test_power_cut_is_skipped(board):
            board.power_cut()
            raise AssertionError("power_cut returned on a real board")

        def test_fails_with_the_recorded_console(board):
            board.transport.exec("print('real-' + 'marker')")
            assert False
        """
    )
    result = run(pytester, f"--ioc-port={outer_board.port}", "--ioc-board", "esp32", "-rs")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*power_cut needs a virtual board (this one is real)*"])
    section = result.stdout.str().split(f"- ioconnect console: {outer_board.port} -", 1)[1]
    assert "real-marker" in section


@pytest.mark.parametrize("scope", ["function", "module", "session"])
def test_scope_option(pytester: pytest.Pytester, scope: str, tmp_path: Path) -> None:
    log = tmp_path / "seen.jsonl"
    body = f"""
        import json

        def test_a(board):
            seen = {{"port": board.port, "state": str(board.state_dir),
                    "identity": board.agent("info")["identity"]["state"]}}
            open({str(log)!r}, "a").write(json.dumps(seen) + "\\n")
            board.agent("identity.create", curve="secp256k1")

        def test_b(board):
            seen = {{"port": board.port, "state": str(board.state_dir),
                    "identity": board.agent("info")["identity"]["state"]}}
            open({str(log)!r}, "a").write(json.dumps(seen) + "\\n")
        """
    pytester.makepyfile(test_one=body, test_two=body.replace("identity.create", "info"))
    result = run(pytester, "--ioc-scope", scope)
    result.assert_outcomes(passed=4)
    one_a, one_b, two_a, two_b = records(log)
    if scope == "function":
        assert len({r["state"] for r in (one_a, one_b, two_a, two_b)}) == 4
        assert [r["identity"] for r in (one_a, one_b, two_a, two_b)] == ["none"] * 4
    else:
        assert one_a["state"] == one_b["state"] and one_a["port"] == one_b["port"]
        assert [one_a["identity"], one_b["identity"]] == ["none", "ok"]
        shared = two_a["state"] == one_a["state"]
        assert shared is (scope == "session")
        assert two_a["identity"] == ("ok" if scope == "session" else "none")


def test_xdist_workers_take_turns_on_one_port(
    pytester: pytest.Pytester, outer_board: VirtualBoard, tmp_path: Path
) -> None:
    log = tmp_path / "intervals.jsonl"
    pytester.makepyfile(
        f"""
        import json, os, time
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_hold(board, n):
            start = time.time()
            board.agent("info")
            time.sleep(0.3)  # a test that keeps the board a while
            board.agent("info")
            end = time.time()
            rec = {{"worker": os.environ["PYTEST_XDIST_WORKER"], "start": start, "end": end}}
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps(rec) + "\\n")
        """
    )
    lock_dir = tmp_path / "locks"
    result = run(
        pytester, "-n", "2", f"--ioc-port={outer_board.port}", "--ioc-lock-dir", str(lock_dir)
    )
    result.assert_outcomes(passed=6)
    spans = sorted(records(log), key=lambda r: float(str(r["start"])))
    assert {r["worker"] for r in spans} == {"gw0", "gw1"}  # both really wanted the port
    for before, after in itertools.pairwise(spans):
        assert float(str(before["end"])) <= float(str(after["start"])), (before, after)


def test_port_lock_names_its_holder_and_refuses_a_second_fixture(tmp_path: Path) -> None:
    first = PortLock(tmp_path, "/dev/ttyACM0", timeout_s=0.2)
    first.acquire()
    try:
        assert first.path == tmp_path / "dev_ttyACM0.lock"
        # Same process, second fixture: fails at once instead of waiting on itself.
        with pytest.raises(PortBusyError, match="already held by another board fixture"):
            PortLock(tmp_path, "/dev/ttyACM0", timeout_s=0.2).acquire()
    finally:
        first.release()
    again = PortLock(tmp_path, "/dev/ttyACM0", timeout_s=0.2)
    again.acquire()  # released: free again
    again.release()


def test_port_lock_times_out_on_another_process(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        f"""
        import os
        from pathlib import Path
        import pytest
        from ioconnect_host.pytest_plugin import PortBusyError, PortLock

        def test_other_process_holds_it():
            path = Path({str(tmp_path)!r}) / "dev_ttyUSB0.lock"
            pid = int(path.read_text())
            assert pid != os.getpid()
            with pytest.raises(PortBusyError, match=f"in use by process {{pid}} for 0.3 s"):
                PortLock(Path({str(tmp_path)!r}), "/dev/ttyUSB0", timeout_s=0.3).acquire()
        """
    )
    held = PortLock(tmp_path, "/dev/ttyUSB0")
    held.acquire()
    try:
        run(pytester).assert_outcomes(passed=1)
    finally:
        held.release()


def test_boards_factory(pytester: pytest.Pytester, outer_board: VirtualBoard) -> None:
    pytester.makepyfile(
        """
        def test_two(boards):
            a, b = boards(2)
            assert a.virtual and b.virtual and a.port != b.port
            ids = {x.agent("info")["identity"]["state"] for x in (a, b)}
            assert ids == {"none"}
            a.agent("identity.create", curve="ed25519")
            assert b.agent("info")["identity"] == {"state": "none"}  # two boards, not one
        """
    )
    run(pytester).assert_outcomes(passed=1)
    # One real port given, two boards wanted: skipped with the reason.
    result = run(pytester, f"--ioc-port={outer_board.port}", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs 2 real boards, 1 free --ioc-port given*"])


def test_deploy_hook_calls_ioconnect_deploy_with_the_session(pytester: pytest.Pytester) -> None:
    # ioconnect_host.deploy is the firmware deployer; this stand-in only records
    # that the plugin hands it the board's session before the test runs.
    pytester.makeconftest(
        """
        import sys, types
        calls = []
        mod = types.ModuleType("ioconnect_host.deploy")
        mod.deploy = lambda session: calls.append(session.port) or {"copied": 0}
        sys.modules["ioconnect_host.deploy"] = mod
        """
    )
    pytester.makepyfile(
        """
        from conftest import calls

        def test_deployed_first(board):
            assert calls == [board.port]
            assert board.deployed == {"copied": 0}
        """
    )
    run(pytester, "--ioc-deploy").assert_outcomes(passed=1)
    run(pytester).assert_outcomes(failed=1)  # no flag, no deploy


@pytest.mark.skipif(
    importlib.util.find_spec("ioconnect_host.deploy") is None,
    reason="ioconnect_host.deploy is not installed",
)
def test_deploy_skips_firmware_the_board_already_has(
    pytester: pytest.Pytester, outer_board: VirtualBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import json, os

        def test_deployed(board):
            r = board.deployed
            with open(os.environ["IOC_DEPLOY_LOG"], "a") as f:
                f.write(json.dumps({"sent": r.files_sent, "skipped": r.files_skipped}) + "\\n")
            assert board.agent("info")["firmware"] == "0.1.0"
        """
    )
    log = pytester.path / "deploys.jsonl"
    monkeypatch.setenv("IOC_DEPLOY_LOG", str(log))
    for _ in range(2):
        run(pytester, f"--ioc-port={outer_board.port}", "--ioc-deploy").assert_outcomes(passed=1)
    first, second = records(log)
    assert second["sent"] == []  # the same firmware: nothing copied the second time
    modules = {p for p in first["sent"] + first["skipped"] if str(p).endswith(".mpy")}
    assert modules and modules <= set(second["skipped"])  # each checked by hash, not sent


@pytest.mark.skipif(
    importlib.util.find_spec("ioconnect_host.deploy") is not None,
    reason="ioconnect_host.deploy is installed",
)
def test_deploy_without_the_deployer_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(board):\n    pass\n")
    result = run(pytester, "--ioc-deploy")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--ioc-deploy needs ioconnect_host.deploy, which is missing*"])


def test_beside_pytest_embedded_on_the_same_port(
    pytester: pytest.Pytester, outer_board: VirtualBoard
) -> None:
    pytester.makepyfile(
        """
        def test_agent_then_repl(board, request):
            assert board.agent("info")["firmware"] == "0.1.0"
            board.release()  # our transport lets go of the port; the board's REPL is back
            dut = request.getfixturevalue("dut")  # pytest-embedded's serial DUT opens it
            dut.write("print(6 * 7)\\r")  # Enter is CR on a MicroPython console; write adds LF
            dut.expect(r"\\r\\n42\\r\\n", timeout=30)
            dut.write("import sys; print(sys.implementation.name)\\r")
            dut.expect_exact("micropython", timeout=30)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "pytest_embedded",
        "--embedded-services=serial",
        f"--port={outer_board.port}",
        f"--ioc-port={outer_board.port}",
    )
    result.assert_outcomes(passed=1)


def test_ioc_board_must_match_a_virtual_boards_kind(
    pytester: pytest.Pytester, outer_board: VirtualBoard
) -> None:
    # The registry says what a virtual board is: a different --ioc-board is a mistake.
    pytester.makepyfile("def test_x(board):\n    board.agent('info')\n")
    result = run(pytester, "--ioc-port=sim:plugin-outer", "--ioc-board", "rpi-pico")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*--ioc-board rpi-pico, but sim:plugin-outer is the virtual esp32 plugin-outer*"]
    )
    run(pytester, "--ioc-port=sim:plugin-outer", "--ioc-board", "esp32").assert_outcomes(passed=1)
