"""What ``ioconnect demo --faults`` needs: a relay that can be SIGKILLed, and the
fault schedule that breaks every part of the pipeline once during the run.

The relay runs as ``ioconnect relay`` in a child process (its durable store is
all that survives a SIGKILL, as in production); the demo reads its counters
from its Prometheus ``/metrics`` endpoint. Counters that live in the process
(ingest outcomes, forwarder retries) are summed over its lives, each as last
seen before it died; the store's counts (accepted, rejected) are durable.

Each fault is recorded with the time it was injected and evidence that it
took effect (the relay saw the broker go, the forwarder retried while the node
was down, the killed relay died by SIGKILL, a board booted again, readings
signed while Wi-Fi was down were accepted after it came back).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IoconnectError

__all__ = ["FaultRecord", "RelayProcess", "parse_metrics"]

_METRIC = re.compile(r'^(\w+)(?:\{\w+="((?:[^"\\]|\\.)*)"\})? (\S+)$')


def parse_metrics(text: str) -> dict[str, Any]:
    """The relay's ``/metrics`` text as ``RelayService.stats()`` shapes it."""
    out: dict[str, Any] = {
        "queued": 0, "accepted": 0, "dead_letters": 0, "rejections": {}, "ingest": {},
        "forwarder": {"posted": 0, "retries": 0}, "mqtt_connected": False,
    }  # fmt: skip
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        name, label, value = m.group(1), m.group(2), int(float(m.group(3)))
        if name == "ioconnect_relay_messages" and label in ("queued", "accepted", "dead_letters"):
            out[label] = value
        elif name == "ioconnect_relay_rejections_total" and label is not None:
            out["rejections"][label] = value
        elif name == "ioconnect_relay_ingested_total" and label is not None:
            out["ingest"][label] = value
        elif name == "ioconnect_relay_w3bstream_posts_total":
            out["forwarder"]["posted"] = value
        elif name == "ioconnect_relay_w3bstream_retries_total":
            out["forwarder"]["retries"] = value
        elif name == "ioconnect_relay_mqtt_connected":
            out["mqtt_connected"] = value == 1
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    """``ioconnect relay`` as a child process: start, SIGKILL, restart, stats."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.metrics_port = _free_port()
        self._argv = [sys.executable, "-m", "ioconnect_host.launcher", "relay", *args]
        self._argv += ["--metrics-port", str(self.metrics_port), "--json"]
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None
        self._dead_ingest: dict[str, int] = {}  # summed over earlier lives
        self._dead_retries = 0
        self.restarts = 0

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise IoconnectError(f"the relay exited at start (see {self._log})")
            if self._scrape() and self.stats()["mqtt_connected"]:
                return
            time.sleep(0.1)
        raise IoconnectError(f"the relay did not come up in {timeout_s:g} s (see {self._log})")

    def kill(self) -> int:
        """SIGKILL; returns its exit status (``-9``)."""
        assert self._proc is not None
        self._scrape()
        self._proc.send_signal(signal.SIGKILL)
        code = self._proc.wait(10)
        self._bury()
        return code

    def restart(self) -> None:
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """Graceful (SIGTERM: drains in-flight requests)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._scrape()
        self._proc.terminate()
        try:
            self._proc.wait(20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._bury()

    def _bury(self) -> None:
        # The dead process's counters, as last seen, join the earlier lives'.
        with self._lock:
            if self._last is not None:
                for kind, n in self._last["ingest"].items():
                    self._dead_ingest[kind] = self._dead_ingest.get(kind, 0) + n
                self._dead_retries += self._last["forwarder"]["retries"]
            self._last = None

    def _scrape(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                current = parse_metrics(resp.read().decode())
        except OSError:
            return False
        with self._lock:
            self._last = current
        return True

    def stats(self) -> dict[str, Any]:
        """Cumulative over the relay's lives; store counts from the last scrape."""
        self._scrape()
        with self._lock:
            last = self._last or parse_metrics("")
            ingest = dict(self._dead_ingest)
            for kind, n in last["ingest"].items():
                ingest[kind] = ingest.get(kind, 0) + n
            return {
                **last,
                "ingest": ingest,
                "forwarder": {**last["forwarder"], "retries": self._dead_retries
                              + last["forwarder"]["retries"]},
                "mqtt_connected": self._last is not None and last["mqtt_connected"],
            }  # fmt: skip


@dataclass
class FaultRecord:
    """One fault: what, when (seconds into the run), on what, and whether it bit."""

    fault: str
    at_s: float
    target: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    took_effect: bool | None = None  # None: decided at the end

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "at_s": round(self.at_s, 1),
            "target": self.target,
            "took_effect": self.took_effect,
            **self.evidence,
        }


def watch_for(cond: Callable[[], bool], during: Callable[[], None], poll_s: float = 0.1) -> bool:
    """Run ``during`` while polling ``cond`` in a thread; True if it was ever seen."""
    seen = threading.Event()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if cond():
                seen.set()
                return
            time.sleep(poll_s)

    t = threading.Thread(target=poll, name="fault-watch", daemon=True)
    t.start()
    try:
        during()
    finally:
        time.sleep(poll_s * 3)
        done.set()
        t.join(5)
    return seen.is_set()
