"""`ioconnect identity new|show`: in-process through main(), once through the
installed console script; the host recomputes every printed identifier from the
printed public key with independent libraries."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import base58
import bech32
import coincurve
import pytest
from clirun import run_cli
from conftest import RunDevice
from Crypto.Hash import keccak
from cryptography.hazmat.primitives.asymmetric import ec
from ioconnect_host import __version__
from ioconnect_host.cli import main
from ioconnect_host.identity import Identity, IdentityError, new_identity, show_identity

CODEC = {"secp256k1": b"\xe7\x01", "p256": b"\x80\x24", "ed25519": b"\xed\x01"}

# Test-only peek at the secret: decode the key file with the store's internal
# parser on the device (no public API hands the secret out).
PEEK_SECRET = """
import json
from ioconnect import keys
with open("identity.key", "rb") as f:
    print(json.dumps(keys._decode(f.read())[1].hex()))
"""


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def check_identity(data: dict[str, Any]) -> None:
    """Recompute DIDs and addresses from the printed public key, on the host."""
    curve = data["curve"]
    pub = bytes.fromhex(data["public_key"])
    if curve == "ed25519":
        assert len(pub) == 32
        raw = pub
        assert data["address"] is None and data["io_address"] is None
        assert data["did"] == data["did_key"]
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(pub)}
        kid = data["did"] + "#Key-ed25519-1"
    else:
        if curve == "secp256k1":
            raw = coincurve.PublicKey(pub).format(True)  # parses: the point is on the curve
        else:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
            nums = key.public_numbers()
            raw = bytes([2 + (nums.y & 1)]) + nums.x.to_bytes(32, "big")
        addr = keccak.new(digest_bits=256, data=pub[1:]).digest()[12:]
        assert data["address"] == "0x" + addr.hex()
        assert data["did"] == "did:io:0x" + addr.hex()
        five = bech32.convertbits(list(addr), 8, 5)
        assert five is not None
        assert data["io_address"] == bech32.bech32_encode("io", five)
        crv = "secp256k1" if curve == "secp256k1" else "P-256"
        jwk = {"kty": "EC", "crv": crv, "x": b64u(pub[1:33]), "y": b64u(pub[33:])}
        kid = data["did"] + ("#Key-secp256k1-1" if curve == "secp256k1" else "#Key-p256-1")
    assert data["did_key"] == "did:key:z" + base58.b58encode(CODEC[curve] + raw).decode()
    doc = data["document"]
    assert doc["id"] == data["did"]
    assert doc["verificationMethod"] == [
        {"id": kid, "type": "JsonWebKey2020", "controller": data["did"], "publicKeyJwk": jwk}
    ]
    assert doc["authentication"] == [kid] and doc["assertionMethod"] == [kid]


def secret_forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        b64u(secret),
        str(int.from_bytes(secret, "big")),
    ]


@pytest.mark.parametrize("curve", ["secp256k1", "p256", "ed25519"])
def test_new_json_then_again_without_overwrite(
    capsys: pytest.CaptureFixture[str], device: RunDevice, tmp_path: Path, curve: str
) -> None:
    d = tmp_path / "dev"  # does not exist yet: created
    code, out, err = run_cli(capsys, "identity", "new", "--curve", curve, "--dir", str(d), "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["created"] is True and data["curve"] == curve
    assert data["key_file"] == str(d / "identity.key")
    check_identity(data)
    assert sorted(p.name for p in d.iterdir()) == ["identity.key"]
    key_file = (d / "identity.key").read_bytes()

    # The private key, read on the device for this test only, matches the
    # public key and appears nowhere in what was printed.
    [secret_hex] = device(PEEK_SECRET, fs_dir=d)
    secret = bytes.fromhex(secret_hex)
    if curve == "secp256k1":
        assert coincurve.PrivateKey(secret).public_key.format(False).hex() == data["public_key"]
    for form in secret_forms(secret):
        assert form not in out
    # ... and nothing printed is stored in the key file.
    for value in (data["did"], data["did_key"], data["public_key"], data["io_address"]):
        if value:
            assert value.encode() not in key_file

    # Again, asking for another curve: the key is shown, not replaced.
    other = "p256" if curve != "p256" else "secp256k1"
    code, out2, err = run_cli(capsys, "identity", "new", "--curve", other, "--dir", str(d))
    assert code == 0 and err == ""
    assert "already exists" in out2 and "not overwriting" in out2
    assert (d / "identity.key").read_bytes() == key_file
    assert data["did"] in out2 and data["public_key"] in out2
    for form in secret_forms(secret):
        assert form not in out2

    code, out3, _ = run_cli(capsys, "identity", "show", "--dir", str(d), "--json")
    shown = json.loads(out3)
    assert code == 0 and shown == dict(data, created=False)


def test_text_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "identity", "new", "--dir", str(tmp_path))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("Created a new secp256k1 identity")
    fields = dict(line.split(":", 1) for line in lines[1:8])
    data = {
        "curve": fields["Curve"].strip(),
        "did": fields["DID"].strip(),
        "did_key": fields["did"].strip().removeprefix("key:").strip(),
        "address": fields["Address"].strip(),
        "io_address": fields["IoTeX address"].strip(),
        "public_key": fields["Public key"].strip(),
    }
    assert lines[8] == "DID document:"
    data["document"] = json.loads("\n".join(lines[9:]))
    check_identity(data)
    assert data["did_key"].startswith("did:key:z")


def test_show_without_identity_and_bad_inputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "identity", "show", "--dir", str(tmp_path / "none"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("ioconnect: error: no identity in ")
    assert not (tmp_path / "none").exists()  # show creates nothing

    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, out, err = run_cli(capsys, "identity", "new", "--dir", str(a_file))
    assert code == 1 and err == (
        f"ioconnect: error: {a_file} is not a directory"
        " (--dir names the folder that holds identity.key, not a file)\n"
    )

    code, out, err = run_cli(capsys, "identity", "new", "--curve", "rsa", "--dir", str(tmp_path))
    assert code == 2 and "invalid choice" in err and not list(tmp_path.glob("*.key"))


def test_corrupt_key_file_is_reported_and_kept(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["identity", "new", "--dir", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    key = tmp_path / "identity.key"
    blob = bytearray(key.read_bytes())
    blob[20] ^= 1
    key.write_bytes(bytes(blob))
    for cmd in ("new", "show"):
        code, out, err = run_cli(capsys, "identity", cmd, "--dir", str(tmp_path))
        assert code == 1 and out == ""
        assert err == (
            f"ioconnect: error: {key}: checksum mismatch (file corrupt) (device KeyStoreError)\n"
        )
        assert "Traceback" not in err
    assert key.read_bytes() == bytes(blob)  # never overwritten


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "--version") == (0, f"ioconnect {__version__}\n", "")
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "identity" in out
    code, out, _ = run_cli(capsys, "identity", "new", "--help")
    assert code == 0 and "--curve" in out and "--dir" in out and "--json" in out
    code, out, err = run_cli(capsys)  # the exact line: test_cli_errors
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("ioconnect: error: give a command: identity, sim, ")


def test_library_api(tmp_path: Path) -> None:
    ident = new_identity(tmp_path, "p256")
    assert isinstance(ident, Identity) and ident.created and ident.curve == "p256"
    again = show_identity(tmp_path)
    assert again == Identity(**{**ident.__dict__, "created": False})
    check_identity(ident.to_json())
    with pytest.raises(IdentityError, match="unknown curve"):
        new_identity(tmp_path, "rsa")  # type: ignore[arg-type]


def test_console_script(tmp_path: Path) -> None:
    exe = shutil.which("ioconnect", path=str(Path(sys.executable).parent))
    assert exe, "the ioconnect console script is not installed in the venv"
    d = tmp_path / "dev"
    done = subprocess.run(
        [exe, "identity", "new", "--dir", str(d), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    check_identity(json.loads(done.stdout))
    done = subprocess.run(
        [exe, "identity", "show", "--dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("ioconnect: error: no identity") and done.stderr.count("\n") == 1
