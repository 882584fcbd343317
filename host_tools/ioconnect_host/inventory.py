"""The local device inventory: every provisioned device, one row per DID (SQLite).

``ioconnect provision`` records each device here; re-provisioning the same
device updates its row. The relay reads it to know the approved devices of a
project (:meth:`Inventory.devices`). The schema is versioned (SQLite
``user_version``); an inventory written by a newer ioconnect is refused, not
damaged.

Example:
    >>> inv = Inventory(default_inventory_path())
    >>> [d.address for d in inv.devices(project_id="42")]
    ['0x3f…']
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from .errors import IoconnectError
from .paths import home

__all__ = [
    "SCHEMA_VERSION",
    "Device",
    "ExportFormat",
    "Inventory",
    "InventoryError",
    "default_inventory_path",
]

#: Version of the table layout below (SQLite ``PRAGMA user_version``).
SCHEMA_VERSION = 1
ExportFormat = Literal["csv", "json"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    did TEXT PRIMARY KEY,
    address TEXT,
    public_key TEXT NOT NULL,
    curve TEXT NOT NULL,
    board TEXT,
    usb_serial TEXT,
    firmware TEXT,
    project_id TEXT,
    project_version TEXT,
    provisioned_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_address ON devices(address);
CREATE INDEX IF NOT EXISTS devices_project ON devices(project_id);
"""


class InventoryError(IoconnectError):
    """The inventory file cannot be used, or has no such device."""


@dataclass(frozen=True)
class Device:
    """One provisioned device.

    Attributes:
        did: ``did:io:0x…`` (``did:key:…`` for Ed25519); the row's key.
        address: ``0x…`` lowercase (None for Ed25519).
        public_key: hex, as the device reports it.
        curve: secp256k1, p256 or ed25519.
        board: board definition name.
        usb_serial: USB serial number of the board's port, if any.
        firmware: ioconnect firmware version at provisioning.
        project_id: W3bstream project id (decimal text).
        project_version: W3bstream project version.
        provisioned_at: first provisioning, ISO 8601 UTC.
        updated_at: latest provisioning, ISO 8601 UTC.
    """

    did: str
    address: str | None
    public_key: str
    curve: str
    board: str | None
    usb_serial: str | None
    firmware: str | None
    project_id: str | None
    project_version: str | None
    provisioned_at: str
    updated_at: str


_COLUMNS = [f.name for f in fields(Device)]


def default_inventory_path() -> Path:
    """``$IOCONNECT_HOME/inventory.sqlite3`` (default ``~/.ioconnect``)."""
    return home() / "inventory.sqlite3"


class Inventory:
    """The inventory in the SQLite file ``path`` (created on first write).

    Raises:
        InventoryError: the file is not an inventory, or is from a newer ioconnect.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_inventory_path()

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        if not write and not self.path.exists():
            raise InventoryError(
                f"no inventory at {self.path}", hint="provision a device first, or pass --inventory"
            )
        if self.path.exists() and self.path.is_dir():
            raise InventoryError(f"inventory {self.path} is a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=10.0)
        except sqlite3.Error as exc:
            raise InventoryError(f"cannot open inventory {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            self._migrate(conn)
            with conn:  # one transaction: all of a write or none of it
                yield conn
        except sqlite3.DatabaseError as exc:
            raise InventoryError(f"inventory {self.path} is unusable: {exc}") from exc
        finally:
            conn.close()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise InventoryError(
                f"inventory {self.path} has schema {version}; this ioconnect knows "
                f"{SCHEMA_VERSION}",
                hint="update ioconnect",
            )
        if version < SCHEMA_VERSION:
            with conn:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def record(self, device: Device) -> Device:
        """Insert ``device`` or update its row (same DID); keeps the first ``provisioned_at``.

        Returns:
            The row as stored.
        """
        row = asdict(device)
        names = ", ".join(_COLUMNS)
        marks = ", ".join(f":{c}" for c in _COLUMNS)
        kept = ("did", "provisioned_at")
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in kept)
        with self._connect(write=True) as conn:
            conn.execute(
                f"INSERT INTO devices ({names}) VALUES ({marks}) "
                f"ON CONFLICT(did) DO UPDATE SET {updates}",
                row,
            )
            stored = conn.execute("SELECT * FROM devices WHERE did = ?", (device.did,)).fetchone()
        return _device(stored)

    def devices(self, project_id: str | int | None = None) -> list[Device]:
        """Devices, oldest first; only those of ``project_id`` if given.

        An inventory that does not exist yet has no devices.
        """
        if not self.path.exists():
            return []
        with self._connect(write=False) as conn:
            if project_id is None:
                rows = conn.execute("SELECT * FROM devices ORDER BY provisioned_at, did")
            else:
                rows = conn.execute(
                    "SELECT * FROM devices WHERE project_id = ? ORDER BY provisioned_at, did",
                    (str(project_id),),
                )
            return [_device(r) for r in rows.fetchall()]

    def is_approved(self, project_id: str, address: str) -> bool:
        """True if device ``address`` (``0x…``, any case) was provisioned for ``project_id``.

        Has the relay's and node's ``Approver`` signature: pass ``inventory.is_approved``.
        An inventory that does not exist yet approves no device.
        """
        if not self.path.exists():
            return False
        with self._connect(write=False) as conn:
            row = conn.execute(
                "SELECT 1 FROM devices WHERE project_id = ? AND lower(address) = ?",
                (str(project_id), address.lower()),
            ).fetchone()
        return row is not None

    def get(self, did_or_address: str) -> Device:
        """The device with this DID or ``0x`` address (case-insensitive).

        Raises:
            InventoryError: no such device.
        """
        key = did_or_address.strip().lower()
        with self._connect(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM devices WHERE lower(did) = ? OR lower(address) = ?", (key, key)
            ).fetchone()
        if row is None:
            raise InventoryError(f"no device {did_or_address} in {self.path}")
        return _device(row)

    def export(self, fmt: ExportFormat, project_id: str | int | None = None) -> str:
        """All devices (or one project's) as CSV with a header row, or a JSON list."""
        devices = self.devices(project_id)
        if fmt == "json":
            return json.dumps([asdict(d) for d in devices], indent=2) + "\n"
        if fmt == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for d in devices:
                writer.writerow(asdict(d))
            return out.getvalue()
        raise InventoryError(f"unknown export format {fmt!r}", hint="csv or json")


def _device(row: sqlite3.Row) -> Device:
    return Device(**{c: row[c] for c in _COLUMNS})
