"""The rp2040 tier: the stock MicroPython Pico firmware on an emulated RP2040.

One board for the module (the emulator runs the chip 20-50 times slower than
silicon): started on the rp2040 engine with the firmware image in its flash but
for one module, which the host's own ``deploy`` sends over the serial port, an
identity created through the agent. Each test reads what it needs from that
board and leaves it as it found it (same identity, same firmware), so the
tests run in any order. Signatures are checked with independent host
libraries: coincurve (W3bstream, sprout), eth-account (EIP-191, ioID), cryptography
(COSE). Marker ``rp2040``: ``pytest -m rp2040`` runs only this tier.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cbor2
import coincurve
import pytest
import serial
from Crypto.Hash import keccak
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from ioconnect_host import agent
from ioconnect_host.cli import main
from ioconnect_host.deploy import MANIFEST
from ioconnect_host.ports import select_port
from ioconnect_host.transport import TransportError
from ioconnect_sim.launch import list_running
from rp2040board import Pico, deployed_pico, wait_for
from vectors import permit_typed

pytestmark = pytest.mark.rp2040

# Generous: the emulated chip is slow, and this machine may be busy.
_SETTLE_S = 900.0
# machine.reset_cause() on rp2 (mp ports/rp2/modmachine.c).
_PWRON_RESET = 1
_WDT_RESET = 3


@pytest.fixture(scope="module")
def pico(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pico]:
    state = tmp_path_factory.mktemp("rp2040-pico")
    with deployed_pico(state, "tier-pico") as board:
        yield board


def _keccak_address(pub65: bytes) -> str:
    return "0x" + keccak.new(digest_bits=256, data=pub65[1:]).digest()[-20:].hex()


def test_deploy_put_the_firmware_on_the_stock_pico(pico: Pico) -> None:
    # The board hashed its files and found the one module the image left out.
    assert pico.deployed.files_sent == [pico.held_back, MANIFEST]
    assert "ioconnect/agent.mpy" in pico.deployed.files_skipped
    assert pico.deployed.mpy_arch == "armv6m"  # compiled for the Cortex-M0+ it runs on
    with pico.session() as s:
        info = s.info()
    assert info["board"] == "Raspberry Pi Pico with RP2040"
    assert info["micropython"].startswith("1.28")
    assert info["firmware"] == "0.1.0" and info["api"] == agent.API_VERSION


def test_registry_and_port_selection_announce_a_slow_board(pico: Pico) -> None:
    (rec,) = [r for r in list_running() if r.name == "tier-pico"]
    assert rec.engine == "rp2040" and rec.slowness >= 20
    ref = select_port("sim:tier-pico")
    assert ref.port == pico.board.port and ref.slowness == rec.slowness


def test_identity_was_made_on_the_device(pico: Pico) -> None:
    ident = pico.identity
    assert ident["curve"] == "secp256k1"
    assert ident["address"] == _keccak_address(bytes.fromhex(ident["public_key"]))
    assert ident["did"] == "did:io:" + ident["address"]
    with pico.session() as s:
        assert agent.identity_show(s) == ident
        with pytest.raises(agent.AgentError) as err:
            agent.identity_create(s, "secp256k1")
        assert err.value.code == "identity_exists"


def test_each_profile_verifies_with_independent_libraries(pico: Pico) -> None:
    address = pico.identity["address"]
    pub = bytes.fromhex(pico.identity["public_key"])
    with pico.session() as s:
        w3b = agent.sign(s, "w3bstream", nonce=5, project_id="42", payload='{"t": 21.5}')
        sprout = agent.sign(s, "sprout", project_id=9, project_version="0.1", payload="hi")
        owner = "0x000000000000000000000000000000000000dEaD"
        ioid = agent.sign(s, "ioid", owner=owner, nonce=3, chain_id=4690)
        eip = agent.sign(s, "eip191", payload="ioconnect on a Pico")
        cose = agent.sign(s, "cose", payload_hex=b"reading:23.4".hex(), kid="pico")

    # W3bstream: sha256 of Go's json.Marshal of the task, signer found by either v.
    req = json.loads(w3b["request"])
    digest = hashlib.sha256(b'{"nonce":5,"projectID":"42","payload":{"t":21.5}}').digest()
    sig = bytes.fromhex(req["signature"][2:])
    signers = {
        coincurve.PublicKey.from_signature_and_message(sig + bytes([v]), digest, hasher=None)
        for v in (0, 1)
    }
    assert pub in {p.format(False) for p in signers}

    # sprout: keccak256 of the JSON without the signature, v in {0, 1}.
    body = b'{"projectID":9,"projectVersion":"0.1","data":"hi"}'
    sig65 = bytes.fromhex(json.loads(sprout["request"])["signature"][2:])
    k = keccak.new(digest_bits=256, data=body).digest()
    rec = coincurve.PublicKey.from_signature_and_message(sig65, k, hasher=None)
    assert rec.format(False) == pub

    # ioID Permit (EIP-712) and EIP-191, recovered by eth-account.
    typed = encode_typed_data(full_message=permit_typed(owner, 3, 4690))
    assert Account.recover_message(typed, signature=bytes.fromhex(ioid["signature"])).lower() == (
        address
    )
    signed = encode_defunct(text="ioconnect on a Pico")
    assert Account.recover_message(signed, signature=bytes.fromhex(eip["signature"])).lower() == (
        address
    )

    # COSE_Sign1 ES256K, verified by cryptography.
    tag = cbor2.loads(bytes.fromhex(cose["token"]))
    protected, _unprotected, payload, signature = tag.value
    assert tag.tag == 18 and payload == b"reading:23.4"
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub)
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))


def test_identity_survives_a_reset_and_a_power_cut(pico: Pico) -> None:
    did = pico.identity["did"]
    with pico.session():
        pass  # leaves the board in its friendly REPL
    with serial.Serial(pico.board.port, timeout=0.1) as port:
        port.write(b"\x03\x03import machine\rmachine.reset()\r")  # it never answers
    # rp2040py resets the chip inside its process, as the watchdog does on silicon.
    with pico.session() as s:
        assert s.transport.eval("__import__('machine').reset_cause()") == _WDT_RESET
        assert agent.identity_show(s)["did"] == did
    pico.board.power_cut()
    with pico.session() as s:
        assert s.transport.eval("__import__('machine').reset_cause()") == _PWRON_RESET
        assert agent.identity_show(s)["did"] == did


def test_a_power_cut_keeps_what_was_written_and_loses_what_was_not(pico: Pico) -> None:
    with pico.session() as s:
        s.exec("f=open('kept.txt','w'); f.write('on flash'); f.close()")
        # Written into littlefs's cache, never synced: not on flash yet.
        s.exec("g=open('cached.txt','w'); g.write('x' * 100)")
    pico.board.power_cut()
    with pico.session() as s:
        assert s.exec("print(open('kept.txt').read())").strip() == b"on flash"
        size = s.transport.eval(
            "(lambda os: os.stat('cached.txt')[6] if 'cached.txt' in os.listdir() else -1)"
            "(__import__('os'))"
        )
        s.exec("import os\nfor n in ('kept.txt', 'cached.txt'):\n try: os.remove(n)\n"
               " except OSError: pass")  # fmt: skip
    assert size in (-1, 0)  # the unsynced bytes are gone, as on silicon


def test_a_lost_answer_is_read_back_from_the_device(pico: Pico) -> None:
    # identity.rotate with a limit far below what the emulated chip needs: the
    # answer cannot arrive in time. The host must then report what the device
    # did, never "failed" for a key the device made.
    with pico.session() as s:
        before = agent.identity_show(s)
        marks = pico.console().count(b"\x04>")
        said = ""
        try:
            got = s.call("identity.rotate", curve="secp256k1", limit_s=0.5)
        except TransportError as exc:
            got, said = None, str(exc)
    # Whatever the board was doing has ended (interrupted or finished): its raw
    # REPL prompt came back.
    wait_for(lambda: pico.console().count(b"\x04>") > marks, _SETTLE_S, "board idle")
    with pico.session() as s:
        now = agent.identity_show(s)
        if now != before:
            # The board made a key: put the module's own back (rotate kept it as .bak).
            s.exec("import os\nos.rename('identity.key.bak', 'identity.key')")
    if got is None:
        assert now == before  # the host said "no new key": there is none
        assert "did not make a new key" in said
    else:
        assert now == got and now != before  # the host has the key the board made


def test_the_firmware_reads_the_chip_temperature_and_a_failed_sensor(pico: Pico) -> None:
    # The firmware's own sensor code on the chip's ADC 4, as its loop reads it.
    reading = (
        "__import__('ioconnect.sensors', None, None, ('Sensors',)).Sensors("
        "{'sensors': {'temperature': {'source': 'rp2_adc4'}}}).read_one('temperature')"
    )
    try:
        assert main(["sim", "fault", "tier-pico", "--sensor", "temperature=fail"]) == 0
        with pico.session() as s:
            failed = s.transport.eval(reading)
    finally:
        assert main(["sim", "fault", "tier-pico", "--sensor", "temperature=ok"]) == 0
    with pico.session() as s:
        healthy = s.transport.eval(reading)
    assert failed == {"error": "range"}  # 0 V is 437 C: outside every chip's range
    assert isinstance(healthy, dict) and abs(healthy["temp_c"] - 27.0) < 0.5  # the board file's


def test_mpremote_works_unchanged(pico: Pico) -> None:
    mpremote = Path(sys.executable).with_name("mpremote")
    done = subprocess.run(
        [str(mpremote), "connect", pico.board.port, "fs", "ls", ":ioconnect", "+",
         "exec", "import os; print(os.uname().machine)"],
        capture_output=True,
        text=True,
        timeout=_SETTLE_S,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "agent.mpy" in done.stdout and "Raspberry Pi Pico with RP2040" in done.stdout
