"""The outbox (ioconnect.outbox) on MicroPython: bounded, oldest dropped and
counted across reboots, atomic writes under power cuts at every step, leftover
files, and a failing flash on the virtual board.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import SimBoard
from conftest import RunDevice
from powercut import HARNESS


def body(n: int) -> bytes:
    return json.dumps({"nonce": n, "projectID": "42", "payload": {"t": 20 + n}}).encode()


OPS = """
import json
from ioconnect.outbox import Outbox, OutboxError
ob = None
for op in json.load(open("cases.json")):
    try:
        if op[0] == "open":
            ob = Outbox("outbox", op[1])
            r = None
        elif op[0] == "put":
            r = ob.put(op[1], op[2].encode())
        elif op[0] == "get":
            r = ob.get(op[1]).decode()
        elif op[0] == "read_into":
            buf = bytearray(op[2])
            n = ob.read_into(op[1], buf)
            r = bytes(buf[:n]).decode()
        elif op[0] == "remove":
            r = ob.remove(op[1])
        elif op[0] == "next_after":
            r = ob.next_after(op[1])
        print(json.dumps([op[0], r, ob.pending(), len(ob), ob.dropped]))
    except OutboxError as e:
        print(json.dumps([op[0], "error: " + str(e)]))
"""


def run_ops(device: RunDevice, fs: Path, ops: list[list[object]]) -> list[list[object]]:
    out: list[list[object]] = device(OPS, ops, fs_dir=fs)
    return out


def test_put_get_remove_in_nonce_order(device: RunDevice, tmp_path: Path) -> None:
    ops: list[list[object]] = [["open", 64]]
    for n in (3, 1, 2, 10):
        ops.append(["put", n, body(n).decode()])
    ops += [
        ["get", 2],
        ["read_into", 10, 200],
        ["next_after", 0],
        ["next_after", 3],
        ["next_after", 10],
        ["remove", 2],
        ["remove", 2],
        ["put", 3, "replaced"],
        ["read_into", 10, 10],
        ["get", 77],
    ]
    out = run_ops(device, tmp_path, ops)
    assert out[4] == ["put", None, [1, 2, 3, 10], 4, 0]
    assert out[5] == ["get", body(2).decode(), [1, 2, 3, 10], 4, 0]
    assert out[6][1] == body(10).decode()
    assert [o[1] for o in out[7:10]] == [1, 10, None]
    assert out[10][:3] == ["remove", True, [1, 3, 10]]
    assert out[11][:3] == ["remove", False, [1, 3, 10]]
    assert out[12][:3] == ["put", None, [1, 3, 10]]
    assert out[13] == ["read_into", "error: reading 10 larger than the buffer"]
    assert out[14] == ["get", "error: reading 77: cannot read (errno 2)"]
    # On flash: one file per reading, named by nonce, holding the exact body.
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert files == ["1", "10", "3"]
    assert (tmp_path / "outbox" / "10").read_bytes() == body(10)
    assert (tmp_path / "outbox" / "3").read_bytes() == b"replaced"


def test_full_drops_oldest_and_counts_across_reboots(device: RunDevice, tmp_path: Path) -> None:
    ops: list[list[object]] = [["open", 5]] + [["put", n, body(n).decode()] for n in range(1, 9)]
    out = run_ops(device, tmp_path, ops)
    assert out[-1] == ["put", None, [4, 5, 6, 7, 8], 5, 3]
    assert (tmp_path / "outbox" / "dropped").read_bytes() == b"3 3\n"
    # A new boot: the count and the entries are still there; more drops add up.
    out = run_ops(
        device,
        tmp_path,
        [
            ["open", 5],
            ["put", 9, "x"],
            ["put", 2, "late"],  # older than what was dropped: refused
            ["open", 2],  # capacity lowered by config: trimmed at open, counted
        ],
    )
    assert out[0] == ["open", None, [4, 5, 6, 7, 8], 5, 3]
    assert out[1] == ["put", None, [5, 6, 7, 8, 9], 5, 4]
    assert out[2] == ["put", "error: nonce 2 is not newer than dropped 4"]
    assert out[3] == ["open", None, [8, 9], 2, 7]
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["8", "9", "dropped"]


def test_bad_input_is_refused(device: RunDevice, tmp_path: Path) -> None:
    out = run_ops(
        device,
        tmp_path,
        [["open", 4], ["put", 0, "x"], ["put", -3, "x"], ["put", 5, "y" * 1025], ["put", 5, "ok"]],
    )
    assert out[1] == ["put", "error: nonce must be a positive integer"]
    assert out[2] == ["put", "error: nonce must be a positive integer"]
    assert out[3] == ["put", "error: body of 1025 bytes exceeds 1024"]
    assert out[4] == ["put", None, [5], 1, 0]


def test_leftovers_at_open(device: RunDevice, tmp_path: Path) -> None:
    ob = tmp_path / "outbox"
    ob.mkdir()
    (ob / "7").write_bytes(body(7))
    (ob / "8.tmp").write_bytes(body(8)[:5])  # a write cut short
    (ob / "dropped.tmp").write_bytes(b"9")
    (ob / "notes").write_bytes(b"not a reading")
    (ob / "2").write_bytes(body(2))  # at or below the last drop: removed, not recounted
    (ob / "dropped").write_bytes(b"4 3\n")
    out = run_ops(device, tmp_path, [["open", 8]])
    assert out[0] == ["open", None, [7], 1, 4]
    assert sorted(p.name for p in ob.iterdir()) == ["7", "dropped", "notes"]


# Power cuts inside the VM (tests/powercut.py) at every step of a put.
POWER_CUT = (
    """
