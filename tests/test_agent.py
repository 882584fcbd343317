"""The firmware's agent on a board: a fresh virtual ESP32 (96 KB heap) per test by default.

``board`` is the ioconnect pytest plugin's fixture, so the same tests run on a
real board: ``pytest tests/test_agent.py --ioc-port /dev/ttyUSB0 --ioc-board esp32``
(they create and rotate keys and change settings: use a test board). No test
relies on another having run first.

Every signature the device returns is checked with independent host libraries:
coincurve recovers W3bstream/sprout signers, eth-account recovers the ioID and
EIP-191 signers, cryptography verifies COSE.
"""

from __future__ import annotations

import hashlib
import json

import cbor2
import coincurve
import pytest
from boardsetup import secp_signers
from Crypto.Hash import keccak
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from ioconnect_host import agent
from ioconnect_host.agent import AgentError
from ioconnect_host.boards import load_board
from ioconnect_host.pytest_plugin import Board
from ioconnect_sim.supervisor import heap_factor
from vectors import permit_typed


def k256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def test_info(board: Board) -> None:
    spec = load_board(board.board_name or "esp32")
    info = agent.info(board)
    assert info["api"] == agent.API_VERSION
    assert info["firmware"] == "0.1.0"
    assert info["board"] == f"{spec.board_name} with {spec.mcu_name}"  # os.uname().machine
    assert info["micropython"].startswith("1.")
    # A virtual board's budget is scaled for its 64-bit VM (supervisor.heap_factor).
    assert 0 < info["free_heap"] < spec.heap_bytes * (heap_factor() if board.virtual else 1)
    assert info["uptime_ms"] >= 0


def test_no_identity_on_a_blank_board(board: Board) -> None:
    info = agent.info(board)
    if info["identity"] != {"state": "none"} and not board.virtual:
        pytest.skip("this real board has an identity; the blank-board test needs one without")
    assert info["identity"] == {"state": "none"}
    with pytest.raises(AgentError) as err:
        agent.identity_show(board)
    assert err.value.code == "no_identity"


def test_identity_lifecycle_and_eth_profiles(board: Board) -> None:
    if agent.info(board)["identity"]["state"] == "none":
        ident = agent.identity_create(board, "secp256k1")
    else:  # a real board keeps its key between runs: replace it (the old one is backed up)
        ident = agent.identity_rotate(board, "secp256k1")
    pub = bytes.fromhex(ident["public_key"])
    address = "0x" + k256(pub[1:])[-20:].hex()
    assert ident["address"] == address
    assert ident["did"] == "did:io:" + address
    with pytest.raises(AgentError) as err:
        agent.identity_create(board, "p256")
    assert err.value.code == "identity_exists"
    assert agent.identity_show(board) == ident
    assert agent.diddoc(board)["id"] == ident["did"]

    # W3bstream /v1/task: the device signs sha256 of Go's json.Marshal of the task.
    payload = '{"temperature": 21.5, "note": "<ok> & more"}'
    req = json.loads(
        agent.sign(board, "w3bstream", nonce=7, project_id="42", payload=payload)["request"]
    )
    go_bytes = (
        b'{"nonce":7,"projectID":"42","payload":'
        b'{"temperature":21.5,"note":"\\u003cok\\u003e \\u0026 more"}}'
    )
    sig = bytes.fromhex(req["signature"][2:])
    assert len(sig) == 64
    assert address in secp_signers(hashlib.sha256(go_bytes).digest(), sig)
    assert req["nonce"] == 7 and req["projectID"] == "42"

    # sprout /message: keccak256 of the Go JSON without signature, v in {0, 1}.
    req = json.loads(
        agent.sign(board, "sprout", project_id=9, project_version="0.1", payload="hello")["request"]
    )
    signed = b'{"projectID":9,"projectVersion":"0.1","data":"hello"}'
    sig65 = bytes.fromhex(req["signature"][2:])
    assert sig65[64] in (0, 1)
    rec = coincurve.PublicKey.from_signature_and_message(sig65, k256(signed), hasher=None)
    assert rec.format(False) == pub

    # ioID Permit (EIP-712), recovered by eth-account.
    owner = "0x000000000000000000000000000000000000dEaD"
    out = agent.sign(board, "ioid", owner=owner, nonce=3, chain_id=4690)
    typed = encode_typed_data(full_message=permit_typed(owner, 3, 4690))
    sig65 = bytes.fromhex(out["signature"])
    assert sig65[64] in (27, 28)
    assert Account.recover_message(typed, signature=sig65).lower() == address

    # EIP-191 personal_sign.
    out = agent.sign(board, "eip191", payload="ioconnect says hi")
    recovered = Account.recover_message(
        encode_defunct(text="ioconnect says hi"), signature=bytes.fromhex(out["signature"])
    )
    assert recovered.lower() == address


