"""What ``ioconnect verify`` (and ``monitor``) says about one message: a verdict
with the message's fields explained one by one.

A verdict is *valid* or *invalid* (with one line why). Input that cannot be
taken apart at all is not a verdict but a :class:`MalformedError` (exit 2).

Example:
    >>> v = Verdict("eip191")
    >>> v.add("message", "hello", "the text that was signed")
    >>> v.fail("signed by 0xabc…, not the claimed 0xdef…")
    >>> v.valid, v.reason
    (False, 'signed by 0xabc…, not the claimed 0xdef…')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import IoconnectError

__all__ = ["KINDS", "Field", "Kind", "MalformedError", "Verdict"]

Kind = Literal["w3bstream", "cose", "ioid", "eip191", "sprout", "frame"]
#: Every kind ``verify`` knows, in the order auto-detection tries them.
KINDS: tuple[Kind, ...] = ("frame", "w3bstream", "sprout", "ioid", "eip191", "cose")


class MalformedError(IoconnectError):
    """The input is not a message of the kind asked for (or of any kind): exit status 2."""

    exit_code = 2


@dataclass
class Field:
    """One field of the message: its value, what it means, and whether it checked out.

    Attributes:
        name: the field's name as the format calls it.
        value: its value, as text.
        note: what it means or what was checked.
        ok: True checked and good, False checked and bad, None information only.
    """

    name: str
    value: str
    note: str = ""
    ok: bool | None = None


@dataclass
class Verdict:
    """The result of verifying one message.

    Attributes:
        kind: what the message is.
        valid: every check passed.
        reason: one line why not (first failure), "" when valid.
        signer: the address or DID that signed, when known.
        signer_checked: the signer was compared with a claimed identity
            (``--did``/``--address``/inventory/the message's own claim).
        fields: the explanation, field by field.
        parts: verdicts of messages carried inside this one (a frame's COSE token).
    """

    kind: Kind
    valid: bool = True
    reason: str = ""
    signer: str | None = None
    signer_checked: bool = False
    fields: list[Field] = field(default_factory=list)
    parts: list[Verdict] = field(default_factory=list)

    def add(self, name: str, value: Any, note: str = "", ok: bool | None = None) -> None:
        """Explain one field (a failed ``ok`` does not fail the verdict: use :meth:`fail`)."""
        self.fields.append(Field(name, str(value), note, ok))

    def fail(self, reason: str) -> None:
        """Mark the verdict invalid; the first reason given is the one reported."""
        if self.valid:
            self.valid, self.reason = False, reason

    def include(self, part: Verdict, what: str) -> None:
        """Add a verdict of an inner message; its failure fails this one."""
        self.parts.append(part)
        if not part.valid:
            self.fail(f"{what}: {part.reason}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (``verify --json``, ``monitor --json``)."""
        return {
            "kind": self.kind,
            "valid": self.valid,
            "reason": self.reason or None,
            "signer": self.signer,
            "signer_checked": self.signer_checked,
            "fields": [
                {"name": f.name, "value": f.value, "note": f.note, "ok": f.ok} for f in self.fields
            ],
            "parts": [p.to_json() for p in self.parts],
        }

    def lines(self) -> list[str]:
        """The explanation as text lines (``verify`` without ``--json``)."""
        out = [f"{self.kind}: {'VALID' if self.valid else 'INVALID: ' + self.reason}"]
        width = max((len(f.name) for f in self.fields), default=0) + 2
        mark = {True: "ok ", False: "BAD", None: "   "}
        for f in self.fields:
            value = f.value if len(f.value) <= 100 else f.value[:97] + "..."
            note = f"  ({f.note})" if f.note else ""
            out.append(f"  {mark[f.ok]} {f.name + ':':<{width}}{value}{note}")
        for part in self.parts:
            out += ["  " + line for line in part.lines()]
        return out
