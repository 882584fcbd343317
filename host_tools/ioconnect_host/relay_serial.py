"""The relay's serial side: signed readings from boards without a network.

Such a board's attestation loop prints each pending reading on its console as
an agent frame ``{"event": "task", "nonce": N, "body": "<POST /v1/task body>"}``
(again each cycle until acknowledged) and reads acknowledgements framed the
same way between readings (firmware ``ioconnect/app.py``). One thread per port
holds the port for the relay's whole run (one session per port, opened
exclusively) and does both: it picks the frames out of the console bytes
(:class:`FrameReader`), puts each reading through :meth:`Relay.ingest` (the
same checks and store as MQTT), and writes the ack request
(:func:`agent.ack_request`, what :func:`agent.ack_inline` sends) on the same open
port without waiting: the loop answers between readings and the answers are
matched by id as they come. ``queued`` (stored: the relay owns it) or
``rejected`` (with the reason) makes the board drop the reading; a full store
gets no ack (the board sends it again). The loop prints its pending readings
oldest first, so they reach the store in nonce order (the high-water mark).

A serial message names no device; its signature recovers two candidate
addresses (v = 0 and 1). The device is the one the inventory approves, or the
one two messages from the port have in common (a second signature recovers
the true address again, the false one differs): a reading is not acknowledged
before its device is known. The port is the device's own link, so a reading
that cannot be read is refused to it with the reason, not just dropped.

Example:
    >>> front = SerialFront(relay, ["/dev/ttyACM0", "sim:dev1"], approved=inv.is_approved)
    >>> front.start()
    >>> front.stop()
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import serial

from . import agent
from . import w3bstream as w3b
from .errors import IoconnectError
from .frames import FrameReader
from .node import Approver
from .relay import Ingested, Relay, RelayError, tasks_topic

__all__ = ["PortStats", "SerialFront", "check_serial_spec"]

_READ_TIMEOUT_S = 0.1
_REOPEN_S = 1.0
_REASON_MAX = 60  # the loop reads request lines of at most 240 bytes
_MAX_HELD = 16
_MAX_ASKED = 64


def check_serial_spec(spec: str) -> None:
    """Refuse port forms that would have to probe a board (which stops its loop).

    Raises:
        RelayError: ``auto`` or a ``did:``.
    """
    if spec == "auto" or spec.startswith("did:"):
        raise RelayError(
            f"--serial {spec!r} would probe boards (which stops their loops): "
            "name the port (path, socket://, rfc2217://, sim:NAME or id:SERIAL)"
        )


def _open(spec: str) -> Any:
    # sim:NAME and id:SERIAL are looked up at each (re)open: a board that reset
    # may be back under another path.
    from .ports import select_port

    port = select_port(spec).port
    if "://" in port:
        return serial.serial_for_url(port, timeout=_READ_TIMEOUT_S, write_timeout=2.0)
    return serial.Serial(port, timeout=_READ_TIMEOUT_S, write_timeout=2.0, exclusive=True)


@dataclass
class PortStats:
    """What one port's reader did (for stats and /metrics)."""

    frames: int = 0  # intact frames read
    tasks: int = 0  # task events among them
    acked: int = 0  # acks the board confirmed
    ack_failures: int = 0  # acks unanswered or refused (the board sends again)
    unknown_device: int = 0  # held until a second message names the device
    open: bool = False
    last_error: str = ""
    by_kind: dict[str, int] = field(default_factory=dict)


