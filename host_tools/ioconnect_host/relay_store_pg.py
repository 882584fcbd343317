"""The relay store in PostgreSQL: one state shared by relays on several machines.

The same rules as :class:`~.relay_store.SqliteStore` (see :class:`RelayStore`),
made safe between relay processes by PostgreSQL itself:

- Admission raises the device's high-water mark with an ``UPDATE`` that locks
  its row until the commit, so two relays given the same (device, nonce) at
  once are serialised: one stores it, the other finds it (``duplicate``); a
  lower nonce after a higher one is refused. A batch takes its row locks in one
  order, (device, project), so two relays' batches cannot deadlock.
- A batch is one call of the ``relay_admit`` function: one round trip and one
  commit (one WAL flush) for the whole batch.
- Forwarders claim with ``FOR UPDATE SKIP LOCKED`` and a lease (``next_try``,
  on the database's clock, the one clock all relays share): a relay that dies
  mid-post leaves its jobs to be claimed again when the lease ends.
- Rejection counts and dead letters are rows like the rest.

Each thread has its own connection (psycopg connections serialise their
users; the ingest thread and the forwarder threads must not wait on each
other). A broken connection is dropped and opened again on the next call.

Example:
    >>> store = PgStore("postgresql://relay@db.example/relay")
    >>> store.admit("0xab…", "42", 7, body).kind
    'queued'
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from .relay_store import (
    Admission,
    Job,
    RelayStoreError,
    Status,
    Submission,
    describe_store,
)

__all__ = ["PgStore"]

# Nonces are uint64 (W3bstream): NUMERIC(20) holds them all, BIGINT would not.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_high_water (
    device  TEXT NOT NULL,
    project TEXT NOT NULL,
    nonce   NUMERIC(20) NOT NULL,
    PRIMARY KEY (device, project)
);
CREATE TABLE IF NOT EXISTS relay_messages (
    id          BIGSERIAL PRIMARY KEY,
    device      TEXT NOT NULL,
    project     TEXT NOT NULL,
    nonce       NUMERIC(20) NOT NULL,
    body        BYTEA NOT NULL,
    received    DOUBLE PRECISION NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued',
    task_id     TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try    DOUBLE PRECISION NOT NULL DEFAULT 0,
    finished    DOUBLE PRECISION,
    UNIQUE (device, project, nonce)
);
CREATE INDEX IF NOT EXISTS relay_queued ON relay_messages (next_try) WHERE status = 'queued';
CREATE TABLE IF NOT EXISTS relay_rejections (
    reason TEXT PRIMARY KEY,
    count  BIGINT NOT NULL
);
CREATE OR REPLACE FUNCTION relay_now() RETURNS DOUBLE PRECISION
LANGUAGE sql STABLE AS $$ SELECT extract(epoch FROM clock_timestamp())::double precision $$;

-- One batch, in the order given: one row out per reading in.
-- A reading above its device's high-water mark raises the mark and is stored.
-- The UPDATE locks the device's row until the commit: another relay admitting
-- for this device waits there, then sees the new mark (READ COMMITTED re-checks
-- the row), so of two relays with one reading one stores it, the other finds it.
-- Otherwise (at or below the mark, or a full queue) the reading is looked up.
CREATE OR REPLACE FUNCTION relay_admit(
    devices TEXT[], projects TEXT[], nonces NUMERIC[], bodies BYTEA[], max_queue BIGINT
) RETURNS TABLE (o_kind TEXT, o_status TEXT, o_task_id TEXT, o_reason TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    depth BIGINT;
    raised BOOLEAN;
    seen RECORD;
BEGIN
    -- Counted once a batch: the bound is a backstop, not an exact figure.
    SELECT count(*) INTO depth FROM relay_messages m WHERE m.status = 'queued';
    FOR i IN 1 .. coalesce(array_length(devices, 1), 0) LOOP
        o_task_id := ''; o_reason := ''; raised := FALSE;
        IF depth < max_queue THEN
            UPDATE relay_high_water h SET nonce = nonces[i]
                WHERE h.device = devices[i] AND h.project = projects[i] AND h.nonce < nonces[i];
            raised := FOUND;
            IF NOT raised THEN  -- no row yet, or a mark at or above this nonce
                INSERT INTO relay_high_water (device, project, nonce)
                    VALUES (devices[i], projects[i], nonces[i]) ON CONFLICT DO NOTHING;
                raised := FOUND;
                IF NOT raised THEN  -- the row is there (maybe just made by another relay)
                    UPDATE relay_high_water h SET nonce = nonces[i]
                        WHERE h.device = devices[i] AND h.project = projects[i]
                        AND h.nonce < nonces[i];
                    raised := FOUND;
                END IF;
            END IF;
        END IF;
        IF raised THEN
            INSERT INTO relay_messages (device, project, nonce, body, received)
                VALUES (devices[i], projects[i], nonces[i], bodies[i], relay_now());
            depth := depth + 1;
            o_kind := 'queued'; o_status := 'queued';
        ELSE
            SELECT m.status, m.task_id, m.reason, m.body INTO seen FROM relay_messages m
                WHERE m.device = devices[i] AND m.project = projects[i] AND m.nonce = nonces[i];
            IF FOUND AND seen.body <> bodies[i] THEN
                o_kind := 'rejected'; o_status := 'rejected'; o_reason := 'nonce_reused';
            ELSIF FOUND THEN
                o_kind := 'duplicate'; o_status := seen.status;
                o_task_id := seen.task_id; o_reason := seen.reason;
            ELSIF depth >= max_queue AND NOT EXISTS (
                SELECT 1 FROM relay_high_water h WHERE h.device = devices[i]
                    AND h.project = projects[i] AND h.nonce >= nonces[i]) THEN
                o_kind := 'full'; o_status := NULL; o_reason := 'queue full';
            ELSE
                o_kind := 'rejected'; o_status := 'rejected'; o_reason := 'replayed_nonce';
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
"""
_SCHEMA_LOCK = 0x10C0_4E1A  # advisory lock: relays starting at once set up in turn


