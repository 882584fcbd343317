"""``ioconnect verify`` through ``main([...])``: messages signed by the real firmware
on a virtual board (agent sign ops, and a reading of the attestation code), and
by independent libraries (eth-account for EIP-191 and EIP-712, pycose for COSE
ES256/EdDSA, coincurve for W3bstream, sprout and COSE ES256K); then tampered,
forged and truncated copies, each refused with its own reason and exit status.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import base58
import cbor2
import coincurve
import pytest
from Crypto.Hash import keccak
from eth_account import Account
from eth_account.messages import encode_defunct
from ioconnect_host.boards import board_json
from ioconnect_host.cli import main
from ioconnect_host.frames import encode_frame
from ioconnect_host.inventory import Device, Inventory
from ioconnect_host.ports import BoardRef
from ioconnect_host.session import open_session
from ioconnect_sim.launch import start_board
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm
from pycose.keys import EC2Key, OKPKey
from pycose.keys.curves import P256, Ed25519
from pycose.messages import Sign1Message

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
REGISTRY_TESTNET = "0x0A7e595C7889dF3652A19aF52C18377bF17e027D"
OWNER = "0x" + "11" * 20
PAYLOAD = '{"timestamp":1700000000,"temp_c":21.5}'


def k256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def address(pub65: bytes) -> str:
    return "0x" + k256(pub65[1:])[12:].hex()


def did_key(codec: bytes, key: bytes) -> str:
    return "did:key:z" + base58.b58encode(codec + key).decode()


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Everything the firmware signs, made once on a virtual Pico over its pty."""
    state = tmp_path_factory.mktemp("verify-board")
    vb = start_board("rpi-pico", name=f"verify-{os.getpid()}", state_dir=state)
    (vb.config.flash_dir / "board.json").write_bytes(board_json("rpi-pico"))
    try:
        with open_session(BoardRef(port=vb.port, board="rpi-pico")) as s:
            k1 = s.call("identity.create", curve="secp256k1")
            out: dict[str, Any] = {"k1": k1}
            task_args = {"nonce": 5, "project_id": "42", "payload": PAYLOAD}
            out["task"] = s.call("sign", profile="w3bstream", args=task_args)["request"]
            keyed = {**task_args, "signed_keys": ["timestamp"]}
            out["task_keyed"] = s.call("sign", profile="w3bstream", args=keyed)["request"]
            sprout = {"project_id": 42, "project_version": "v1", "payload": "hello"}
            out["sprout"] = s.call("sign", profile="sprout", args=sprout)["request"]
            permit = {"owner": OWNER, "nonce": 3, "chain_id": 4690, "registry": REGISTRY_TESTNET}
            out["ioid"] = s.call("sign", profile="ioid", args=permit)
            out["eip191"] = s.call("sign", profile="eip191", args={"payload": "hello world"})
            cose = {"payload": PAYLOAD, "kid": k1["did"]}
            out["cose_k1"] = s.call("sign", profile="cose", args=cose)["token"]
            s.call("config.set", key="w3bstream.project_id", value="42")
            out["attest"] = s.call("attest", cose=True)  # the loop's own signing code
            for curve in ("p256", "ed25519"):
                ident = s.call("identity.rotate", curve=curve)
                args = {"payload": PAYLOAD, "kid": ident["did"]}
                token = s.call("sign", profile="cose", args=args)["token"]
                out[curve] = (ident, token)
        yield out
    finally:
        vb.stop()


def verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes | str, *opts: str
) -> tuple[int, str, str]:
    f = tmp_path / "msg"
    f.write_bytes(data.encode() if isinstance(data, str) else data)
    code = main(["verify", str(f), *opts])
    out, err = capsys.readouterr()
    return code, out, err


def verdict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes | str, *opts: str
) -> Any:
    code, out, err = verify(capsys, tmp_path, data, *opts, "--json")
    result = json.loads(out)
    assert (code == 0) == result["valid"], (code, out, err)
    return result


def refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes | str, *opts: str
) -> tuple[int, str]:
    """Exit status and the one stderr line of a refused message."""
    code, _out, err = verify(capsys, tmp_path, data, *opts)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


def field(result: Any, name: str) -> dict[str, Any]:
    [found] = [f for f in result["fields"] if f["name"] == name]
    return found  # type: ignore[no-any-return]


# -- made by the firmware ------------------------------------------------------


