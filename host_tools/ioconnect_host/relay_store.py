"""The relay's durable state: high-water marks, the forward queue, dead letters.

Every signed reading the relay accepts is stored here before the broker gets
its acknowledgement, so a relay killed at any point loses nothing: what was
acknowledged is on disk, what was not is redelivered by the broker. Each
reading is kept once per (device, project, nonce): a second copy (QoS 1
redelivery, a device retrying after a lost ack) finds the first and gets its
status, so nothing is forwarded twice.

Two stores with one interface (:class:`RelayStore`): SQLite in WAL mode, the
embedded default, and PostgreSQL (:mod:`.relay_store_pg`) for relays on several
machines sharing one state. :func:`open_store` picks one from ``--store``.
Every method is one transaction; ``admit_many`` admits a batch in one
transaction (group commit: one disk flush for many readings, and the caller
acknowledges none of them before it returns).

Example:
    >>> store = SqliteStore(Path("relay.db"))
    >>> store.admit("0xab…", "42", 7, body).kind
    'queued'
    >>> [job] = store.claim(limit=10, lease_s=30)
    >>> store.finish(job.id, "accepted", task_id="0x…", reason="")
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from .errors import IoconnectError

__all__ = [
    "Admission",
    "Job",
    "RelayStore",
    "RelayStoreError",
    "SqliteStore",
    "Status",
    "Submission",
    "describe_store",
    "is_postgres_url",
    "open_store",
]

Status = Literal["queued", "accepted", "rejected"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS high_water (
    device  TEXT NOT NULL,
    project TEXT NOT NULL,
    nonce   INTEGER NOT NULL,
    PRIMARY KEY (device, project)
);
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    device      TEXT NOT NULL,
    project     TEXT NOT NULL,
    nonce       INTEGER NOT NULL,
    body        BLOB NOT NULL,
    received    REAL NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued',
    task_id     TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try    REAL NOT NULL DEFAULT 0,
    finished    REAL,
    UNIQUE (device, project, nonce)
);
CREATE INDEX IF NOT EXISTS queued ON messages (status, next_try) WHERE status = 'queued';
CREATE TABLE IF NOT EXISTS rejections (
    reason TEXT PRIMARY KEY,
    count  INTEGER NOT NULL
);
PRAGMA user_version = 1;
"""


@dataclass(frozen=True)
class Admission:
    """What ``admit`` did: ``queued`` (new), ``duplicate`` (seen: its ``status``),
    ``rejected`` (``reason``: ``replayed_nonce`` below the high-water mark,
    ``nonce_reused`` for another body) or ``full`` (at its bound: do not acknowledge)."""

    kind: Literal["queued", "duplicate", "rejected", "full"]
    status: Status | None = None
    task_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Submission:
    """A verified reading offered to ``admit_many``."""

    device: str
    project: str
    nonce: int
    body: bytes


@dataclass(frozen=True)
class Job:
    """A queued reading to forward."""

    id: int
    device: str
    project: str
    nonce: int
    body: bytes
    attempts: int


class RelayStore(Protocol):
    """What the relay needs from its store; SQLite and PostgreSQL both provide it.

    The admission rules, the same in both: a reading is kept once per
    (device, project, nonce); a copy gets the first one's status; a nonce at or
    below the device's high-water mark is refused (``replayed_nonce``), as is a
    used nonce with another body (``nonce_reused``); a full queue stores nothing.
    Admission is atomic per device, even between relays sharing the store.
    """

    def admit(self, device: str, project: str, nonce: int, body: bytes) -> Admission:
        """One reading, in its own transaction; see :meth:`admit_many`."""
        ...

    def admit_many(
        self, items: Sequence[Submission], *, rejected: Iterable[str] = ()
    ) -> list[Admission]:
        """Admit a batch in ONE transaction (group commit), in order, one Admission
        each; also count ``rejected`` (reasons of messages refused before the store)
        and the store's own refusals. Nothing is durable until it returns."""
        ...

    def count_rejection(self, reason: str) -> None:
        """Count a message refused before it could be stored (bad signature, ...)."""
        ...

    def claim(self, *, limit: int, lease_s: float) -> list[Job]:
        """Up to ``limit`` queued readings due now, leased for ``lease_s`` seconds."""
        ...

    def retry_later(self, job_id: int, *, delay_s: float, error: str) -> None:
        """A forward failed for a reason that may pass: try again after ``delay_s``."""
        ...

    def finish(self, job_id: int, status: Status, *, task_id: str, reason: str) -> None:
        """Record a final status (accepted, or rejected: a dead letter)."""
        ...

    def stats(self) -> dict[str, object]:
        """Counts by status (queued, accepted, dead_letters) and rejections by reason."""
        ...

    def close(self) -> None: ...


def is_postgres_url(spec: str | Path) -> bool:
    """``postgresql://…`` or ``postgres://…`` (libpq's URI schemes)."""
    return isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://"))


def describe_store(spec: str | Path) -> str:
    """The store for logs and messages: a PostgreSQL URL loses its password."""
    if not is_postgres_url(spec):
        return str(spec)
    p = urllib.parse.urlsplit(str(spec))
    netloc = p.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return f"{p.scheme}://{user + '@' if user else ''}{netloc[2]}{p.path}"


