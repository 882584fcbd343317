"""Shared fixtures: run device code on the real MicroPython VM at a board's heap."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ioconnect_host.firmware import host_build
from ioconnect_host.vm import DEFAULT_HEAP, run_script

RunDevice = Callable[..., list[Any]]

# Real MQTT parts (mosquitto broker fixture, acker): tests/brokers.py;
# a throwaway PostgreSQL cluster: tests/pgcluster.py.
pytest_plugins = ("brokers", "pgcluster")

# Virtual boards move bytes at their wire's speed by default (115200 baud on an
# ESP32 DevKit: 30 s for a firmware deploy). Tests lift it, here, before any board
# or subprocess starts; tests/test_sim_linerate.py checks the wire with fast=False.
os.environ.setdefault("IOCONNECT_SIM_FAST", "1")


def run_device(
    code: str,
    cases: Any = None,
    *,
    heap: str = DEFAULT_HEAP,
    fs_dir: Path | None = None,
) -> list[Any]:
    """Run ``code`` on MicroPython; return every stdout line parsed as JSON.

    ``cases`` (any JSON value) is written to ``cases.json`` in the device
    filesystem, so one VM process can run a whole batch of cases.
    """
    with tempfile.TemporaryDirectory(prefix="mpfs-") as tmp:
        root = fs_dir or Path(tmp)
        if cases is not None:
            (root / "cases.json").write_text(json.dumps(cases))
        # The firmware as a board gets it: compiled to .mpy, not compiled in the VM.
        out = run_script(code, fs_dir=root, heap=heap, extra_path=[host_build()])
    results = []
    for line in out.split("\n"):  # not splitlines(): U+2028 inside JSON is not a line break
        if not line:
            continue
        try:
            results.append(json.loads(line))
        except ValueError as exc:
            msg = f"device printed a non-JSON line: {line!r}\nfull output:\n{out}"
            raise AssertionError(msg) from exc
    return results


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Virtual boards' registry and caches go to a temp folder, not ~/.ioconnect."""
    os.environ["IOCONNECT_HOME"] = str(tmp_path_factory.mktemp("ioconnect-home"))


@pytest.fixture
def device() -> RunDevice:
    """``device(code, cases=None, heap="96K", fs_dir=None) -> list`` of JSON lines."""
    return run_device