class PgStore:
    """The relay store in a PostgreSQL database (``postgresql://…``), thread-safe."""

    def __init__(self, url: str, *, max_queue: int = 100_000) -> None:
        """Connects and creates the tables if missing.

        Raises:
            RelayStoreError: the database cannot be reached or set up.
        """
        self._url = url
        self._max_queue = max_queue
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._all_lock = threading.Lock()
        try:
            with self._conn().transaction() as tx:
                tx.connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                tx.connection.execute(_SCHEMA)
        except psycopg.Error as err:
            self.close()
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]  # libpq adds hints
            raise RelayStoreError(
                f"cannot open the relay store {describe_store(url)}: {first}"
            ) from None

    # -- connections ---------------------------------------------------------
    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:  # a broken one (server restarted) is closed too
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
            self._local.conn = conn
            with self._all_lock:
                self._all = [c for c in self._all if not c.closed] + [conn]
        return conn

    def _run(self, work: Any) -> Any:
        """``work(conn)`` in one transaction (psycopg: commit, or rollback on error)."""
        conn = self._conn()
        with conn.transaction():
            return work(conn)

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    # -- admission -------------------------------------------------------------
    def admit(self, device: str, project: str, nonce: int, body: bytes) -> Admission:
        """Store a verified reading unless seen, replayed, reordered or the queue is full."""
        return self.admit_many([Submission(device, project, nonce, body)])[0]

    def admit_many(
        self, items: Sequence[Submission], *, rejected: Iterable[str] = ()
    ) -> list[Admission]:
        """Admit a batch in one transaction; see :class:`RelayStore`."""
        # Locks in (device, project) order; a device's readings keep their order.
        order = sorted(range(len(items)), key=lambda i: (items[i].device, items[i].project))
        batch = [items[i] for i in order]
        reasons = Counter(rejected)

        def work(conn: psycopg.Connection[Any]) -> list[Admission]:
            rows = conn.execute(
                "SELECT o_kind, o_status, o_task_id, o_reason FROM relay_admit("
                "%s::text[], %s::text[], %s::numeric[], %s::bytea[], %s)",
                (
                    [s.device for s in batch],
                    [s.project for s in batch],
                    [s.nonce for s in batch],
                    [s.body for s in batch],
                    self._max_queue,
                ),
            ).fetchall()
            got = [Admission(r[0], status=r[1], task_id=r[2], reason=r[3]) for r in rows]
            for adm in got:
                if adm.kind == "rejected":
                    reasons[adm.reason] += 1
            _count(conn, reasons)
            return got

        got: list[Admission] = self._run(work) if batch or reasons else []
        out: list[Admission | None] = [None] * len(items)
        for i, adm in zip(order, got, strict=True):
            out[i] = adm
        return [a for a in out if a is not None]

    def count_rejection(self, reason: str) -> None:
        """Count a message refused before it could be stored (bad signature, ...)."""
        self._run(lambda conn: _count(conn, Counter([reason])))

    # -- forwarding --------------------------------------------------------------
    def claim(self, *, limit: int, lease_s: float) -> list[Job]:
        """Up to ``limit`` queued readings due now, leased for ``lease_s`` seconds;
        rows another relay is claiming right now are skipped, not waited for."""

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                "UPDATE relay_messages m SET next_try = relay_now() + %s FROM ("
                "  SELECT id FROM relay_messages WHERE status = 'queued' "
                "  AND next_try <= relay_now() ORDER BY device, nonce LIMIT %s "
                "  FOR UPDATE SKIP LOCKED) due "
                "WHERE m.id = due.id "
                "RETURNING m.id, m.device, m.project, m.nonce, m.body, m.attempts",
                (lease_s, limit),
            ).fetchall()

        rows = sorted(self._run(work), key=lambda r: (r[1], r[3]))
        return [Job(r[0], r[1], r[2], int(r[3]), bytes(r[4]), r[5]) for r in rows]

    def retry_later(self, job_id: int, *, delay_s: float, error: str) -> None:
        """A forward failed for a reason that may pass (network, 5xx): try again later."""
        self._run(
            lambda conn: conn.execute(
                "UPDATE relay_messages SET attempts = attempts + 1, "
                "next_try = relay_now() + %s, reason = %s WHERE id = %s AND status = 'queued'",
                (delay_s, error, job_id),
            )
        )

    def finish(self, job_id: int, status: Status, *, task_id: str, reason: str) -> None:
        """Record a final status (accepted by W3bstream, or rejected: a dead letter)."""

        def work(conn: psycopg.Connection[Any]) -> None:
            cur = conn.execute(
                "UPDATE relay_messages SET status = %s, task_id = %s, reason = %s, "
                "finished = relay_now(), attempts = attempts + 1 "
                "WHERE id = %s AND status = 'queued'",
                (status, task_id, reason, job_id),
            )
            if status == "rejected" and cur.rowcount:
                _count(conn, Counter([reason.split(":", 1)[0]]))

        self._run(work)

    def stats(self) -> dict[str, object]:
        """Counts by status, the queue depth, and rejections by reason."""

        def work(conn: psycopg.Connection[Any]) -> tuple[dict[str, int], dict[str, int]]:
            by_status = dict(
                conn.execute("SELECT status, COUNT(*) FROM relay_messages GROUP BY status")
            )
            rejected = dict(conn.execute("SELECT reason, count FROM relay_rejections"))
            return by_status, rejected

        by_status, rejected = self._run(work)
        return {
            "queued": by_status.get("queued", 0),
            "accepted": by_status.get("accepted", 0),
            "dead_letters": by_status.get("rejected", 0),
            "rejections": rejected,
        }


def _count(conn: psycopg.Connection[Any], reasons: Counter[str]) -> None:
    # Sorted: two relays counting the same reasons lock the rows in one order.
    items = sorted((r, n) for r, n in reasons.items() if n)
    if items:
        conn.cursor().executemany(
            "INSERT INTO relay_rejections VALUES (%s, %s) "
            "ON CONFLICT (reason) DO UPDATE SET count = relay_rejections.count + excluded.count",
            items,
        )
