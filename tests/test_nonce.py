"""Reading nonces (ioconnect.nonce) on MicroPython: strictly increasing across
reboots, power cuts at every write step of several reservations, corrupt
files, and flash faults of the virtual board's flash (signing stops, never reuses).

The nonce file is read here by an independent host reader of the documented format.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import SimBoard
from conftest import RunDevice
from powercut import HARNESS

FILE_LEN = 24


def encode_nonce_file(high: int, version: int = 1) -> bytes:
    head = b"IONC" + struct.pack(">B3xQ", version, high)
    return head + hashlib.sha256(head).digest()[:8]


def parse_nonce_file(blob: bytes) -> int:
    assert len(blob) == FILE_LEN and blob[:4] == b"IONC" and blob[4] == 1, blob.hex()
    assert hashlib.sha256(blob[:16]).digest()[:8] == blob[16:]
    high: int = struct.unpack(">Q", blob[8:16])[0]
    return high


NEXT_N = """
import json
from ioconnect.nonce import NonceStore, NonceError
for path, reserve, count in json.load(open("cases.json")):
    st = NonceStore(path, reserve)
    out = []
    try:
        for _ in range(count):
            out.append(st.next())
        out.append(st.high_water())
    except NonceError as e:
        out.append("error: " + str(e))
    print(json.dumps(out))
"""


def test_sequence_and_reservation_on_flash(device: RunDevice, tmp_path: Path) -> None:
    [out] = device(NEXT_N, [["n.dat", 32, 70]], fs_dir=tmp_path)
    assert out[:-1] == list(range(1, 71)) and out[-1] == 96  # reserved in steps of 32
    assert parse_nonce_file((tmp_path / "n.dat").read_bytes()) == 96
    assert not (tmp_path / "n.dat.tmp").exists()


def test_reboots_continue_from_the_reservation(device: RunDevice, tmp_path: Path) -> None:
    seen: list[int] = []
    for boot in range(4):
        # Each boot is a new VM: hands out 5, "crashes" (the VM just ends).
        [out] = device(NEXT_N, [["n.dat", 8, 5]], fs_dir=tmp_path)
        seen += out[:-1]
        assert out[:-1] == list(range(8 * boot + 1, 8 * boot + 6)), boot
    assert seen == sorted(set(seen))


# Power cuts inside the VM (tests/powercut.py) at every step of a reservation.
POWER_CUT = (
    """
import json, os
from ioconnect import nonce
"""
    + HARNESS
    + """
cases = json.load(open("cases.json"))
for n in range(cases["steps"] + 1):
    d = "cut%d" % n
    os.mkdir(d)
    # An earlier boot left a reservation of 5 behind (1..3 handed out).
    st = nonce.NonceStore(d + "/nonce.dat", 5)
    before = [st.next() for _ in range(3)]
    st = nonce.NonceStore(d + "/nonce.dat", cases["reserve"])
    budget[0] = n
    nonce.open = cut_open
    nonce.os = CutOs()
    handed = []
    cut = False
    try:
        for _ in range(cases["calls"]):
            handed.append(st.next())
    except PowerCut:
        cut = True
    nonce.open = _open
    nonce.os = os
    print(json.dumps([d, before + handed, cut]))
"""
)

AFTER_CUT = """
import json, os
from ioconnect.nonce import NonceStore, NonceError
for d in json.load(open("cases.json")):
    st = NonceStore(d + "/nonce.dat", 4)
    try:
        out = [st.next(), st.next()]
    except NonceError as e:
        out = "error: " + str(e)
    print(json.dumps([out, sorted(os.listdir(d))]))
"""


def test_power_cut_at_every_step_of_three_reserves(device: RunDevice, tmp_path: Path) -> None:
    reserve, calls = 4, 10  # calls 1, 5, 9 each persist: 3 x (24 bytes + 1 rename)
    steps = 3 * (FILE_LEN + 1)
    cases = {"reserve": reserve, "calls": calls, "steps": steps}
    runs = device(POWER_CUT, cases, fs_dir=tmp_path)
    assert len(runs) == steps + 1
    (tmp_path / "cases.json").unlink()
    after = device(AFTER_CUT, [r[0] for r in runs], fs_dir=tmp_path)
    completed = 0
    for (d, handed, cut), (nxt, files) in zip(runs, after, strict=True):
        n = int(d[3:])
        assert cut == (n < steps), d
        assert handed == sorted(set(handed)), d  # strictly increasing within a boot
        assert isinstance(nxt, list), (d, nxt)
        # Never repeats, never goes back: the next boot starts above all handed out.
        assert nxt[0] > max(handed) and nxt[1] == nxt[0] + 1, (d, handed, nxt)
        # ...and skips at most one reservation.
        assert nxt[0] <= max(handed) + reserve + 1, (d, handed, nxt)
        assert files == ["nonce.dat"], (d, files)
        completed = max(completed, len(handed) - 3)
    # Cuts fall inside the 1st, 2nd and 3rd reservation, or none: 0, 4, 8 or all 10 out.
    assert completed == calls
    assert {len(r[1]) - 3 for r in runs} == {0, 4, 8, 10}


def test_corrupt_or_leftover_files(device: RunDevice, tmp_path: Path) -> None:
    good = encode_nonce_file(1000)
    cases = {
        "ok": {"nonce.dat": good},
        "flip": {"nonce.dat": good[:10] + bytes([good[10] ^ 1]) + good[11:]},
        "trunc": {"nonce.dat": good[:23]},
        "magic": {"nonce.dat": b"XXXX" + good[4:]},
        "version": {"nonce.dat": encode_nonce_file(7, version=2)},
        # The committed file wins over a complete temp file (cut before the rename).
        "both": {"nonce.dat": good, "nonce.dat.tmp": encode_nonce_file(2000)},
        # No committed file, complete temp file: adopted (FAT's unlink+rename cut short).
        "only_tmp": {"nonce.dat.tmp": encode_nonce_file(2000)},
        # A first write cut short: nothing was handed out yet.
        "partial_tmp": {"nonce.dat.tmp": encode_nonce_file(2000)[:12]},
        "empty": {},
    }
    for name, files in cases.items():
        (tmp_path / name).mkdir()
        for fname, blob in files.items():
            (tmp_path / name / fname).write_bytes(blob)
    out = device(NEXT_N, [[f"{n}/nonce.dat", 10, 2] for n in cases], fs_dir=tmp_path)
    got = dict(zip(cases, out, strict=True))
    assert got["ok"] == [1001, 1002, 1010]
    assert got["both"] == [1001, 1002, 1010]
    assert got["only_tmp"] == [2001, 2002, 2010]
    assert got["partial_tmp"] == [1, 2, 10]
    assert got["empty"] == [1, 2, 10]
    reasons = {
        "flip": "checksum mismatch",
        "trunc": "length 23, expected 24",
        "magic": "bad magic",
        "version": "unsupported format version 2",
    }
    for name, why in reasons.items():
        assert got[name] == [f"error: {name}/nonce.dat: {why} (file corrupt): signing stopped"]
    # A corrupt file is left as it was, for a human to look at.
    assert (tmp_path / "flip" / "nonce.dat").read_bytes()[10] == good[10] ^ 1


def test_reserve_bounds(device: RunDevice) -> None:
    code = """
