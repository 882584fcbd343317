"""The agent's heap on a virtual ESP32 (96 KB), called through the pty.

A board that signs every reading for weeks, with host tools calling the agent in
between, must end each request with the heap as it found it. Two things used to
break that: every module load interned its names into MicroPython's qstr table
(heap, never freed; growing it needs one large block, which a fragmented heap
mid-request does not have: ``identity.rotate`` failed with ``no_memory`` at
85 KB free), and re-importing the viper modules (keccak, sha512) took a new copy
of their machine code on each request. Here: long seeded runs of every agent
operation all succeed, and after the first request neither the free heap nor the
number of interned names moves.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from conftest import RunDevice
from ioconnect_host import agent
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board

CURVES = ("secp256k1", "p256", "ed25519")
ECDSA_PROFILES = ("w3bstream", "sprout", "ioid", "eip191")
PROBE = "import gc,micropython\ngc.collect()\nmicropython.mem_info()\nmicropython.qstr_info()"
CALLS = 150


def probe(board: SerialTransport) -> tuple[int, int]:
    """(free heap bytes, interned names) on the board, after a collection."""
    out, err = board.exec_raw(PROBE)
    assert err == b"", err
    text = out.decode()
    free = re.search(r"GC: total: \d+, used: \d+, free: (\d+)", text)
    names = re.search(r"n_qstr=(\d+)", text)
    assert free and names, text
    return int(free[1]), int(names[1])


def info_same_request(board: SerialTransport) -> dict[str, object]:
    # info with the same request bytes every time (agent.info numbers its
    # requests, and a longer id is a longer request while free_heap is read).
    out = board.exec(agent.CALL % repr(b'{"v": 1, "id": 7, "op": "info"}').encode())
    answer = agent.parse_frame(out, 7)
    assert answer["ok"] is True, answer
    result: dict[str, object] = answer["result"]
    return result


def reading(rng: random.Random, i: int) -> str:
    # Sensor JSON, with non-ASCII keys now and then (every character a fresh name
    # for MicroPython if the firmware walked strings character by character).
    label = rng.choice(["t", "temp", "温度", "température", "ünits"])
    body = {label: round(rng.uniform(-20, 40), 2), "ts": 1700000000 + i}
    return json.dumps(body, ensure_ascii=False)


def sign_once(board: SerialTransport, rng: random.Random, curve: str, i: int) -> str:
    profile = rng.choice(("cose", *ECDSA_PROFILES) if curve == "secp256k1" else ("cose",))
    text = reading(rng, i)
    if profile == "w3bstream":
        out = agent.sign(
            board, "w3bstream", nonce=i, project_id=str(rng.randint(1, 9999)), payload=text,
            signed_keys=["ts"],
        )  # fmt: skip
        assert json.loads(out["request"])["payload"] == json.loads(text)
    elif profile == "sprout":
        out = agent.sign(board, "sprout", project_id=i, project_version="0.1", payload=text)
        assert json.loads(out["request"])["data"] == text
    elif profile == "ioid":
        owner = "0x" + rng.randbytes(20).hex()
        out = agent.sign(board, "ioid", owner=owner, nonce=i, chain_id=4690)
        assert len(bytes.fromhex(out["signature"])) == 65
    elif profile == "eip191":
        out = agent.sign(board, "eip191", payload=text)
        assert len(bytes.fromhex(out["signature"])) == 65
    else:
        out = agent.sign(board, "cose", payload_hex=text.encode().hex(), kid=f"dev{i % 5}")
        assert text.encode().hex() in out["token"]  # the payload travels inside
    return profile


def config_once(board: SerialTransport, rng: random.Random) -> None:
    key, value = rng.choice(
        [
            ("device.name", f"node-{rng.randint(0, 999)}"),
            ("mqtt.port", rng.randint(1, 65535)),
            ("w3bstream.project_id", str(rng.randint(1, 10**12))),
            ("sample.interval_s", rng.randint(1, 3600)),
            ("mqtt.topic", rng.choice(["readings", "dévices/ß", "a/b/c"])),
        ]
    )
    assert agent.config_set(board, key, value) == value
    assert agent.config_get(board, key) == value


@pytest.mark.parametrize("first", CURVES)
def test_long_random_sequence_keeps_the_heap_steady(tmp_path: Path, first: str) -> None:
    rng = random.Random(f"agent-heap-{first}")
    done: set[str] = set()
    infos: list[int] = []
    with (
        start_board("esp32", name=f"heap-{first}", state_dir=tmp_path) as vb,
        SerialTransport(vb.port) as board,
    ):
        ident = agent.identity_create(board, first)  # type: ignore[arg-type]
        assert ident["curve"] == first
        curve = first
        steady = probe(board)
        for i in range(1, CALLS):
            op = rng.choice(["info", "show", "rotate", "diddoc", "sign", "sign", "sign", "config"])
            if op == "info":
                info = info_same_request(board)
                assert info["identity"] == {"state": "ok", "curve": curve, "did": ident["did"]}
                assert isinstance(info["free_heap"], int)
                infos.append(info["free_heap"])
            elif op == "show":
                assert agent.identity_show(board) == ident
            elif op == "rotate":
                curve = rng.choice(CURVES)
                new = agent.identity_rotate(board, curve)  # type: ignore[arg-type]
                assert new["curve"] == curve and new["did"] != ident["did"]
                ident = new
                op = "rotate " + curve
            elif op == "diddoc":
                assert agent.diddoc(board)["id"] == ident["did"]
            elif op == "sign":
                op = "sign " + sign_once(board, rng, curve, i)
            else:
                config_once(board, rng)
            done.add(op)
        end = probe(board)
    every = {"info", "show", "diddoc", "config"} | {"rotate " + c for c in CURVES}
    every |= {"sign " + p for p in ("cose", *ECDSA_PROFILES)}
    assert done == every  # the seed reaches every operation
    # Not a byte lost, not a name added, over the whole run.
    assert end == steady
    assert len(infos) > 5 and infos == [infos[0]] * len(infos)


# Loads every firmware module and runs the encoders and a config check over
# data whose characters the board has not seen. A function, defined first: the
# compiler interns the names of the code it compiles, and that is not the point.
_DEFINE = """
def _exercise():
    import sys, ioconnect
    keep = set(sys.modules)
    for m in ("keccak", "sha512", "hmac", "ec", "ecdsa", "ed25519", "keys", "did",
              "identity", "profiles", "cbor", "cose", "gojson", "utf8", "agent"):
        __import__("ioconnect." + m)
        ioconnect.forget(keep)
    from ioconnect import encoding, config
    for i in range(40):
        data = bytes((i * 37 + k * 11) & 255 for k in range(i + 1))
        encoding.b58decode(encoding.b58encode(data))
        encoding.bech32_address_decode("io", encoding.bech32_address("io", data[:20]))
        encoding.b64url_decode(encoding.b64url_encode(data))
        config.check("w3bstream.project_id", str(10 ** (i % 19) + i))
    for bad in ("0OIl", "ab\\u20acc", "\\u00e9\\u00e8", "io1\\u00e9zz"):
        for decode in (encoding.b58decode, encoding.b64url_decode, encoding.bech32_decode):
            try:
                decode(bad)
            except encoding.EncodingError:
                pass
    ioconnect.forget(keep)
"""


def test_requests_intern_no_names_after_the_first(tmp_path: Path) -> None:
    with (
        start_board("esp32", name="heap-names", state_dir=tmp_path) as vb,
        SerialTransport(vb.port) as board,
    ):
        agent.info(board)  # the first request interns every module's names
        board.exec(_DEFINE)
        before = probe(board)
        assert board.exec("_exercise()") == b""
        assert probe(board) == before
        agent.info(board)
        assert probe(board) == before


def test_forget_after_an_import_that_failed(device: RunDevice) -> None:
    # An import cut by MemoryError leaves the submodule in sys.modules but not as
    # an attribute of the package; unloading must not fail on it (it did, with
    # MicroPython's KeyError for a missing module attribute: "KeyError: ec").
    code = (
        "import sys, json, ioconnect\n"
        "keep = set(sys.modules)\n"
        "import ioconnect.cbor\n"
        "delattr(ioconnect, 'cbor')\n"
        "ioconnect.forget(keep)\n"
        "print(json.dumps('ioconnect.cbor' in sys.modules))\n"
    )
    assert device(code) == [False]
