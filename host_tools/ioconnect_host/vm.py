"""Run device code on the real MicroPython VM (the unix port from PyPI).

The VM sees ``fs_dir`` as its current directory (the device filesystem) and the
firmware on its import path, with the heap limited to a board's budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .errors import VMError
from .paths import firmware_dir

__all__ = ["DEFAULT_HEAP", "micropython_command", "run_script"]

#: Heap of an ESP32 without PSRAM, the smallest supported board.
DEFAULT_HEAP = "96K"


def micropython_command(heap: str = DEFAULT_HEAP) -> list[str]:
    """The argv prefix that starts the MicroPython unix port with ``heap``."""
    launcher = "import sys; from micropython_unix import main; sys.exit(main())"
    return [sys.executable, "-c", launcher, "-X", f"heapsize={heap}"]


def run_script(
    code: str,
    *,
    fs_dir: Path,
    heap: str = DEFAULT_HEAP,
    timeout_s: float = 300.0,
    extra_path: list[Path] | None = None,
) -> str:
    """Run ``code`` on MicroPython with ``fs_dir`` as the device filesystem.

    Args:
        code: MicroPython source to execute.
        fs_dir: folder used as the VM's current directory (created if missing).
        heap: heap size, e.g. ``"96K"``.
        timeout_s: give up after this many seconds.
        extra_path: the VM's import path in place of the shipped firmware source, e.g.
            ``[host_build()]``. The source is then not on the path at all: a module
            missing from a build is an ImportError, never compiled in the board's heap.

    Returns:
        What the script printed on stdout.

    Raises:
        VMError: the VM could not start, timed out, or the script raised.

    Example:
        >>> run_script("print(1+1)", fs_dir=Path("/tmp/dev")).strip()
        '2'
    """
    fs_dir.mkdir(parents=True, exist_ok=True)
    path = [str(p) for p in (extra_path or [firmware_dir()])]
    env = dict(os.environ, MICROPYPATH=":".join(path))
    # "-c" keeps the script off the device filesystem.
    argv = [*micropython_command(heap), "-c", code]
    try:
        done = subprocess.run(
            argv,
            cwd=fs_dir,
            env=env,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            umask=0o077,  # what the device writes (its key!) is private to this user
        )
    except subprocess.TimeoutExpired as exc:
        raise VMError(f"MicroPython did not finish within {timeout_s:.0f} s") from exc
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        err = (done.stderr.decode("utf-8", "replace") + out).strip().splitlines()
        last = err[-1] if err else f"exit status {done.returncode}"
        raise VMError(f"MicroPython script failed: {last}", hint="\n".join(err[-15:]))
    return out
