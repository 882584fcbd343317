"""`attest --once` end to end: the board signs one reading, the host verifies it
with independent code (coincurve, cbor2, the Go reference of W3bstream's node)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import cbor2
import coincurve
import pytest
from boardsetup import provision, secp_signers
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from go.goref import go_reference, run_go
from ioconnect_host import agent
from ioconnect_host.cli import main
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_attest_once_verifies_against_go_and_cose(tmp_path: Path) -> None:
    settings = {"w3bstream.signed_keys": ["timestamp"]}
    address = provision(tmp_path / "flash", "rpi-pico", settings)
    vb = start_board("rpi-pico", name="attest-once", state_dir=tmp_path)
    try:
        code, out, err = cli(["attest", "--once", "--port", vb.port, "--json"])
        assert code == 0, err
        res: dict[str, Any] = json.loads(out)
        attest_json = out
        # -p and sim:NAME, as every other board command takes them: a later nonce.
        code, out, err = cli(["attest", "--once", "-p", "sim:attest-once", "--json"])
        assert code == 0, err
        assert json.loads(out)["nonce"] > res["nonce"]
        with SerialTransport(vb.port) as t:
            pub = bytes.fromhex(agent.identity_show(t)["public_key"])
            again = agent.attest(t, cose=True)
            queued = t.exec("import os\nprint(sorted(os.listdir('outbox')))").decode()
    finally:
        vb.stop()
    assert res["verified"] is True and res["address"] == address
    # `verify` of this output holds the signer to its own "address", as --address does.
    (tmp_path / "a.json").write_text(attest_json)
    code, out, err = cli(["verify", str(tmp_path / "a.json"), "--signed-key", "timestamp"])
    assert code == 0, err
    assert address in out and "the signer was not compared" not in out
    other = "0x" + "ab" * 20
    (tmp_path / "b.json").write_text(json.dumps({**res, "address": other}))
    code, out, err = cli(["verify", str(tmp_path / "b.json"), "--signed-key", "timestamp"])
    assert code == 1, (out, err)
    assert err.startswith("ioconnect: invalid: ") and other in err and err.count("\n") == 1
    body = json.loads(res["request"])
    assert body["nonce"] == res["nonce"] and body["projectID"] == "42"
    payload = json.loads(res["payload"])
    assert body["payload"] == payload and set(payload) >= {"timestamp", "climate"}
    # W3bstream's node (Go reference): parses the body, hashes it with the
    # project's signed key, and the signature recovers to the device.
    binary, _ = go_reference()
    (server,) = run_go(
        binary,
        [{"op": "server_task", "hex": res["request"].encode().hex(), "keys": ["timestamp"]}],
    )
    digest = bytes.fromhex(server["ok"]["digest"])
    h1 = hashlib.sha256(bytes.fromhex(server["ok"]["signed"])).digest()
    assert digest == hashlib.sha256(h1 + payload["timestamp"].to_bytes(8, "little")).digest()
    assert address in secp_signers(digest, bytes.fromhex(body["signature"][2:]))
    # The same payload as COSE_Sign1 (ES256K), verified with coincurve.
    assert "cose" not in res
    tag = cbor2.loads(bytes.fromhex(again["cose"]))
    assert tag.tag == 18
    protected, unprotected, cose_payload, cose_sig = tag.value
    assert cose_payload == again["payload"].encode()
    assert unprotected[4] == ("did:io:" + address).encode()  # kid
    tbs = cbor2.dumps(["Signature1", protected, b"", cose_payload])
    der = encode_dss_signature(int.from_bytes(cose_sig[:32]), int.from_bytes(cose_sig[32:]))
    assert coincurve.PublicKey(pub).verify(der, tbs, hasher=lambda m: hashlib.sha256(m).digest())
    # Nonces keep rising; attest --once never queues its request.
    assert again["nonce"] > res["nonce"]
    assert str(res["nonce"]) not in queued and str(again["nonce"]) not in queued


def test_attest_op_on_an_esp32_c3(tmp_path: Path) -> None:
    # Identity and board file, no project yet: the board boots to the REPL.
    # (128 KB: at the ESP32's 96 KB the op no longer fits in the 64-bit virtual
    # board once the agent has interned every module's names.)
    address = provision(tmp_path / "flash", "esp32-c3")
    (tmp_path / "flash" / "config.json").write_text("{}")
    vb = start_board("esp32-c3", name="attest-c3", state_dir=tmp_path)
    try:
        with SerialTransport(vb.port) as t:
            with pytest.raises(agent.AgentError) as err:
                agent.attest(t)
            assert err.value.code == "invalid_config" and "project_id" in str(err.value)
            agent.config_set(t, "w3bstream.project_id", "7")
            agent.config_set(t, "w3bstream.fields", ["climate"])
            res = agent.attest(t, cose=True)
            free = agent.info(t)["free_heap"]
            with pytest.raises(agent.AgentError) as err:
                agent.config_set(t, "w3bstream.fields", ["x" * 33])
            assert err.value.code == "invalid_config"
    finally:
        vb.stop()
    payload = json.loads(res["payload"])
    assert list(payload) == ["timestamp", "climate"]
    assert 10 <= payload["climate"]["temp_c"] <= 35
    body = json.loads(res["request"])
    assert body["projectID"] == "7" and "cose" in res
    assert free > 40_000  # the op's modules were unloaded again
    assert address.startswith("0x")


def test_cli_attest_errors_are_one_line(tmp_path: Path) -> None:
    code, out, err = cli(["attest", "--once", "--port", str(tmp_path / "no-such-port")])
    assert code == 1 and out == ""
    assert err.startswith("ioconnect: error: no such serial port") and err.count("\n") == 1
    code, out, err = cli(["attest", "--port", str(tmp_path / "x")])
    assert code == 1 and "only --once" in err


def test_identity_create_first_on_a_fresh_esp32(tmp_path: Path) -> None:
    # The provisioning path: identity.create is the first request a new board
    # gets. It failed about every other time at 96 KB while base58/bech32
    # interned their characters (see test_heap_qstr); three fresh boards, three keys.
    for i in range(3):
        vb = start_board("esp32", name=f"cold-{i}", state_dir=tmp_path / str(i))
        try:
            with SerialTransport(vb.port) as t:
                ident = agent.identity_create(t)
        finally:
            vb.stop()
        assert ident["io_address"].startswith("io1") and ident["did_key"].startswith("did:key:z")