import json
from ioconnect.nonce import NonceStore, NonceError
for r in (0, 1, 1048577):
    try:
        NonceStore("n.dat", r)
        print(json.dumps([r, "ok"]))
    except NonceError as e:
        print(json.dumps([r, str(e)]))
"""
    assert device(code) == [
        [0, "reserve must be 1..1048576"],
        [1, "ok"],
        [1048577, "reserve must be 1..1048576"],
    ]


def test_last_nonce_of_uint64_then_exhausted(device: RunDevice, tmp_path: Path) -> None:
    (tmp_path / "nonce.dat").write_bytes(encode_nonce_file(2**64 - 3))
    [out] = device(NEXT_N, [["nonce.dat", 32, 3]], fs_dir=tmp_path)
    assert out == [2**64 - 2, 2**64 - 1, "error: nonce space exhausted"]


# -- the virtual board: its flash fails, its power is cut ----------------------


@pytest.fixture
def board(tmp_path: Path) -> Iterator[SimBoard]:
    b = SimBoard("esp32", tmp_path / "board", name="nonce-board")
    yield b
    b.close()


TRY_NEXT = """
import json
from ioconnect.nonce import NonceStore, NonceError
try:
    st
except NameError:
    st = NonceStore("nonce.dat", 4)
out = []
for _ in range(%d):
    try:
        out.append(st.next())
    except NonceError as e:
        out.append("error: " + str(e))
print(json.dumps(out))
"""


@pytest.mark.parametrize(("fault", "errno"), [("eio", 5), ("enospc", 28)])
def test_flash_fault_stops_signing_then_resumes(board: SimBoard, fault: str, errno: int) -> None:
    [first] = board.run(TRY_NEXT % 6)
    assert first == [1, 2, 3, 4, 5, 6]  # reserved up to 8
    board.vb.set_fault(flash=fault)
    try:
        [during] = board.run(TRY_NEXT % 4)
    finally:
        board.vb.set_fault(flash=None)
    # 7 and 8 were reserved before the fault; 9 needs a write that fails.
    err = f"error: nonce.dat: cannot write (errno {errno}): signing stopped"
    assert during == [7, 8, err, err]
    assert parse_nonce_file((board.flash / "nonce.dat").read_bytes()) == 8
    [after] = board.run(TRY_NEXT % 2)
    assert after == [9, 10]
    # A reboot after the fault still never goes back.
    board.power_cut()
    [boot] = board.run(TRY_NEXT % 1)
    assert boot == [13]


def test_power_cuts_of_the_virtual_board_never_reuse(board: SimBoard) -> None:
    # A loop hands out nonces as fast as it can; the power is cut while it runs.
    loop = (
        "from ioconnect.nonce import NonceStore\n"
        "st = NonceStore('nonce.dat', 16)\n"
        "while True:\n"
        "    print(st.next())\n"
    )
    import random
    import time

    seen: list[int] = []
    for _ in range(8):
        board.t.exec_raw_no_follow(loop)
        got = b""
        # Cut once the loop's output flows (however slow the machine), at a moment
        # that varies within it.
        deadline, cut_at = time.monotonic() + 60, None
        while time.monotonic() < deadline and (cut_at is None or time.monotonic() < cut_at):
            got += board.t.serial.read(board.t.serial.in_waiting or 1)
            if cut_at is None and got.count(b"\n") >= 20:
                cut_at = time.monotonic() + random.uniform(0, 0.1)
        board.power_cut()
        lines = got.split(b"\n")[:-1]  # complete lines only: the cut may split the last
        values = [int(x) for x in (ln.strip() for ln in lines) if x.isdigit()]
        assert values, got[-200:]
        assert values == list(range(values[0], values[0] + len(values)))
        assert not seen or values[0] > seen[-1], (seen[-3:], values[:3])
        seen += values
    assert len(seen) > 8
    assert seen == sorted(set(seen))