class _PortReader:
    """One port: read frames, ingest tasks, ack on the same open port."""

    def __init__(
        self, relay: Relay, spec: str, approved: Approver, log: Callable[[str], None]
    ) -> None:
        self.relay = relay
        self.spec = spec
        self.approved = approved
        self.log = log
        self.stats = PortStats()
        self.stop = threading.Event()
        self.known: set[str] = set()  # candidate device addresses on this port
        self.held: list[tuple[int, bytes]] = []  # readings before the device was known
        self.asked: dict[int, int] = {}  # ack request id -> nonce, awaiting the answer
        self.thread = threading.Thread(target=self._run, name=f"relay-serial {spec}", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                port = _open(self.spec)
            except (IoconnectError, serial.SerialException, OSError, ValueError) as err:
                self._failed(f"cannot open {self.spec}: {err}")
                continue
            self.stats.open = True
            self.log(f"reading signed readings from {self.spec}")
            try:
                self._serve(port)
            except (serial.SerialException, OSError) as err:
                self._failed(f"{self.spec}: {err}")
            finally:
                self.stats.open = False
                port.close()

    def _failed(self, message: str) -> None:
        if message != self.stats.last_error:  # one line per new trouble, not per retry
            self.log(message)
        self.stats.last_error = message
        self.stop.wait(_REOPEN_S)

    def _serve(self, port: Any) -> None:
        reader = FrameReader()
        while not self.stop.is_set():
            for frame in reader.feed(port.read(4096)):
                self.stats.frames += 1
                if isinstance(frame, dict) and "ok" in frame and "id" in frame:
                    self._answered(frame)
                    continue
                for request in self._frame(frame):
                    port.write(request)

    def _frame(self, frame: Any) -> list[bytes]:
        """The ack requests to write for one console frame (none: not a task, or
        its device not known yet, or the store is full)."""
        if not isinstance(frame, dict) or frame.get("event") != "task":
            return []
        nonce, body = frame.get("nonce"), frame.get("body")
        if not isinstance(nonce, int) or not isinstance(body, str):
            return []
        self.stats.tasks += 1
        out = []
        for n, got in self._ingest(nonce, body.encode()):
            self.stats.by_kind[got.kind] = self.stats.by_kind.get(got.kind, 0) + 1
            if got.ack is None:  # full: no ack, the board sends it again
                continue
            ack = json.loads(got.ack)
            rid, request = agent.ack_request(
                n, ack["status"], task_id=ack.get("taskID", ""),
                reason=ack.get("reason", "")[:_REASON_MAX],
            )  # fmt: skip
            self.asked[rid] = n
            out.append(request)
        while len(self.asked) > _MAX_ASKED:  # answers lost: the board sends again
            self.asked.pop(next(iter(self.asked)))
            self.stats.ack_failures += 1
        return out

    def _answered(self, answer: dict[str, Any]) -> None:
        nonce = self.asked.pop(answer["id"], None) if isinstance(answer["id"], int) else None
        if nonce is None:
            return  # an answer to someone else's request, or one we gave up on
        if answer["ok"] is True:
            self.stats.acked += 1
        else:
            self.stats.ack_failures += 1
            self.log(f"{self.spec}: the board refused the ack of nonce {nonce}: {answer}")

    def _ingest(self, nonce: int, raw: bytes) -> list[tuple[int, Ingested]]:
        try:
            task, signers = self.relay.signers(raw)
        except w3b.TaskError as err:
            return [(nonce, self.relay.refuse_unread(nonce, err.reason))]
        if task.nonce != nonce:  # the board's outbox key must be the signed nonce
            return [(nonce, self.relay.refuse_unread(nonce, "nonce_mismatch"))]
        device = self._device(task.project_id, signers)
        if device is None:
            # Not acknowledged until its device is known; kept so that it is stored
            # before the later reading that tells (the high-water mark).
            self.stats.unknown_device += 1
            if len(self.held) < _MAX_HELD and all(n != nonce for n, _ in self.held):
                self.held.append((nonce, raw))
            return []
        todo = sorted([*self.held, (nonce, raw)]) if self.held else [(nonce, raw)]
        self.held = []
        topic = tasks_topic(task.project_id, device)
        return [(n, self.relay.ingest(topic, r)) for n, r in todo]

    def _device(self, project: str, signers: tuple[str, str]) -> str | None:
        candidates = {a for a in signers if a}
        pool = {a for a in candidates if self.approved(project, a)} or candidates
        if self.known & pool:
            pool &= self.known
        self.known = pool
        return next(iter(pool)) if len(pool) == 1 else None


class SerialFront:
    """Feeds readings from boards' serial consoles to :meth:`Relay.ingest`."""

    def __init__(
        self,
        relay: Relay,
        ports: Sequence[str],
        *,
        approved: Approver,
        log: Callable[[str], None] = print,
    ) -> None:
        """Args:
        ports: ``--port`` forms: a path, ``socket://``, ``rfc2217://``,
            ``sim:NAME`` or ``id:SERIAL`` (not ``auto`` nor a DID: no probing).
        approved: the inventory's say, to tell the device among the signers.

        Raises:
            RelayError: a port form that would probe boards.
        """
        for spec in ports:
            check_serial_spec(spec)
        self._readers = [_PortReader(relay, spec, approved, log) for spec in ports]

    def start(self) -> None:
        for r in self._readers:
            r.thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop reading; an ack being written finishes first (what is unacknowledged
        the board sends again to the next relay)."""
        for r in self._readers:
            r.stop.set()
        for r in self._readers:
            r.thread.join(timeout_s)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {r.spec: vars(r.stats).copy() for r in self._readers}
