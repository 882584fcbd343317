"""Parts for the attestation-loop fault test: a device-side power-cut hook put on a
virtual board's flash, and a watcher of the loop's console events.

The hook (``CUT_HOOK``, installed as ``cuthook.py`` and imported first by
``main.py``) wraps two firmware functions. When the host creates
``cut-outbox`` on the flash, the next write of a reading to the outbox writes
half of its temp file and then the power goes; with ``cut-publish``, the next
PUBLISH goes out, the broker's PUBACK comes back, and the power goes before the
publish returns to the delivery layer (before the relay's ack can be applied).
"The power goes" is ``machine.reset()``, which the virtual board's supervisor
carries out by killing the VM where it stands (no cleanup runs, as with a
power cut) and booting again from the same flash. The marker file is removed
first, so the next boot runs clean. Before the cut the hook prints an agent
frame ``{"event": "cut", "where", "nonce"}`` so the host knows it took effect.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial
from ioconnect_host.firmware import host_build
from ioconnect_host.frames import FrameReader

CUT_HOOK = """
import json
import os

import machine
from ioconnect import app, mqtt, outbox


def _armed(where):
    try:
        os.remove("cut-" + where)
    except OSError:
        return False
    return True


def _cut(where, nonce):
    app.emit({"event": "cut", "where": where, "nonce": nonce})
    machine.reset()


_write = outbox.Outbox._write


def _cut_write(self, name, data):
    leaf = name.rsplit("/", 1)[-1]
    if leaf.isdigit() and _armed("outbox"):
        with open(name + ".tmp", "wb") as f:
            f.write(data[: len(data) // 2])
        _cut("outbox", int(leaf))
    return _write(self, name, data)


outbox.Outbox._write = _cut_write

_publish = mqtt.MQTTClient.publish


def _cut_publish(self, topic, msg, qos=1, n=None):
    _publish(self, topic, msg, qos, n)
    if _armed("publish"):  # the broker has it (PUBACK); the relay's ack is not in yet
        _cut("publish", json.loads(bytes(msg[: len(msg) if n is None else n]))["nonce"])


mqtt.MQTTClient.publish = _cut_publish
"""


def install_firmware_with_cut_hook(flash: Path) -> None:
    """The firmware on the flash (so the board does not install it), main.py
    importing the hook first."""
    shutil.copytree(host_build(), flash, dirs_exist_ok=True)
    (flash / "cuthook.py").write_text(CUT_HOOK)
    main = flash / "main.py"
    main.write_text("import cuthook  # test hook: tests/loopfaults.py\n" + main.read_text())


class LoopWatch:
    """Reads a board's console in a thread; keeps every agent frame the loop prints."""

    def __init__(self, port: str) -> None:
        self._serial = serial.serial_for_url(port, baudrate=115200, timeout=0.2)
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        reader = FrameReader()
        while not self._stop.is_set():
            try:
                data = self._serial.read(4096)
            except (OSError, serial.SerialException):
                time.sleep(0.05)  # the pty between two boots
                continue
            for event in reader.feed(data):
                if isinstance(event, dict) and "event" in event:
                    with self._lock:
                        self._events.append(event)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events if kind is None or e["event"] == kind]

    def signed(self) -> list[int]:
        return [e["nonce"] for e in self.events("signed")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._serial.close()


def until(cond: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``cond`` until it is truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
