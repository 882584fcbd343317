"""``ioconnect provision`` on virtual boards: idempotent, --rotate, settings read back,
board.json and the CA written atomically, the registration bundle (its ioID permit
recovered with eth-account and coincurve), and every bad option refused in one line
before the board is touched.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import coincurve
import pytest
from clirun import error_message, run_cli
from Crypto.Hash import keccak
from eth_account import Account
from eth_account.messages import encode_typed_data
from ioconnect_host import agent
from ioconnect_host.ports import select_port
from ioconnect_host.provision import ProvisionOptions, provision
from ioconnect_host.session import open_session
from ioconnect_host.transport import DeviceExecError, SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard, write_faults
from vectors import permit_typed

OWNER = "0x000000000000000000000000000000000000dEaD"


def provision_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = run_cli(capsys, "provision", *argv, "--json")
    assert code == 0, err
    result: dict[str, object] = json.loads(out)
    return result


def k256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


@pytest.fixture
def pico(tmp_path: Path) -> Iterator[VirtualBoard]:
    with start_board("rpi-pico-w", name="prov-pico", state_dir=tmp_path / "state") as vb:
        yield vb


def test_idempotent_then_rotate(
    pico: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.sqlite3"
    out = tmp_path / "b.json"
    common = ["--port", pico.port, "--project-id", "42", "--inventory", str(inv), "--out", str(out)]
    first = provision_json(capsys, *common, "--project-version", "0.1")
    bundle1 = json.loads(out.read_text())
    second = provision_json(capsys, *common, "--project-version", "0.2")
    assert second["did"] == first["did"]
    assert (first["created"], second["created"], second["rotated"]) == (True, False, False)
    bundle2 = json.loads(out.read_text())
    assert bundle2["public_key"] == bundle1["public_key"]
    assert bundle2["did_document"] == bundle1["did_document"]
    code, shown, _ = run_cli(
        capsys, "inventory", "show", str(first["did"]), "--inventory", str(inv), "--json"
    )
    assert code == 0
    row = json.loads(shown)
    assert row["project_version"] == "0.2"  # re-provisioning updates the row
    rows = sqlite3.connect(inv).execute("SELECT count(*) FROM devices").fetchone()[0]
    assert rows == 1

    third = provision_json(capsys, *common, "--rotate")
    assert third["did"] != first["did"] and third["rotated"] is True
    assert json.loads(out.read_text())["did"] == third["did"]
    with SerialTransport(pico.port) as t:
        assert agent.info(t)["identity"]["did"] == third["did"]
    _, listed, _ = run_cli(capsys, "inventory", "list", "--inventory", str(inv), "--json")
    assert {d["did"] for d in json.loads(listed)} == {first["did"], third["did"]}


def test_bundle_settings_files_and_permit(
    pico: VirtualBoard,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(
        b"-----BEGIN CERTIFICATE-----\n" + b"A" * 1500 + b"\n-----END CERTIFICATE-----\n"
    )
    monkeypatch.chdir(tmp_path)  # the bundle goes to ./<address>.json by default
    summary = provision_json(
        capsys, "--port", pico.port, "--project-id", "7", "--wifi-ssid", "lab", "--wifi-password",
        "pw", "--broker", "mqtt://broker.local:1884", "--ca", str(ca), "--owner", OWNER,
        "--chain-id", "4690", "--nonce", "5", "--inventory", str(tmp_path / "i.sqlite3"),
    )  # fmt: skip
    address = str(summary["address"])
    assert summary["bundle"] == str(tmp_path / f"{address}.json")
    assert summary["config"] == {
        "w3bstream.project_id": "7",
        "wifi.ssid": "lab",
        "wifi.password": "<set>",
        "mqtt.host": "broker.local",
        "mqtt.port": 1884,
        "mqtt.tls": False,  # the firmware has the setting (ioconnect.config)
    }
    flash = pico.config.flash_dir
    assert (flash / "ca.pem").read_bytes() == ca.read_bytes()
    assert summary["files"] == {
        "board.json": hashlib.sha256((flash / "board.json").read_bytes()).hexdigest(),
        "ca.pem": hashlib.sha256(ca.read_bytes()).hexdigest(),
    }
    assert json.loads((flash / "config.json").read_text())["wifi.password"] == "pw"

    bundle = json.loads((tmp_path / f"{address}.json").read_text())
    pub = bytes.fromhex(bundle["public_key"])
    assert bundle["address"] == "0x" + k256(pub[1:])[12:].hex() == address
    assert bundle["did"] == "did:io:" + address
    doc = json.dumps(bundle["did_document"], separators=(",", ":"), sort_keys=True).encode()
    assert bundle["did_document_sha256"] == "0x" + hashlib.sha256(doc).hexdigest()

    permit = bundle["ioid_permit"]
    assert (permit["owner"], permit["nonce"], permit["chain_id"]) == (OWNER, 5, 4690)
    assert permit["registry"] == "0x0A7e595C7889dF3652A19aF52C18377bF17e027D"
    sig = bytes.fromhex(permit["signature"][2:])
    assert permit["r"] == "0x" + sig[:32].hex() and permit["s"] == "0x" + sig[32:64].hex()
    assert permit["v"] == sig[64] and sig[64] in (27, 28)
    typed = encode_typed_data(full_message=permit_typed(OWNER, 5, 4690))
    assert Account.recover_message(typed, signature=sig).lower() == address
    digest = bytes.fromhex(permit["digest"][2:])
    rec = coincurve.PublicKey.from_signature_and_message(
        sig[:64] + bytes([sig[64] - 27]), digest, hasher=None
    )
    assert rec.format(False) == pub


def test_mqtts_needs_the_firmware_tls_setting(
    pico: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SerialTransport(pico.port) as t:
        try:
            agent.config_get(t, "mqtt.tls")
            has_tls = True
        except agent.AgentError:
            has_tls = False
    code, out, err = run_cli(
        capsys, "provision", "--port", pico.port, "--project-id", "1", "--broker",
        "mqtts://b.example", "--out", str(tmp_path / "b.json"), "--inventory",
        str(tmp_path / "i"), "--json",
    )  # fmt: skip
    if has_tls:  # once the firmware has the setting
        assert code == 0, err
        config = json.loads(out)["config"]
        assert config["mqtt.port"] == 8883 and config["mqtt.tls"] in (True, 1)
    else:
        assert code == 1
        assert error_message(err) == (
            "the board's firmware has no mqtt.tls setting, so it cannot use mqtts:// "
            "(update the firmware, or use an mqtt:// broker)"
        )
        assert not (tmp_path / "b.json").exists()


def test_ed25519_identity_and_no_permit(
    pico: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = ["--inventory", str(tmp_path / "i.sqlite3")]
    out = ["--out", str(tmp_path / "b.json")]
    summary = provision_json(
        capsys, "--port", pico.port, "--project-id", "3", "--curve", "ed25519", *inv, *out
    )
    assert summary["curve"] == "ed25519" and summary["address"] is None
    assert str(summary["did"]).startswith("did:key:z6Mk")
    code, _, err = run_cli(
        capsys, "provision", "--port", pico.port, "--project-id", "3", "--owner", OWNER,
        "--nonce", "1", *inv, *out,
    )  # fmt: skip
    assert code == 1
    assert error_message(err) == (
        "ioID registration needs a secp256k1 identity; this board's is ed25519 "
        "(--rotate --curve secp256k1)"
    )


BAD = [
    (["--project-id", "abc"], "--project-id 'abc' must be a decimal number (up to 20 digits)"),
    (["--project-id", "1", "--wifi-ssid", "x"], "--wifi-ssid and --wifi-password go together"),
    (
        ["--project-id", "1", "--broker", "http://x"],
        "--broker 'http://x': scheme must be mqtt:// or mqtts://",
    ),
    (
        ["--project-id", "1", "--broker", "mqtt://h:99999"],
        "--broker 'mqtt://h:99999': port must be 1..65535",
    ),
    (
        ["--project-id", "1", "--broker", "mqtt://h/topic"],
        "--broker 'mqtt://h/topic': expected mqtt[s]://host[:port] and nothing else",
    ),
    (["--project-id", "1", "--ca", "/no/such.pem"], "--ca /no/such.pem: no such file"),
    (
        ["--project-id", "1", "--owner", OWNER],
        "--owner needs --nonce (the registry's nonce for the device)",
    ),
    (
        ["--project-id", "1", "--owner", "0x12", "--nonce", "1"],
        "owner must be 0x and 40 hex digits, not '0x12'",
    ),
    (
        ["--project-id", "1", "--owner", OWNER, "--nonce", "1", "--chain-id", "1"],
        "no ioID registry known for chain 1 (IoTeX mainnet 4689 or testnet 4690)",
    ),
    (["--project-id", "1", "--nonce", "1"], "--nonce and --chain-id only make sense with --owner"),
    (["--project-id", "1", "--owner", OWNER, "--nonce", "-1"], "--nonce -1 must not be negative"),
    (["--project-id", "1", "--out", "/no/dir/b.json"], "--out /no/dir/b.json: no folder /no/dir"),
    (
        ["--project-id", "1", "--board", "nano"],
        "unknown board 'nano' (known boards: esp32, esp32-c3, esp32-s3, rpi-pico, rpi-pico-w)",
    ),
]


def test_bad_options_are_one_line_and_touch_nothing(
    pico: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.sqlite3"
    for argv, message in BAD:
        code, out, err = run_cli(
            capsys, "provision", "--port", pico.port, *argv, "--inventory", str(inv)
        )
        assert code == 1, argv
        assert error_message(err) == message
        assert out == ""
    assert not inv.exists()
    with SerialTransport(pico.port) as t:
        assert agent.info(t)["identity"] == {"state": "none"}
        assert agent.config_get(t) == {}
    assert not (pico.config.flash_dir / "board.json").exists()


def test_board_json_write_is_atomic_under_flash_faults(pico: VirtualBoard) -> None:
    with open_session(select_port(pico.port)) as board:
        first = board.put_file("board.json", b'{"a":1}')
        assert first == hashlib.sha256(b'{"a":1}').hexdigest()
        write_faults(pico.config.state_dir, {"flash": "enospc"})
        try:
            with pytest.raises(DeviceExecError) as err:
                board.put_file("board.json", b'{"b":2}' * 200)
            # The virtual flash raises a bare OSError(28) (ENOSPC); a board adds "[Errno 28]".
            assert err.value.traceback.splitlines()[-1] == "OSError: 28"
        finally:
            write_faults(pico.config.state_dir, {"flash": None})
        assert board.file_sha256("board.json") == first  # the old file, whole
    flash = pico.config.flash_dir
    assert (flash / "board.json").read_bytes() == b'{"a":1}'
    assert not (flash / "board.json.tmp").exists()


def test_library_api_records_and_returns(pico: VirtualBoard, tmp_path: Path) -> None:
    from ioconnect_host.inventory import Inventory

    inv = Inventory(tmp_path / "lib.sqlite3")
    steps: list[str] = []
    with open_session(select_port(pico.port)) as board:
        result = provision(
            board, ProvisionOptions(project_id="9"), inventory=inv, progress=steps.append
        )
    assert steps == ["checking the firmware", "identity", "settings", "board facts", "DID document"]
    assert result.board == "rpi-pico-w" and result.device is not None
    assert [d.did for d in inv.devices(project_id=9)] == [result.identity["did"]]
    assert inv.devices(project_id="8") == []


@pytest.mark.parametrize(
    ("machine", "reported", "usb_board", "expect"),
    [
        # real boards: the banner's "<board_name> with <mcu_name>" decides
        ("Generic ESP32S3 module with ESP32S3", "esp32", None, "esp32-s3"),
        ("Generic ESP32 module with ESP32", "esp32", None, "esp32"),
        ("Raspberry Pi Pico W with RP2040", "rp2", None, "rpi-pico-w"),
        # a custom build of a known chip: the chip, then the USB ids
        ("Custom C3 with ESP32C3", "esp32", None, "esp32-c3"),
        ("Someone's RP2040 board with RP2040", "rp2", "rpi-pico", "rpi-pico"),
        ("Someone's RP2040 board with RP2040", "rp2", None, None),
        # "esp32" is the platform of every ESP32 chip: never taken for the board
        ("Custom S3 with ESP32S3", "esp32", "esp32", "esp32-s3"),
        # the virtual board reports its definition's name
        ("linux [GCC 14.2.1] version", "rpi-pico", None, "rpi-pico"),
        ("linux [GCC 14.2.1] version", "linux", None, None),
        ("unknown", "unknown", "esp32", "esp32"),
    ],
)
def test_board_from_facts(
    machine: str, reported: str, usb_board: str | None, expect: str | None
) -> None:
    from ioconnect_host.provision import board_from_facts

    assert board_from_facts(machine, reported, usb_board) == expect


def test_text_output_says_what_was_kept(
    pico: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["provision", "--port", pico.port, "--project-id", "1", "--out", str(tmp_path / "b")]
    argv += ["--inventory", str(tmp_path / "i"), "--curve", "p256"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and out.splitlines()[0] == "Provisioned rpi-pico-w board: new identity"
    code, out, _ = run_cli(capsys, *argv[:-1], "secp256k1")
    assert code == 0
    assert out.splitlines()[0] == (
        "Provisioned rpi-pico-w board: existing identity kept "
        "(it is p256; --rotate to make a secp256k1 one)"
    )
    assert out.splitlines()[4] == f"Bundle:    {tmp_path / 'b'}"
