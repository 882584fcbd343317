"""One error base for faults of a device or of the user's input.

Only ``cli.main`` turns these into one stderr line and a non-zero exit; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