def test_firmware_w3bstream_task(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    a = device["k1"]["address"]
    r = verdict(capsys, tmp_path, device["task"], "--address", a)
    assert r["kind"] == "w3bstream" and r["signer"] == a and r["signer_checked"]
    assert field(r, "nonce")["value"] == "5" and field(r, "projectID")["value"] == "42"
    sig = bytes.fromhex(json.loads(device["task"])["signature"][2:])
    assert field(r, "taskID")["value"] == "0x" + k256(sig + b"\x01").hex()
    # Signed keys change the digest: the project's list must be given.
    keyed = device["task_keyed"]
    assert verdict(capsys, tmp_path, keyed, "--address", a, "--signed-key", "timestamp")["valid"]
    code, line = refused(capsys, tmp_path, keyed, "--address", a)
    assert code == 1 and "not signed by " + a in line and "--signed-key" in line
    # As `ioconnect sign --json` prints it, and from stdin.
    wrapped = json.dumps({"request": device["task"], "verified_by_host": True})
    assert verdict(capsys, tmp_path, wrapped, "--did", device["k1"]["did"])["valid"]


def test_firmware_sprout_ioid_eip191(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    a = device["k1"]["address"]
    r = verdict(capsys, tmp_path, device["sprout"], "--address", a)
    assert r["kind"] == "sprout" and r["signer"] == a
    assert (
        field(r, "signed bytes")["value"] == '{"projectID":42,"projectVersion":"v1","data":"hello"}'
    )

    signed = device["ioid"]
    bundle = {"did": device["k1"]["did"], "ioid_permit": {
        "contract": "ioIDRegistry", "chain_id": 4690, "registry": REGISTRY_TESTNET, "owner": OWNER,
        "device": a, "nonce": 3, "digest": "0x" + signed["digest"],
        "signature": "0x" + signed["signature"],
    }}  # fmt: skip
    r = verdict(capsys, tmp_path, json.dumps(bundle))
    assert r["kind"] == "ioid" and r["signer"] == a and r["signer_checked"]
    assert field(r, "digest")["ok"] is True and field(r, "registry")["note"].startswith(
        "the official"
    )

    eip = {"msg": "hello world", "sig": "0x" + device["eip191"]["signature"], "address": a}
    r = verdict(capsys, tmp_path, json.dumps(eip))
    assert r["kind"] == "eip191" and r["signer"] == a and field(r, "v")["value"] in ("27", "28")


def test_firmware_cose_every_curve(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    k1 = device["k1"]
    r = verdict(capsys, tmp_path, device["cose_k1"], "--did", k1["did"])
    assert r["kind"] == "cose" and field(r, "protected alg")["value"] == "-47 (ES256K)"
    assert r["signer"] == k1["did"] and field(r, "payload")["value"] == PAYLOAD
    # As CBOR bytes too.
    assert verdict(capsys, tmp_path, bytes.fromhex(device["cose_k1"]))["valid"]
    ident, token = device["p256"]
    r = verdict(capsys, tmp_path, token, "--did", ident["did_key"])
    assert field(r, "protected alg")["value"] == "-7 (ES256)" and r["signer"] == ident["did"]
    # A P-256 did:io names no key: the key must come from somewhere.
    code, line = refused(capsys, tmp_path, token)
    assert code == 2 and "no p256 public key" in line
    r = verdict(capsys, tmp_path, token, "--public-key", ident["public_key"], "--curve", "p256")
    assert r["valid"] and r["signer_checked"]
    ident, token = device["ed25519"]
    r = verdict(capsys, tmp_path, token)  # kid = did:key: self-contained
    assert field(r, "protected alg")["value"] == "-8 (EdDSA)" and r["signer"] == ident["did"]


def test_firmware_loop_frame(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    reading = device["attest"]
    frame = {
        "event": "task",
        "nonce": reading["nonce"],
        "body": reading["request"],
        "cose": reading["cose"],
    }
    a = device["k1"]["address"]
    r = verdict(capsys, tmp_path, encode_frame(frame), "--address", a)
    assert r["kind"] == "frame" and r["signer"] == a
    assert [p["kind"] for p in r["parts"]] == ["w3bstream", "cose"]
    assert all(p["valid"] for p in r["parts"])
    # The frame's nonce must be the signed one.
    code, line = refused(capsys, tmp_path, encode_frame({**frame, "nonce": frame["nonce"] + 1}))
    assert code == 1 and "signed body" in line
    # A COSE token over another reading than the task's.
    other = bytes.fromhex(device["cose_k1"]).hex()
    code, line = refused(capsys, tmp_path, encode_frame({**frame, "cose": other}), "--address", a)
    assert code == 1 and "COSE token signs another payload" in line
    damaged = bytearray(encode_frame(frame))
    damaged[-5] ^= 1
    code, line = refused(capsys, tmp_path, bytes(damaged))
    assert code == 2 and "frame is damaged" in line


# -- made by independent libraries --------------------------------------------


def test_eth_account_eip191_and_permit(capsys: Any, tmp_path: Path) -> None:
    acct = Account.create()
    signed = Account.sign_message(encode_defunct(text="I am a device"), acct.key)
    eip = {"msg": "I am a device", "sig": "0x" + signed.signature.hex().removeprefix("0x")}
    r = verdict(capsys, tmp_path, json.dumps(eip), "--address", acct.address)
    assert r["signer"] == acct.address.lower()

    domain = {
        "name": "ioIDRegistry",
        "version": "1",
        "chainId": 4690,
        "verifyingContract": REGISTRY_TESTNET,
    }
    types = {"Permit": [{"name": "owner", "type": "address"}, {"name": "nonce", "type": "uint256"}]}
    sm = Account.sign_typed_data(acct.key, domain, types, {"owner": OWNER, "nonce": 9})
    permit = {"chain_id": 4690, "registry": REGISTRY_TESTNET, "owner": OWNER, "nonce": 9,
              "device": acct.address, "digest": "0x" + bytes(sm.message_hash).hex(),
              "signature": "0x" + bytes(sm.signature).hex()}  # fmt: skip
    r = verdict(capsys, tmp_path, json.dumps(permit))
    assert r["valid"] and r["signer"] == acct.address.lower()


def coincurve_task(key: coincurve.PrivateKey, nonce: int, payload: str) -> bytes:
    head = json.dumps({"nonce": nonce, "projectID": "7"}, separators=(",", ":"))[:-1]
    signed = f'{head},"payload":{payload}}}'.encode()
    sig = key.sign_recoverable(hashlib.sha256(signed).digest(), hasher=None)[:64]
    return signed[:-1] + b',"signature":"0x' + sig.hex().encode() + b'"}'


def es256k_token(key: coincurve.PrivateKey, payload: bytes, kid: bytes) -> bytes:
    protected = cbor2.dumps({1: -47})
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    sig = key.sign_recoverable(tbs)[:64]  # sha256 of the Sig_structure
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {4: kid}, payload, sig]))


def test_coincurve_task_sprout_es256k(capsys: Any, tmp_path: Path) -> None:
    key = coincurve.PrivateKey()
    a = address(key.public_key.format(compressed=False))
    body = coincurve_task(key, 9, '{"t":1}')
    assert verdict(capsys, tmp_path, body, "--address", a)["signer"] == a

    signed = b'{"projectID":7,"projectVersion":"0.1","data":"x"}'
    sig = key.sign_recoverable(k256(signed), hasher=None)
    msg = {"projectID": 7, "projectVersion": "0.1", "data": "x", "signature": "0x" + sig.hex()}
    assert verdict(capsys, tmp_path, json.dumps(msg), "--address", a)["signer"] == a

    token = es256k_token(key, b"reading", f"did:io:{a}".encode())
    r = verdict(capsys, tmp_path, token)
    assert r["signer"] == f"did:io:{a}" and field(r, "kid matches key")["ok"] is True
    k_did = did_key(b"\xe7\x01", key.public_key.format(compressed=True))
    assert verdict(capsys, tmp_path, token, "--did", k_did)["signer_checked"]


def pycose_token(curve: str, payload: bytes, key: Any = None) -> tuple[bytes, str, Any]:
    """(tagged token, did:key of the signer, key) made by pycose."""
    if curve == "ed25519":
        key = key or OKPKey.generate_key(crv=Ed25519)
        kid, alg = did_key(b"\xed\x01", key.x), EdDSA
    else:
        key = key or EC2Key.generate_key(crv=P256)
        prefix = b"\x02" if key.y[-1] % 2 == 0 else b"\x03"
        kid, alg = did_key(b"\x80\x24", prefix + key.x), Es256
    msg = Sign1Message(phdr={Algorithm: alg}, uhdr={KID: kid.encode()}, payload=payload)
    msg.key = key
    return msg.encode(), kid, key


@pytest.mark.parametrize("curve", ["p256", "ed25519"])
def test_pycose_tokens(curve: str, capsys: Any, tmp_path: Path) -> None:
    token, kid, _key = pycose_token(curve, b'{"a":1}')
    r = verdict(capsys, tmp_path, token, "--did", kid)
    assert r["valid"] and r["signer_checked"] and field(r, "payload")["value"] == '{"a":1}'
    # Forged: another key signs, but the kid names the first key.
    forged, _, _ = pycose_token(curve, b'{"a":1}')
    forged_msg = list(cbor2.loads(forged).value)
    forged_msg[1] = {4: kid.encode()}
    code, line = refused(capsys, tmp_path, cbor2.dumps(cbor2.CBORTag(18, forged_msg)))
    assert code == 1 and "signature does not verify with the kid's key" in line


# -- tampered, forged, truncated -------------------------------------------------


def test_tampered_task(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    a = device["k1"]["address"]
    task = device["task"]
    code, line = refused(capsys, tmp_path, task.replace("21.5", "99.5"), "--address", a)
    assert code == 1 and f"not signed by {a}" in line
    forged = coincurve_task(coincurve.PrivateKey(), 5, PAYLOAD)  # someone else's key
    code, line = refused(capsys, tmp_path, forged, "--did", device["k1"]["did"])
    assert code == 1 and f"not signed by {a}" in line
    sig = bytes.fromhex(json.loads(task)["signature"][2:])
    high = sig[:32] + (N - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    code, line = refused(capsys, tmp_path, task.replace(sig.hex(), high.hex()), "--address", a)
    assert code == 1 and "high-S" in line
    code, line = refused(capsys, tmp_path, task[: len(task) // 2], "--address", a)
    assert code == 2 and "looks like JSON but is not" in line
    code, line = refused(capsys, tmp_path, task.replace('"nonce":5', '"nonce":0'))
    assert code == 2 and "nonce must be an integer" in line


def test_tampered_cose(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    token = bytes.fromhex(device["cose_k1"])
    k1 = device["k1"]
    flipped = token.replace(b"21.5", b"21.6")
    code, line = refused(capsys, tmp_path, flipped)
    assert code == 1 and f"ES256K signature was not made by {k1['address']}" in line
    code, line = refused(capsys, tmp_path, token[:-10])
    assert code == 2 and "COSE token is truncated" in line
    code, line = refused(capsys, tmp_path, token + b"\x00")
    assert code == 2 and "1 bytes after its end" in line
    # Signed by the device, but under another algorithm id than it names.
    msg = list(cbor2.loads(token).value)
    msg[0] = cbor2.dumps({1: -35})
    code, line = refused(capsys, tmp_path, cbor2.dumps(cbor2.CBORTag(18, msg)))
    assert code == 1 and "-35 (ES384) is not ES256K, ES256 or EdDSA" in line
    # Valid signature from the claimed key, but a kid naming someone else.
    key = coincurve.PrivateKey()
    kid = f"did:io:0x{'22' * 20}".encode()
    pub = key.public_key.format(compressed=False).hex()
    code, line = refused(capsys, tmp_path, es256k_token(key, b"x", kid), "--public-key", pub)
    assert code == 1 and "is not the key that signed" in line
    # The token is the device's, the claim is another device.
    _ident, p256_token = device["p256"]
    code, line = refused(capsys, tmp_path, p256_token, "--did", k1["did_key"])
    assert code == 1 and "p256" in line and "secp256k1" in line


def test_tampered_permit_eip191_sprout(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    a = device["k1"]["address"]
    signed = device["ioid"]
    permit = {"chain_id": 4690, "registry": REGISTRY_TESTNET, "owner": OWNER, "nonce": 3,
              "device": a, "digest": "0x" + signed["digest"],
              "signature": "0x" + signed["signature"]}  # fmt: skip
    thief = "0x" + "66" * 20
    code, line = refused(capsys, tmp_path, json.dumps({**permit, "owner": thief}))
    assert code == 1 and "digest is not the EIP-712 digest" in line
    # The thief recomputes the digest too: the signature then names another signer.
    from ioconnect_host.verify import ioid_permit_digest

    digest = "0x" + ioid_permit_digest(thief, 3, 4690, REGISTRY_TESTNET).hex()
    stolen = {**permit, "owner": thief, "digest": digest}
    code, line = refused(capsys, tmp_path, json.dumps(stolen))
    assert code == 1 and f"not by {a} (the permit's 'device')" in line

    eip = {"msg": "hello world!", "sig": "0x" + device["eip191"]["signature"], "address": a}
    code, line = refused(capsys, tmp_path, json.dumps(eip))
    assert code == 1 and f"not by {a} (the message's 'address')" in line
    code, line = refused(capsys, tmp_path, json.dumps({**eip, "sig": eip["sig"][:-2]}))
    assert code == 2 and "'sig' has 64 bytes, not 65" in line

    body = json.loads(device["sprout"])
    body["signature"] = body["signature"][:-2] + "1b"  # v 27: sprout wants 0/1
    code, line = refused(capsys, tmp_path, json.dumps(body), "--address", a)
    assert code == 1 and "v=27 is not 0 or 1" in line


def test_usage_errors(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    code, line = refused(capsys, tmp_path, b"hello there")
    assert code == 2 and "cannot tell what this is" in line
    code, line = refused(capsys, tmp_path, '{"foo": 1}')
    assert code == 2 and "keys foo" in line
    k1 = device["k1"]
    code, line = refused(capsys, tmp_path, device["task"], "--did", k1["did"], "--address", OWNER)
    assert code == 2 and "different identities" in line
    code, line = refused(capsys, tmp_path, "")
    assert code == 2 and "is empty" in line
    assert main(["verify", str(tmp_path / "absent")]) == 2
    assert "absent: No such file" in capsys.readouterr().err
    # Named kind that does not fit.
    code, line = refused(capsys, tmp_path, device["task"], "--kind", "cose")
    assert code == 2 and "COSE" in line


def test_text_explains_field_by_field(device: dict[str, Any], capsys: Any, tmp_path: Path) -> None:
    code, out, err = verify(capsys, tmp_path, device["task"], "--address", device["k1"]["address"])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "w3bstream: VALID"
    names = [line.split(":")[0].split()[-1] for line in lines[1:]]
    assert names[:3] == ["nonce", "projectID", "payload"]
    assert any(line.startswith("  ok  signer:") for line in lines)
    code, out, err = verify(capsys, tmp_path, device["task"])
    assert code == 0 and "the signer was not compared with anyone" in out


def test_stdin_and_inventory_key(
    device: dict[str, Any], capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(device["task"].encode())))
    assert main(["verify", "-", "--address", device["k1"]["address"]]) == 0
    assert capsys.readouterr().out.startswith("w3bstream: VALID")
    # A P-256 did:io names no key; the inventory has it.
    ident, token = device["p256"]
    inv = tmp_path / "inv.sqlite3"
    Inventory(inv).record(Device(
        did=ident["did"], address=ident["address"], public_key=ident["public_key"], curve="p256",
        board="rpi-pico", usb_serial=None, firmware="0.1.0", project_id="42",
        project_version=None, provisioned_at="2026-01-01T00:00:00Z",
        updated_at="2026-01-01T00:00:00Z",
    ))  # fmt: skip
    r = verdict(capsys, tmp_path, token, "--did", ident["did"], "--inventory", str(inv))
    assert r["valid"] and r["signer_checked"]
    assert field(r, "public key")["note"] == f"the key of {ident['did']}"
    code, line = refused(
        capsys, tmp_path, token, "--did", device["k1"]["did"], "--inventory", str(inv)
    )
    assert code == 1 and f"no device {device['k1']['did']}" in line


def test_provision_bundle(capsys: Any, tmp_path: Path) -> None:
    """The bundle `ioconnect provision --owner` writes, as it is written."""
    with start_board("rpi-pico", name=f"verify-prov-{os.getpid()}", state_dir=tmp_path / "b") as vb:
        bundle = tmp_path / "bundle.json"
        inv = tmp_path / "inv.sqlite3"
        code = main([
            "provision", "--port", vb.port, "--project-id", "7", "--owner", OWNER,
            "--chain-id", "4690", "--nonce", "11", "--out", str(bundle), "--inventory", str(inv),
        ])  # fmt: skip
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    did = json.loads(bundle.read_text())["did"]
    r = verdict(capsys, tmp_path, bundle.read_bytes(), "--did", did, "--inventory", str(inv))
    assert r["kind"] == "ioid" and r["valid"] and field(r, "nonce")["value"] == "11"
    claims = [f for f in r["fields"] if f["name"] == "claimed signer"]
    assert [c["ok"] for c in claims] == [True, True]  # the bundle's device, and the inventory's
    other = json.loads(bundle.read_text())
    other["ioid_permit"]["nonce"] = 12  # a permit for another registry nonce
    code, line = refused(capsys, tmp_path, json.dumps(other))
    assert code == 1 and "digest is not the EIP-712 digest" in line
