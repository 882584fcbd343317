"""A local W3bstream-compatible API node, for development, tests and the demo.

``POST /v1/task`` and ``GET /v1/task/<id>`` follow the upstream apinode
(PROTOCOLS.md): the request hashed as Go does, the signer recovered with v = 0
and 1, the device checked against the project's approved devices (403), 400 for
malformed input, and ``{"taskID": keccak256(r||s||0x01)}`` as upstream answers
(its slice-aliasing quirk, reproduced on purpose). Added where upstream falls
short: a nonce replay check per device (the same request again is answered with
its first taskID; another request with a used nonce is a 409), refusal of the
zero-digest case (signed keys with a non-JSON payload), and ``GET /v1/devices``.
Also sprout's ``POST /message`` (:mod:`sprout`) and a page at ``GET /``
(:mod:`node_page`) listing devices and what they sent. Everything persists in
SQLite.

Example:
    >>> node = Node(Path("node.db"), approved=lambda project, address: True)
    >>> server = serve(node, port=0)            # a ThreadingHTTPServer, serving
    >>> node.submit(body)
    (200, {'taskID': '0x...'})
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import sprout
from . import w3bstream as w3b
from .node_page import CSP, render_page

__all__ = ["Approver", "Node", "NodeServer", "serve"]

#: ``approved(project_id, address) -> bool``: is the device approved for the project?
Approver = Callable[[str, str], bool]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id    TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    device     TEXT NOT NULL,
    nonce      INTEGER NOT NULL,
    body       BLOB NOT NULL,
    received   REAL NOT NULL,
    UNIQUE (project_id, device, nonce)
);
CREATE TABLE IF NOT EXISTS sprout_messages (
    task_id    TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL,
    device     TEXT NOT NULL,
    body       BLOB NOT NULL,
    received   REAL NOT NULL
);
PRAGMA user_version = 1;
"""


class Node:
    """The node's rules and store, without HTTP (``serve`` adds that)."""

    def __init__(
        self,
        db_path: Path,
        *,
        approved: Approver,
        signed_keys: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Args:
        db_path: SQLite file (created if missing; WAL).
        approved: which devices may submit to which project.
        signed_keys: per project id, the payload keys hashed into the digest
            (Pebble-style, e.g. ``{"42": ("timestamp",)}``).
        """
        self._approved = approved
        self._signed_keys = signed_keys or {}
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def submit(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Check and store one ``POST /v1/task`` body: (HTTP status, JSON answer)."""
        try:
            task = w3b.parse_task(body)
            keys = self._signed_keys.get(task.project_id, ())
            signers = w3b.recover_signers(task, w3b.task_digest(task, keys))
        except w3b.TaskError as err:
            return HTTPStatus.BAD_REQUEST, {"error": str(err), "reason": err.reason}
        device = next((a for a in signers if a and self._approved(task.project_id, a)), None)
        if device is None:
            return HTTPStatus.FORBIDDEN, {
                "error": f"device {signers[0] or signers[1]} is not approved for project "
                f"{task.project_id}",
                "reason": "not_approved",
            }
        task_id = w3b.task_id(task)
        with self._lock:
            row = self._db.execute(
                "SELECT task_id, body FROM tasks WHERE project_id=? AND device=? AND nonce=?",
                (task.project_id, device, task.nonce),
            ).fetchone()
            if row is not None:
                if bytes(row[1]) == body:  # a retry of the same request: same answer
                    return HTTPStatus.OK, {"taskID": row[0]}
                return HTTPStatus.CONFLICT, {
                    "error": f"nonce {task.nonce} of device {device} was already used",
                    "reason": "replayed_nonce",
                }
            self._db.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, task.project_id, device, task.nonce, body, time.time()),
            )
        return HTTPStatus.OK, {"taskID": task_id}

    def submit_message(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Check and store one sprout ``POST /message`` body: (HTTP status, JSON answer).

        Sprout's rules (see :mod:`sprout`), the device approved for the project as
        for ``/v1/task`` (403), and the replay check: the same signed message from
        the same device again is answered with its first taskID, stored once.
        """
        try:
            msg = sprout.parse_message(body)
            device = sprout.signer(msg)
        except w3b.TaskError as err:
            return HTTPStatus.BAD_REQUEST, {"error": str(err), "reason": err.reason}
        if not self._approved(str(msg.project_id), device):
            return HTTPStatus.FORBIDDEN, {
                "error": f"device {device} is not approved for project {msg.project_id}",
                "reason": "not_approved",
            }
        task_id = sprout.message_id(msg, device)
        with self._lock:
            # The id covers device and signed bytes: a replay lands on the same row.
            self._db.execute(
                "INSERT INTO sprout_messages VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (task_id, msg.project_id, device, body, time.time()),
            )
        return HTTPStatus.OK, {"taskID": task_id}

    def messages_of(self, device: str) -> list[dict[str, Any]]:
        """Sprout messages received from ``device``, oldest first."""
        rows = self._db.execute(
            "SELECT task_id, project_id, body, received FROM sprout_messages WHERE device=? "
            "ORDER BY received, task_id",
            (device.lower(),),
        ).fetchall()
        out = []
        for t, p, b, r in rows:
            try:
                data: str | None = sprout.parse_message(bytes(b)).data
            except w3b.TaskError:
                data = None
            out.append({"taskID": t, "projectID": p, "data": data, "received": r})
        return out

    def sprout_devices(self) -> list[str]:
        """Every device that sent a sprout message."""
        rows = self._db.execute("SELECT DISTINCT device FROM sprout_messages ORDER BY device")
        return [r[0] for r in rows]

    def task(self, task_id: str) -> dict[str, Any] | None:
        """``GET /v1/task/<id>``'s answer, or None when unknown."""
        row = self._db.execute(
            "SELECT project_id, received FROM tasks WHERE task_id=?", (task_id.lower(),)
        ).fetchone()
        if row is None:
            return None
        received = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row[1]))
        return {
            "projectID": row[0],
            "taskID": task_id.lower(),
            "states": [{"state": "packed", "time": received, "comment": "stored by local node"}],
        }

    def devices(self) -> list[dict[str, Any]]:
        """Every device that submitted, with its task count and latest nonce."""
        rows = self._db.execute(
            "SELECT device, project_id, COUNT(*), MAX(nonce), MAX(received) FROM tasks "
            "GROUP BY device, project_id ORDER BY device, project_id"
        ).fetchall()
        return [
            {"address": d, "projectID": p, "tasks": n, "last_nonce": hi, "last_received": t}
            for d, p, n, hi, t in rows
        ]

    def tasks_of(self, device: str) -> list[dict[str, Any]]:
        """Tasks received from ``device`` (address), oldest first."""
        rows = self._db.execute(
            "SELECT task_id, project_id, nonce, body FROM tasks WHERE device=? ORDER BY nonce",
            (device.lower(),),
        ).fetchall()
        return [
            {"taskID": t, "projectID": p, "nonce": n, "payload": _payload_of(bytes(b))}
            for t, p, n, b in rows
        ]


