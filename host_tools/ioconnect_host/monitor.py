"""``ioconnect monitor``'s library: the board's console with every signed frame
decoded and checked, as it arrives, against the device's identity.

Plain text passes through untouched. Each agent frame is verified with the
``verify`` library (:func:`~ioconnect_host.verify_task.verify_frame`): a
``task`` frame's request (and its COSE token) must be signed by the device;
a nonce must not come back with another body; ``signed`` nonces (readings
sent over MQTT) must rise. A frame that fails is shown as failing, never
dropped.

Example:
    >>> checker = FrameChecker(claim_from(did=ident["did"]))
    >>> for event in watch(link, checker, stop=lambda: False):
    ...     print(event.kind, event.verdict and event.verdict.valid)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import serial

from .agent import identity_show
from .console import ConsoleSplitter
from .ports import BoardRef
from .signer import Claim, claim_from
from .transport import PortError, SerialTransport
from .verdict import MalformedError, Verdict
from .verify import check_identity
from .verify_task import verify_frame

__all__ = [
    "FrameChecker",
    "MonitorEvent",
    "Tally",
    "claim_of_device",
    "identity_from_board",
    "now_ms",
    "watch",
]


@dataclass
class MonitorEvent:
    """One thing seen on the console.

    Attributes:
        kind: ``text`` (plain console output), ``frame`` (an intact agent
            frame, with its verdict) or ``damaged`` (a frame whose length or CRC fails).
        data: the text (bytes) or the frame's JSON value.
        verdict: the frame's verdict.
    """

    kind: Literal["text", "frame", "damaged"]
    data: Any
    verdict: Verdict | None = None


@dataclass
class Tally:
    """Counts of what the monitor saw."""

    frames: int = 0
    valid: int = 0
    invalid: int = 0
    damaged: int = 0
    reasons: list[str] = field(default_factory=list)


class FrameChecker:
    """Verifies frames one after another and remembers the nonces seen.

    Args:
        claim: the device's identity (None: signatures checked for form only).
        signed_keys: the project's W3bstream signed keys.
    """

    def __init__(self, claim: Claim | None, signed_keys: tuple[str, ...] = ()) -> None:
        self.claim = claim
        self.signed_keys = signed_keys
        self._bodies: dict[int, str] = {}  # task nonce -> body (resends must be identical)
        self._last_signed = 0

    def check(self, frame: Any) -> Verdict:
        """The verdict on one frame (never raises for bad frames: they are verdicts)."""
        if not isinstance(frame, dict):
            bad = Verdict("frame")
            bad.fail(f"a frame holding {type(frame).__name__}, not an object")
            return bad
        try:
            v = verify_frame(frame, self.claim, self.signed_keys)
        except MalformedError as exc:
            v = Verdict("frame")
            v.add("event", frame.get("event"))
            v.fail(str(exc))
            return v
        nonce = frame.get("nonce")
        if frame.get("event") == "task" and isinstance(nonce, int) and v.valid:
            before = self._bodies.setdefault(nonce, frame["body"])
            if before != frame["body"]:
                v.fail(f"nonce {nonce} came before with another body (replayed nonce)")
            elif len(self._bodies) > 4096:  # bounded: forget the oldest
                del self._bodies[min(self._bodies)]
        if frame.get("event") == "signed" and isinstance(nonce, int):
            if nonce <= self._last_signed:
                v.fail(f"nonce {nonce} after {self._last_signed}: replayed or reordered")
            self._last_signed = max(self._last_signed, nonce)
        return v


def watch(
    link: serial.Serial,
    checker: FrameChecker,
    *,
    stop: Callable[[], bool],
    tally: Tally | None = None,
) -> Iterator[MonitorEvent]:
    """Read the console until ``stop()`` is true or the port goes away.

    Raises:
        PortError: the port failed while reading (board unplugged).
    """
    splitter = ConsoleSplitter()
    tally = tally if tally is not None else Tally()
    while not stop():
        try:
            data = link.read(max(1, link.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise PortError(
                f"{link.port}: read failed: {exc}", hint="was the board unplugged?"
            ) from exc
        for kind, value in splitter.feed(data):
            if kind == "frame":
                verdict = checker.check(value)
                tally.frames += 1
                if verdict.valid:
                    tally.valid += 1
                else:
                    tally.invalid += 1
                    tally.reasons.append(verdict.reason)
                yield MonitorEvent("frame", value, verdict)
            else:
                if kind == "damaged":
                    tally.damaged += 1
                yield MonitorEvent(kind, value)
            if stop():
                return
    for _kind, value in splitter.flush():
        yield MonitorEvent("text", value)


def identity_from_board(
    ref: BoardRef, *, timeout_s: float = 20.0, restart: bool = True
) -> dict[str, Any]:
    """Ask the board who it is, then let its program run again.

    The running program is interrupted and the board soft-reset into the raw
    REPL (a fresh heap for the agent, as the loop may have used most of it);
    after ``identity.show`` a soft reset from the friendly REPL starts
    boot.py and main.py again. The identity is checked (keys, DIDs) on the host.

    ``restart=False`` leaves the board at the friendly REPL's prompt (its banner
    read here), for a caller that sends the soft reset (Ctrl-D) on the port it
    then reads: nothing the restart prints falls between two opens of the port.

    Raises:
        TransportError: the board did not answer.
        AgentError: it has no identity.
        VerificationError: its DIDs do not follow from its public key.
    """
    with SerialTransport(ref.port) as t:
        t.enter_raw_repl(soft_reset=True, timeout_s=timeout_s)
        ident = identity_show(t)
        t.exit_raw_repl()
        if restart:
            t.send(b"\x04")  # soft reset in the friendly REPL: the program runs again
        else:
            t.read_until(b">>> ", timeout_s=timeout_s, what="the friendly REPL")
    check_identity(ident)
    return ident


def claim_of_device(ident: dict[str, Any]) -> Claim:
    """The claim a device's ``identity.show`` answer makes (its own key)."""
    claim = claim_from(public_key=ident["public_key"], curve=ident["curve"])
    assert claim is not None
    return Claim(
        label=ident["did"], address=claim.address, curve=claim.curve,
        public_key=claim.public_key, did=ident["did"],
    )  # fmt: skip


def now_ms() -> int:
    """Wall-clock milliseconds (the JSON lines' timestamp)."""
    return int(time.time() * 1000)
