"""One error base for faults of a device or of the user's input.

Only ``cli.main`` turns these into one stderr line and a non-zero exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys


class IoconnectError(Exception):
    """A fault of the device or of the input, with a hint for the user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text


class DeviceError(IoconnectError):
    """The device (real or virtual) reported a typed error."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{code}: {message}", hint)
        self.code = code


class VMError(IoconnectError):
    """The MicroPython VM could not be started or died."""


class UsageError(IoconnectError):
    """The command line itself is wrong (unknown option, bad value): exit status 2."""

    exit_code = 2


# What a deploy cut short leaves: files are staged, and only the plan file's rename
# switches (boot.py finishes or drops a deploy), so the board is never half-updated.
_AFTER_INTERRUPT = {
    "deploy": "the board boots its old firmware or the new one whole, never a mix; "
    "run deploy again to finish",
    # Cut mid-write, the firmware (or the image's filesystem) is half there; the
    # loaders that take a new one are in the chip's ROM, which a flash never writes.
    "flash": "the board may hold a half-written image and not boot; flash it again "
    "(the ESP32's ROM download mode and the Pico's BOOTSEL are in ROM and still work)",
}


def report_interrupt(command: str | None) -> int:
    """Ctrl-C: one stderr line instead of a traceback; the shell's status for SIGINT (130)."""
    # On a terminal the line would follow the echoed ^C or a progress bar.
    lead = "\n" if sys.stderr.isatty() else ""
    note = _AFTER_INTERRUPT.get(command or "")
    what = f"{command} interrupted" if command else "interrupted"
    print(f"{lead}ioconnect: {what}" + (f": {note}" if note else ""), file=sys.stderr)
    return 130
