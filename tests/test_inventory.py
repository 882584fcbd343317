"""The SQLite inventory: idempotent on DID, typed API for the relay, versioned schema,
CSV/JSON export parsed back, and one-line errors for a bad file or an unknown device."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from clirun import error_message, run_cli
from ioconnect_host.inventory import SCHEMA_VERSION, Device, Inventory, InventoryError

A = Device(
    did="did:io:0x00000000000000000000000000000000000000aa",
    address="0x00000000000000000000000000000000000000aa",
    public_key="04" + "11" * 64,
    curve="secp256k1",
    board="esp32",
    usb_serial="ABC123",
    firmware="0.1.0",
    project_id="42",
    project_version="0.1",
    provisioned_at="2026-01-01T00:00:00Z",
    updated_at="2026-01-01T00:00:00Z",
)
B = replace(
    A,
    did="did:key:z6MkB",
    address=None,
    public_key="22" * 32,
    curve="ed25519",
    board="rpi-pico",
    usb_serial=None,
    project_id="7",
    project_version=None,
    provisioned_at="2026-01-02T00:00:00Z",
    updated_at="2026-01-02T00:00:00Z",
)


def test_record_is_idempotent_on_did(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "sub" / "inv.sqlite3")
    assert inv.devices() == []  # no file yet: no devices, nothing created
    assert not inv.path.exists()
    assert inv.record(A) == A
    assert inv.record(B) == B
    when = "2027-01-01T00:00:00Z"
    later = replace(
        A, firmware="0.2.0", project_version="0.2", provisioned_at=when, updated_at=when
    )
    stored = inv.record(later)
    # one row per DID; the first provisioning time is kept
    assert stored == replace(later, provisioned_at=A.provisioned_at)
    assert inv.devices() == [stored, B]
    assert inv.devices(project_id=42) == [stored]
    assert inv.devices(project_id="7") == [B]
    assert inv.get(A.address.upper().replace("0X", "0x")) == stored  # type: ignore[union-attr]
    assert inv.get(B.did) == B
    with pytest.raises(InventoryError, match="no device 0xdead in"):
        inv.get("0xdead")
    # the relay's and node's Approver: (project_id, address) -> bool
    assert inv.is_approved("42", A.address.upper().replace("0X", "0x"))  # type: ignore[union-attr]
    assert not inv.is_approved("7", A.address)  # type: ignore[arg-type]
    assert not inv.is_approved("42", "0x" + "00" * 20)
    assert not Inventory(tmp_path / "none.sqlite3").is_approved("42", A.address)  # type: ignore[arg-type]
    conn = sqlite3.connect(inv.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1


def test_export_csv_and_json_parse_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "inv.sqlite3"
    inv = Inventory(path)
    inv.record(A)
    inv.record(B)
    rows = list(csv.DictReader(io.StringIO(inv.export("csv"))))
    expect = [{k: "" if v is None else v for k, v in asdict(d).items()} for d in (A, B)]
    assert rows == expect
    assert json.loads(inv.export("json")) == [asdict(A), asdict(B)]

    out = tmp_path / "devices.csv"
    code, stdout, _ = run_cli(
        capsys, "inventory", "export", "--inventory", str(path), "-o", str(out)
    )
    assert code == 0 and stdout == ""
    assert list(csv.DictReader(out.open(newline=""))) == expect
    code, stdout, _ = run_cli(
        capsys, "inventory", "export", "--inventory", str(path), "--format", "json",
        "--project-id", "7",
    )  # fmt: skip
    assert code == 0 and json.loads(stdout) == [asdict(B)]
    code, stdout, _ = run_cli(capsys, "inventory", "list", "--inventory", str(path), "--json")
    assert json.loads(stdout) == [asdict(A), asdict(B)]
    code, stdout, _ = run_cli(capsys, "inventory", "show", A.did, "--inventory", str(path))
    assert code == 0 and f"usb_serial:      {A.usb_serial}" in stdout.splitlines()


def test_bad_inventories_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.sqlite3"
    code, _, err = run_cli(capsys, "inventory", "show", A.did, "--inventory", str(missing))
    assert code == 1
    assert error_message(err) == (
        f"no inventory at {missing} (provision a device first, or pass --inventory)"
    )
    code, out, _ = run_cli(capsys, "inventory", "list", "--inventory", str(missing))
    assert code == 0 and out == "no devices\n"

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    code, _, err = run_cli(capsys, "inventory", "list", "--inventory", str(junk))
    assert code == 1
    assert error_message(err) == f"inventory {junk} is unusable: file is not a database"
    assert junk.read_bytes() == b"this is not a database" * 100  # left as it was

    newer = tmp_path / "newer.sqlite3"
    sqlite3.connect(newer).execute("PRAGMA user_version = 99").connection.commit()
    code, _, err = run_cli(capsys, "inventory", "list", "--inventory", str(newer))
    assert code == 1
    assert error_message(err) == (
        f"inventory {newer} has schema 99; this ioconnect knows 1 (update ioconnect)"
    )

    path = tmp_path / "inv.sqlite3"
    Inventory(path).record(A)
    code, _, err = run_cli(capsys, "inventory", "show", "0xbeef", "--inventory", str(path))
    assert code == 1 and error_message(err) == f"no device 0xbeef in {path}"
    code, _, err = run_cli(capsys, "inventory", "export", "--inventory", str(path), "-o",
                       str(tmp_path / "no" / "dir.csv"))  # fmt: skip
    assert code == 1
    assert error_message(err).startswith(f"cannot write {tmp_path / 'no' / 'dir.csv'}: ")
    code, _, err = run_cli(
        capsys, "inventory", "export", "--inventory", str(path), "--format", "xml"
    )
    assert code == 2 and "invalid choice: 'xml'" in err