def test_cose_after_rotation_to_p256(board: Board) -> None:
    old = agent.identity_rotate(board, "secp256k1")  # works with or without a key before
    new = agent.identity_rotate(board, "p256")
    assert new["curve"] == "p256" and new["did"] != old["did"]
    assert agent.info(board)["identity"]["did"] == new["did"]
    out = agent.sign(board, "cose", payload_hex=b"reading:23.4".hex(), kid="dev1")
    tag = cbor2.loads(bytes.fromhex(out["token"]))
    assert tag.tag == 18
    protected, _unprotected, payload, signature = tag.value
    assert payload == b"reading:23.4"
    assert cbor2.loads(protected) == {1: -7}  # ES256
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    pub = bytes.fromhex(new["public_key"])
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
    # Ethereum-style profiles need a secp256k1 key: a typed refusal, not a crash.
    with pytest.raises(AgentError) as err:
        agent.sign(board, "eip191", payload="x")
    assert err.value.code == "invalid_argument"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'{"v": 99, "id": 1, "op": "info"}', "unsupported_version"),
        (b'{"v": 1, "id": 1, "op": "format_flash"}', "unknown_op"),
        (b'{"v": 1, "id": 1, "op": "identity.create", "curve": 5}', "bad_request"),
        (b'{"v": 1, "id": 1, "op": "identity.rotate", "curve": "rsa"}', "bad_request"),
        (b'{"v": 1, "id": 1, "op": "sign", "profile": "nope", "args": {}}', "bad_request"),
        (
            b'{"v": 1, "id": 1, "op": "sign", "profile": "eip191", "args": {"payload_hex": "zz"}}',
            "bad_request",
        ),
        (
            b'{"v": 1, "id": 1, "op": "config.set", "key": "mqtt.port", "value": 70000}',
            "invalid_config",
        ),
        (b'{"v": 1, "id": 1, "op": "config.set", "key": "no.such", "value": 1}', "invalid_config"),
    ],
)
def test_bad_requests_get_typed_errors_and_the_device_keeps_serving(
    board: Board, raw: bytes, code: str
) -> None:
    # With a key, so a bad signing request is judged on its arguments (without one,
    # the agent answers no_identity before it looks at them).
    if agent.info(board)["identity"]["state"] == "none":
        agent.identity_create(board, "secp256k1")
    out, err = board.transport.exec_raw(agent.CALL % repr(raw).encode())
    assert err == b""  # a typed answer, never a traceback
    answer = agent.parse_frame(out)
    assert answer["ok"] is False
    assert answer["error"]["code"] == code, answer
    assert agent.info(board)["api"] == agent.API_VERSION


def test_stray_output_around_the_frame(board: Board) -> None:
    noisy = (
        b"print('debug \\x1eIOC1 12 00000000 {\"ok\": true}');"
        + agent.CALL % b'b\'{"v":1,"id":5,"op":"config.get"}\''
        + b";print('more noise')"
    )
    answer = agent.parse_frame(board.exec(noisy))
    assert answer["id"] == 5 and answer["ok"] is True


def test_config_validation_and_secrets(board: Board) -> None:
    assert agent.config_set(board, "mqtt.port", 8883) == 8883
    assert agent.config_set(board, "wifi.password", "hunter22") == "<set>"
    assert agent.config_set(board, "w3bstream.project_id", "1234") == "1234"
    settings = agent.config_get(board)
    assert settings["mqtt.port"] == 8883
    assert settings["wifi.password"] == "<set>"  # never read back
    with pytest.raises(AgentError) as err:
        agent.config_set(board, "w3bstream.project_id", "12a")
    assert err.value.code == "invalid_config"
    assert agent.config_set(board, "mqtt.port", None) is None
    assert "mqtt.port" not in agent.config_get(board)
