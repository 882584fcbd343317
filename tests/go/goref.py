"""Build and run the Go reference program (tests/go/main.go) for the tests.

Only the Go standard library is used; the build needs no network. Without a Go
toolchain the tests that need it skip, unless IOCONNECT_REQUIRE_GO=1 (CI).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def _build() -> tuple[str, tuple[int, int]] | str:
    """Return (binary path, go version) or a reason string when Go is missing."""
    go = shutil.which("go")
    if go is None:
        return "the Go toolchain ('go') is not installed"
    tmp = Path(tempfile.mkdtemp(prefix="ioconnect-goref-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    env = dict(
        os.environ,
        GOCACHE=str(tmp / "cache"),
        GOPATH=str(tmp / "gopath"),
        GOTOOLCHAIN="local",
        GOFLAGS="",
        GOPROXY="off",
        CGO_ENABLED="0",
    )
    out = tmp / "goref"
    done = subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=HERE, env=env, capture_output=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError("go build of tests/go failed:\n" + done.stderr.decode())
    ver = subprocess.run([go, "env", "GOVERSION"], env=env, capture_output=True, text=True)
    parts = ver.stdout.strip().removeprefix("go").split(".")
    return str(out), (int(parts[0]), int(parts[1]))


def go_reference() -> tuple[str, tuple[int, int]]:
    """(path of the built reference binary, Go version); skips or fails without Go."""
    got = _build()
    if isinstance(got, str):
        if os.environ.get("IOCONNECT_REQUIRE_GO") == "1":
            pytest.fail(f"{got}, and IOCONNECT_REQUIRE_GO=1")
        pytest.skip(f"{got} (set IOCONNECT_REQUIRE_GO=1 to make this a failure)")
    return got


def run_go(binary: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run every case through the Go program; one result dict per case."""
    text = "".join(json.dumps(c) + "\n" for c in cases)
    done = subprocess.run([binary], input=text, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError("Go reference failed: " + done.stderr)
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(cases), done.stdout[-2000:]
    return results