def open_store(spec: str | Path, *, max_queue: int = 100_000) -> RelayStore:
    """The store ``--store`` names: a PostgreSQL URL, or the path of a SQLite file.

    Raises:
        RelayStoreError: the database cannot be opened or set up.
    """
    if is_postgres_url(spec):
        from .relay_store_pg import PgStore  # psycopg loads only when asked for

        return PgStore(str(spec), max_queue=max_queue)
    try:
        return SqliteStore(Path(spec), max_queue=max_queue)
    except sqlite3.Error as err:
        raise RelayStoreError(f"cannot open the relay store {spec}: {err}") from None


class RelayStoreError(IoconnectError):
    """The relay store cannot be opened or reached."""


class SqliteStore:
    """The relay store in one SQLite file (WAL), safe to share between threads."""

    def __init__(self, path: Path, *, max_queue: int = 100_000) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a transaction is on disk before the broker hears "stored".
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._max_queue = max_queue

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # One writer transaction at a time, taken before the first read so that
        # check-then-insert cannot interleave with another thread or process.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def admit(self, device: str, project: str, nonce: int, body: bytes) -> Admission:
        """Store a verified reading unless seen, replayed, reordered or the queue is full."""
        return self.admit_many([Submission(device, project, nonce, body)])[0]

    def admit_many(
        self, items: Sequence[Submission], *, rejected: Iterable[str] = ()
    ) -> list[Admission]:
        """Admit a batch in one transaction; see :class:`RelayStore`."""
        reasons = Counter(rejected)
        out: list[Admission] = []
        with self._tx() as db:
            # Counted once a batch: the bound is a backstop, not an exact figure.
            depth = db.execute("SELECT COUNT(*) FROM messages WHERE status='queued'").fetchone()[0]
            for item in items:
                adm = self._admit_one(db, item, depth)
                if adm.kind == "queued":
                    depth += 1
                elif adm.kind == "rejected":
                    reasons[adm.reason] += 1
                out.append(adm)
            for reason, n in sorted(reasons.items()):
                self._count(reason, n)
        return out

    def _admit_one(self, db: sqlite3.Connection, item: Submission, depth: int) -> Admission:
        device, project, nonce, body = item.device, item.project, item.nonce, item.body
        hw = db.execute(
            "SELECT nonce FROM high_water WHERE device=? AND project=?", (device, project)
        ).fetchone()
        # Above the mark: new (the mark rises with every reading stored). At or
        # below it: a copy of a stored reading, or a replay.
        if hw is not None and nonce <= hw[0]:
            row = db.execute(
                "SELECT status, task_id, reason, body FROM messages "
                "WHERE device=? AND project=? AND nonce=?",
                (device, project, nonce),
            ).fetchone()
            if row is None:
                return Admission("rejected", status="rejected", reason="replayed_nonce")
            if bytes(row[3]) != body:  # signed by the device, yet another reading
                return Admission("rejected", status="rejected", reason="nonce_reused")
            return Admission("duplicate", status=row[0], task_id=row[1], reason=row[2])
        if depth >= self._max_queue:
            return Admission("full", reason="queue full")
        db.execute(
            "INSERT INTO messages (device, project, nonce, body, received) VALUES (?, ?, ?, ?, ?)",
            (device, project, nonce, body, time.time()),
        )
        db.execute(
            "INSERT INTO high_water VALUES (?, ?, ?) "
            "ON CONFLICT (device, project) DO UPDATE SET nonce=excluded.nonce",
            (device, project, nonce),
        )
        return Admission("queued", status="queued")

    def count_rejection(self, reason: str) -> None:
        """Count a message refused before it could be stored (bad signature, ...)."""
        with self._tx():
            self._count(reason)

    def _count(self, reason: str, n: int = 1) -> None:
        self._db.execute(
            "INSERT INTO rejections VALUES (?, ?) "
            "ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
            (reason, n),
        )

    def claim(self, *, limit: int, lease_s: float) -> list[Job]:
        """Up to ``limit`` queued readings due now, leased for ``lease_s`` seconds
        (a forwarder that dies leaves them to be claimed again after the lease)."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, device, project, nonce, body, attempts FROM messages "
                "WHERE status='queued' AND next_try <= ? ORDER BY device, nonce LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE messages SET next_try=? WHERE id=?", [(now + lease_s, r[0]) for r in rows]
            )
        return [Job(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    def retry_later(self, job_id: int, *, delay_s: float, error: str) -> None:
        """A forward failed for a reason that may pass (network, 5xx): try again later."""
        with self._tx() as db:
            db.execute(
                "UPDATE messages SET attempts=attempts+1, next_try=?, reason=? "
                "WHERE id=? AND status='queued'",
                (time.time() + delay_s, error, job_id),
            )

    def finish(self, job_id: int, status: Status, *, task_id: str, reason: str) -> None:
        """Record a final status (accepted by W3bstream, or rejected: a dead letter)."""
        with self._tx() as db:
            db.execute(
                "UPDATE messages SET status=?, task_id=?, reason=?, finished=?, "
                "attempts=attempts+1 WHERE id=? AND status='queued'",
                (status, task_id, reason, time.time(), job_id),
            )
            if status == "rejected":
                self._count(reason.split(":", 1)[0])

    def stats(self) -> dict[str, object]:
        """Counts by status, the queue depth, and rejections by reason."""
        with self._lock:
            by_status = dict(
                self._db.execute("SELECT status, COUNT(*) FROM messages GROUP BY status")
            )
            rejected = dict(self._db.execute("SELECT reason, count FROM rejections"))
        return {
            "queued": by_status.get("queued", 0),
            "accepted": by_status.get("accepted", 0),
            "dead_letters": by_status.get("rejected", 0),
            "rejections": rejected,
        }
