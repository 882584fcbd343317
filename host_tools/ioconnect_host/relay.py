"""The relay: signed readings from MQTT to W3bstream, each exactly once.

Three parts, each testable alone:

- :class:`Relay.ingest` checks one message (topic, size, schema, signature
  recovered with libsecp256k1 the W3bstream way, device approved for the project,
  nonce above the device's high-water mark) and stores it durably. Only then is
  the broker's QoS 1 message acknowledged; ingest never waits on HTTP.
- :class:`Forwarder` threads post what is queued to W3bstream ``POST /v1/task``,
  byte for byte what the device signed (keep-alive, bounded concurrency, retries
  with backoff on network errors and 5xx; a 4xx is final: a dead letter with the
  reason) and store the taskID.
- :class:`MqttFront` (paho-mqtt 2.x, MQTT 5 shared subscription so several relays
  split the load) feeds ingest and answers on the device's ack topic as soon as
  a reading is stored (``queued``: the device clears it from its outbox; the
  relay's queue, not the device's small outbox, rides out a W3bstream outage),
  or refused (``rejected`` with the reason).

A message whose signature does not come from the device named in its topic is
dropped and counted, never acknowledged to that device: a forger must not be
able to make a device discard a genuine reading.

Example:
    >>> store = SqliteStore(Path("relay.db"))
    >>> relay = Relay(store, approved=inventory_approver)
    >>> relay.ingest("ioconnect/42/0xab…/tasks", body).kind
    'stored'
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import sprout
from . import w3bstream as w3b
from .errors import IoconnectError
from .node import Approver
from .relay_store import Admission, Job, RelayStore, Submission

__all__ = [
    "Forwarder",
    "Ingested",
    "Relay",
    "RelayError",
    "ack_message",
    "ack_topic",
    "messages_topic",
    "tasks_topic",
]

_TOPIC = re.compile(r"ioconnect/([0-9]{1,20})/(0x[0-9a-f]{40})/(tasks|messages)")


class RelayError(IoconnectError):
    """The relay cannot start or reach what it needs (broker, store, W3bstream URL)."""


def tasks_topic(project_id: str, address: str) -> str:
    """Where a device publishes its signed readings."""
    return f"ioconnect/{project_id}/{address.lower()}/tasks"


def messages_topic(project_id: str, address: str) -> str:
    """Where a device publishes sprout ``/message`` bodies (relayed with ``--sprout``)."""
    return f"ioconnect/{project_id}/{address.lower()}/messages"


def ack_topic(project_id: str, address: str) -> str:
    """Where the relay answers a device."""
    return f"ioconnect/{project_id}/{address.lower()}/acks"


@dataclass(frozen=True)
class Ingested:
    """What ingest did with one message.

    kind: ``stored`` (queued for W3bstream), ``duplicate`` (seen before),
    ``rejected`` (genuine but refused: the device is told), ``dropped`` (not from
    the device it names, or unreadable: counted only), ``full`` (store at its
    bound: do not acknowledge to the broker, try again later).
    ack: the JSON to send on the device's ack topic now (None: never answer a
    message the named device did not sign).
    """

    kind: Literal["stored", "duplicate", "rejected", "dropped", "full"]
    reason: str = ""
    device: str = ""
    project: str = ""
    nonce: int = 0
    ack: bytes | None = None


def ack_message(nonce: int, status: str, task_id: str = "", reason: str = "") -> bytes:
    """The ack a device gets on its ack topic (PROTOCOLS.md), compact JSON."""
    msg: dict[str, Any] = {"nonce": nonce, "status": status}
    if task_id:
        msg["taskID"] = task_id
    if reason:
        msg["reason"] = reason
    return json.dumps(msg, separators=(",", ":")).encode()


class Relay:
    """Verification and durable admission of device messages."""

    def __init__(
        self,
        store: RelayStore,
        *,
        approved: Approver,
        projects: frozenset[str] | None = None,
        signed_keys: dict[str, tuple[str, ...]] | None = None,
        sprout: bool = False,
    ) -> None:
        """Args:
        store: the durable queue and high-water marks.
        approved: ``approved(project_id, address)``: the inventory's say.
        projects: only these project ids are relayed (None: any).
        signed_keys: per project, the payload keys in the digest (Pebble-style).
        sprout: take sprout messages too (a sprout endpoint is configured).
        """
        self.store = store
        self._approved = approved
        self._projects = projects
        self._signed_keys = signed_keys or {}
        self._sprout = sprout
        self.counts: Counter[str] = Counter()  # ingest outcomes, for /metrics

    def ingest(self, topic: str, payload: bytes) -> Ingested:
        """Check one message and store it; see :class:`Ingested` for the outcomes."""
        return self.ingest_many([(topic, payload)])[0]

    def signers(self, payload: bytes) -> tuple[w3b.Task, tuple[str, str]]:
        """A ``/v1/task`` body taken apart and its two candidate signers (v = 0, 1),
        checked as ingest checks it: for links that do not name the device (serial).

        Raises:
            w3bstream.TaskError: the body is malformed or its signature unusable.
        """
        task = w3b.parse_task(payload)
        keys = self._signed_keys.get(task.project_id, ())
        return task, w3b.recover_signers(task, w3b.task_digest(task, keys))

    def refuse_unread(self, nonce: int, reason: str) -> Ingested:
        """Count a message refused before its device was known; the ack refusing it
        (only for a link that is the device's own, e.g. its serial console)."""
        ack = ack_message(nonce, "rejected", reason=reason)
        got = Ingested("rejected", reason, nonce=nonce, ack=ack)
        self.counts[got.kind] += 1
        self.store.count_rejection(reason)
        return got

    def ingest_many(self, messages: Sequence[tuple[str, bytes]]) -> list[Ingested]:
        """Check a batch of (topic, payload) and store what passes in ONE store
        transaction (group commit: one disk flush for the batch). Nothing in the
        batch may be acknowledged before this returns; one Ingested per message."""
        checked = [self._check(topic, payload) for topic, payload in messages]
        passed = [c for c in checked if isinstance(c, Submission)]
        refused = [c.reason for c in checked if isinstance(c, Ingested) and c.reason]
        admitted = iter(self.store.admit_many(passed, rejected=refused)) if checked else iter(())
        out = []
        for c in checked:
            got = self._admitted(c, next(admitted)) if isinstance(c, Submission) else c
            self.counts[got.kind] += 1
            out.append(got)
        return out

    def _check(self, topic: str, payload: bytes) -> Ingested | Submission:
        """Everything but the store: a verdict, or a reading fit to store."""
        m = _TOPIC.fullmatch(topic)
        if m is None:
            return Ingested("dropped", reason="bad_topic")
        project, device = m.group(1), m.group(2)
        try:
            if m.group(3) == "messages":
                # Sprout: one signer (v is in the signature); the nonce is in the data.
                msg = sprout.parse_message(payload)
                genuine = sprout.signer(msg) == device
                task_project, nonce = str(msg.project_id), sprout.data_nonce(msg)
            else:
                task = w3b.parse_task(payload)
                keys = self._signed_keys.get(task.project_id, ())
                genuine = w3b.signed_by(task, device, w3b.task_digest(task, keys))
                task_project, nonce = task.project_id, task.nonce
        except w3b.TaskError as err:
            return Ingested("dropped", reason=err.reason, device=device, project=project)
        if not genuine:
            return Ingested("dropped", reason="forged_signature", device=device, project=project)
        if task_project != project:
            return _refuse(device, project, nonce, "wrong_project")
        if m.group(3) == "messages" and not self._sprout:
            return _refuse(device, project, nonce, "no_sprout_endpoint")
        if self._projects is not None and project not in self._projects:
            return _refuse(device, project, nonce, "unknown_project")
        if not self._approved(project, device):
            return _refuse(device, project, nonce, "not_approved")
        return Submission(device, project, nonce, payload)

    @staticmethod
    def _admitted(sub: Submission, adm: Admission) -> Ingested:
        device, project, nonce = sub.device, sub.project, sub.nonce
        if adm.kind == "queued":
            # Stored durably: the relay owns it now, the device may let it go.
            return Ingested("stored", "", device, project, nonce, ack_message(nonce, "queued"))
        if adm.kind == "full":
            return Ingested("full", "queue_full", device, project, nonce)
        if adm.kind == "rejected":
            return _refuse(device, project, nonce, adm.reason)
        # A copy of a reading we have (a lost ack, a redelivery): the same answer.
        ack = ack_message(nonce, adm.status or "queued", adm.task_id, adm.reason)
        return Ingested("duplicate", "", device, project, nonce, ack)


def _refuse(device: str, project: str, nonce: int, reason: str) -> Ingested:
    """Genuine but refused: the device is told why."""
    ack = ack_message(nonce, "rejected", reason=reason)
    return Ingested("rejected", reason, device, project, nonce, ack)


#: Concurrent HTTP requests to W3bstream. A worker mostly waits on the node: with
#: 100 devices publishing each second, 4 workers gave a p99 publish-to-taskID of
#: 18 s, 16 gave 0.93 s (benchmarks/e2e_latency.py, 2 cores).
DEFAULT_WORKERS = 16

class Forwarder:
    """Threads that post queued readings to W3bstream and record the outcome."""

    def __init__(
        self,
        store: RelayStore,
        url: str,
        *,
        workers: int = DEFAULT_WORKERS,
        timeout_s: float = 10.0,
        max_backoff_s: float = 30.0,
        log: Callable[[str], None] = print,
        sprout_url: str | None = None,
    ) -> None:
        """Args:
        url: the W3bstream API node, e.g. ``http://127.0.0.1:8888``.
        workers: concurrent requests (each keeps one connection alive per endpoint).
        sprout_url: where sprout messages go (``POST <url>/message``), if any.
        """
        self._parsed = _http_url(url, "W3bstream")
        self._sprout = _http_url(sprout_url, "sprout") if sprout_url else None
        self._store = store
        self._workers = workers
        self._timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._claim_lock = threading.Lock()
        self._log = log
        self.posted = 0
        self.retries = 0
        self.errors = 0

    def start(self) -> None:
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"forwarder-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def poke(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Finish the requests in flight, then stop (queued work stays queued)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout_s)
        self._threads.clear()

    def _connect(self, p: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
        return cls(p.hostname or "", p.port, timeout=self._timeout_s)

    def _work(self) -> None:
        # One kept-alive connection per endpoint: W3bstream, and sprout if set.
        conns: dict[bool, http.client.HTTPConnection] = {}
        while not self._stop.is_set():
            try:
                with self._claim_lock:
                    jobs = self._store.claim(limit=1, lease_s=self._timeout_s * 3)
                if not jobs:
                    self._wake.wait(0.2)
                    self._wake.clear()
                    continue
                for job in jobs:
                    to_sprout = sprout.is_message(job.body)
                    target = self._sprout if to_sprout else self._parsed
                    if target is None:  # stored before a restart without --sprout
                        self._store.finish(
                            job.id, "rejected", task_id="", reason="no_sprout_endpoint"
                        )
                        continue
                    path = target.path.rstrip("/") + ("/message" if to_sprout else "/v1/task")
                    conn = conns.get(to_sprout) or self._connect(target)
                    conns[to_sprout] = self._post(conn, target, path, job)
            except Exception as exc:
                # The job stays leased and is claimed again when the lease ends.
                self.errors += 1
                self._log(f"forwarding failed: {exc!r}")
                self._stop.wait(1.0)

    def _post(
        self,
        conn: http.client.HTTPConnection,
        target: urllib.parse.SplitResult,
        path: str,
        job: Job,
    ) -> http.client.HTTPConnection:
        try:
            conn.request("POST", path, body=job.body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            self._later(job, f"network: {err}")
            return self._connect(target)
        self.posted += 1
        if resp.status >= 500:
            self._later(job, f"w3bstream {resp.status}")
            return conn
        answer = _json_object(data)
        # Sprout versions answer a taskID, older ones a messageID.
        task_id = answer.get("taskID", answer.get("messageID"))
        if resp.status == 200 and isinstance(task_id, str):
            self._store.finish(job.id, "accepted", task_id=task_id, reason="")
        else:
            why = answer.get("error") or data[:200].decode(errors="replace")
            self._store.finish(
                job.id, "rejected", task_id="", reason=f"w3bstream_{resp.status}: {why}"
            )
        return conn

    def _later(self, job: Job, error: str) -> None:
        self.retries += 1
        delay = min(self._max_backoff_s, 0.25 * 2 ** min(job.attempts, 10))
        self._store.retry_later(job.id, delay_s=delay, error=error)


def _http_url(url: str, what: str) -> urllib.parse.SplitResult:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise RelayError(f"{what} URL {url!r} is not http(s)://host[:port]")
    return parsed


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}