def _payload_of(body: bytes) -> Any:
    try:
        task = w3b.parse_task(body)
        return json.loads(task.payload) if not task.payload_is_hex else task.payload.hex()
    except (w3b.TaskError, ValueError):
        return None


_MAX_REQUEST = w3b.MAX_BODY + 1


class _Handler(BaseHTTPRequestHandler):
    server: NodeServer
    protocol_version = "HTTP/1.1"  # keep-alive for the relay

    def _answer(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        if self.path not in ("/v1/task", "/message"):
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            self.close_connection = True
            return
        if length < 0 or length > _MAX_REQUEST:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request too large"})
            self.close_connection = True
            return
        data = self.rfile.read(length)
        node = self.server.node
        status, answer = node.submit(data) if self.path == "/v1/task" else node.submit_message(data)
        self._answer(status, answer)

    def do_GET(self) -> None:
        node = self.server.node
        if self.path.startswith("/v1/task/"):
            found = node.task(self.path.removeprefix("/v1/task/"))
            if found is None:
                self._answer(HTTPStatus.NOT_FOUND, {"error": "no such task"})
            else:
                self._answer(HTTPStatus.OK, found)
        elif self.path == "/":
            page = render_page(node).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif self.path == "/v1/devices":
            self._answer(HTTPStatus.OK, {"devices": node.devices()})
        elif self.path.startswith("/v1/devices/"):
            self._answer(HTTPStatus.OK, {"tasks": node.tasks_of(self.path.rsplit("/", 1)[1])})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log is not None:
            self.server.log(format % args)


class NodeServer(ThreadingHTTPServer):
    """The node's HTTP server; ``stop()`` also ends kept-alive connections, as a
    node that goes down does."""

    daemon_threads = True

    def __init__(
        self, addr: tuple[str, int], node: Node, log: Callable[[str], None] | None
    ) -> None:
        super().__init__(addr, _Handler)
        self.node = node
        self.log = log
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up before its answer is a client's business (a relay
        # retries; the task is already stored), not a traceback on the console.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        """Stop listening and drop every open connection."""
        self.shutdown()
        self.server_close()
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def serve(
    node: Node,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log: Callable[[str], None] | None = None,
) -> NodeServer:
    """Serve ``node`` over HTTP in a background thread (``.port``; ``.stop()``)."""
    server = NodeServer((host, port), node, log)
    threading.Thread(target=server.serve_forever, name="w3bstream-node", daemon=True).start()
    return server