import json, os
from ioconnect import outbox
"""
    + HARNESS
    + """
cases = json.load(open("cases.json"))
for n in range(cases["steps"] + 1):
    d = "cut%d" % n
    os.mkdir(d)
    ob = outbox.Outbox(d + "/outbox", cases["capacity"])
    for k in (1, 2):
        ob.put(k, b"reading %d" % k)
    budget[0] = n
    outbox.open = cut_open
    outbox.os = CutOs()
    cut = False
    try:
        ob.put(3, cases["body"].encode())
    except PowerCut:
        cut = True
    outbox.open = _open
    outbox.os = os
    print(json.dumps([d, cut]))
"""
)

REOPEN = """
import json, os
from ioconnect.outbox import Outbox
for d in json.load(open("cases.json")):
    ob = Outbox(d + "/outbox", 2)
    print(json.dumps([ob.pending(), ob.dropped, [ob.get(n).decode() for n in ob.pending()],
                      sorted(os.listdir(d + "/outbox"))]))
"""


@pytest.mark.parametrize("capacity", [8, 2])
def test_power_cut_at_every_step_of_a_put(device: RunDevice, tmp_path: Path, capacity: int) -> None:
    new = body(3).decode()
    # capacity 8: body bytes + rename; capacity 2 (full, drops 1): + counter, rename, remove.
    steps = len(new) + 1 + (len(b"1 1\n") + 2 if capacity == 2 else 0)
    cases = {"capacity": capacity, "steps": steps, "body": new}
    runs = device(POWER_CUT, cases, fs_dir=tmp_path)
    assert [r[1] for r in runs] == [True] * steps + [False]
    (tmp_path / "cases.json").unlink()
    after = device(REOPEN, [r[0] for r in runs], fs_dir=tmp_path)
    outcomes = set()
    for (d, _), (pending, dropped, bodies, files) in zip(runs, after, strict=True):
        assert not any(f.endswith(".tmp") for f in files), (d, files)
        if pending == [1, 2]:
            # Cut before the rename: the new reading is lost, nothing else.
            assert (dropped, bodies) == (0, ["reading 1", "reading 2"]), d
            outcomes.add("lost")
        else:
            # Stored whole; with capacity 2 the oldest went, counted exactly once
            # (reopened with capacity 2 also when written with 8).
            assert pending == [2, 3] and bodies == ["reading 2", new], (d, pending)
            assert dropped == 1, (d, dropped)
            outcomes.add("kept")
    assert outcomes == {"lost", "kept"}


@pytest.fixture
def board(tmp_path: Path) -> Iterator[SimBoard]:
    b = SimBoard("esp32", tmp_path / "board", name="outbox-board")
    yield b
    b.close()


FLASH_FAULT = """
import json
from ioconnect.outbox import Outbox, OutboxError
try:
    ob
except NameError:
    ob = Outbox("outbox", 4)
for n in %s:
    try:
        ob.put(n, b"reading %%d" %% n)
        print(json.dumps([n, ob.pending()]))
    except OutboxError as e:
        print(json.dumps([n, str(e)]))
"""


def test_failing_flash_refuses_with_errno_and_keeps_entries(board: SimBoard) -> None:
    assert board.run(FLASH_FAULT % "[1, 2]") == [[1, [1]], [2, [1, 2]]]
    board.vb.set_fault(flash="enospc")
    try:
        got = board.run(FLASH_FAULT % "[3]")
    finally:
        board.vb.set_fault(flash=None)
    assert got == [[3, "outbox/3: cannot store reading (errno 28)"]]
    assert board.run(FLASH_FAULT % "[4]") == [[4, [1, 2, 4]]]
    assert sorted(p.name for p in (board.flash / "outbox").iterdir()) == ["1", "2", "4"]


def test_power_cuts_of_the_virtual_board_leave_whole_readings(board: SimBoard) -> None:
    # Readings are stored as fast as the board can; its power is cut meanwhile.
    loop = (
        "from ioconnect.outbox import Outbox\n"
        "import os\n"
        "ob = Outbox('outbox', 16)\n"
        "n = ob.pending()[-1] if len(ob) else 0\n"
        "while True:\n"
        "    n += 1\n"
        "    ob.put(n, ('{\"nonce\": %d, \"pad\": \"' % n + 'x' * 300 + '\"}').encode())\n"
    )
    import random
    import time

    def highest() -> int:  # the newest reading on the board's flash (a host folder)
        folder = board.flash / "outbox"
        names = os.listdir(folder) if folder.is_dir() else []
        return max((int(n) for n in names if n.isdigit()), default=0)

    for _ in range(6):
        start = highest()
        board.t.exec_raw_no_follow(loop)
        # Cut once the loop has stored a few (however slow the machine), at a
        # moment that varies within its writes.
        deadline = time.monotonic() + 60
        while highest() < start + 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(random.uniform(0, 0.1))
        board.power_cut()
    check = """
import json, os
from ioconnect.outbox import Outbox
ob = Outbox("outbox", 16)
bodies = [json.loads(ob.get(n)) for n in ob.pending()]
print(json.dumps([ob.pending(), ob.dropped, [b["nonce"] for b in bodies],
                  sorted(os.listdir("outbox"))]))
"""
    [[pending, dropped, nonces, files]] = board.run(check)
    assert len(pending) == 16 and dropped > 0
    assert nonces == pending == list(range(pending[0], pending[0] + 16))
    assert not [f for f in files if f.endswith(".tmp")]
    # Counted exactly: everything below the 16 kept was dropped once (the cut may lose
    # the reading being written, and the next boot starts above what is on flash).
    assert dropped <= pending[0] - 1
