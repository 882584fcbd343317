"""The ``ioconnect`` CLI run in-process for tests, and its one-line errors read back.

Every command's bad input ends in exactly one stderr line "ioconnect: error: <message>";
``error_line`` and ``error_message`` fail the test unless that is what stderr holds.
"""

from __future__ import annotations

import pytest
from ioconnect_host.cli import main

ERROR_PREFIX = "ioconnect: error: "


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in this process: its exit status, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The whole of stderr's one line, prefix included; asserts there is just one error line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR_PREFIX), err
    return lines[0]


def error_message(err: str) -> str:
    """stderr's one error line without its "ioconnect: error: " prefix."""
    return error_line(err)[len(ERROR_PREFIX) :]
