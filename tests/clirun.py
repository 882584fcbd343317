"""The ``ioconnect`` CLI run in-process for tests, and its one-line errors read back.

Every command's bad input ends in exactly one stderr line "ioconnect: error: <message>";
``error_line`` and ``error_message`` fail the test unless that is what stderr holds.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

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


def interrupt_when(
    proc: subprocess.Popen[str],
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    *,
    wait: float = 120,
) -> tuple[str, str]:
    """Ctrl-C (SIGINT) to a running CLI once ``ready()`` holds; its stdout and stderr.

    Fails the test if the command ends first or ``ready`` stays false ``timeout`` s;
    the process is killed whatever happens.
    """
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{what} within {timeout} s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=wait)
    finally:
        proc.kill()
    return out, err
