"""The whole product in one run: virtual boards attest, the relay carries, a node accepts.

``run_demo`` starts an MQTT broker (mosquitto when installed, else embedded),
the local W3bstream node, the relay, and N virtual boards running the real
firmware; provisions each board (identity, config, inventory) through the same
library as ``ioconnect provision``; resets them into their own attestation
loop; and watches. Each board's console is read (without disturbing it) for
the loop's ``signed`` events, the node's store for what was accepted.

At the end every reading signed before the stop must be accepted by the node
exactly once (the node stores each (device, nonce) once and refuses a second
body for a used nonce); ``DemoResult.ok`` says whether that held.

Example:
    >>> result = run_demo(DemoOptions(devices=2, duration_s=10))
    >>> result.ok, result.totals["accepted"]
    (True, 18)
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import serial

from .boards import load_board
from .broker import RunningBroker, start_broker
from .errors import IoconnectError
from .frames import FrameReader
from .inventory import Inventory
from .node import Node, serve
from .ports import BoardRef
from .provision import ProvisionOptions, provision
from .relay_service import RelayOptions, RelayService
from .session import open_session

__all__ = ["DemoError", "DemoOptions", "DemoResult", "DeviceView", "run_demo"]


class DemoError(IoconnectError):
    """The demo could not set itself up."""


@dataclass(frozen=True)
class DemoOptions:
    """Args of ``ioconnect demo``; ``messages`` (per device) ends the run instead of time."""

    devices: int = 3
    board: str = "esp32-s3"
    duration_s: float = 30.0
    messages: int | None = None
    interval_s: int = 1
    broker: str = "auto"  # auto|mosquitto|embedded: start one here; else a broker URL
    project_id: str = "42"
    workdir: Path | None = None  # None: a temporary folder, removed at the end
    settle_s: float = 60.0  # how long to wait for the last readings to arrive


@dataclass
class DeviceView:
    """One board as the demo sees it."""

    name: str
    address: str = ""
    signed: dict[int, float] = field(default_factory=dict)  # nonce -> time seen signed
    accepted: dict[int, float] = field(default_factory=dict)  # nonce -> time accepted
    errors: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "device": self.name,
            "address": self.address,
            "signed": len(self.signed),
            "accepted": len(self.accepted),
            "errors": len(self.errors),
        }


@dataclass
class DemoResult:
    """The summary: ``ok`` only if every reading signed before the stop was accepted once."""

    ok: bool
    devices: list[DeviceView]
    totals: dict[str, Any]
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "totals": self.totals,
            "devices": [d.row() for d in self.devices],
            "problems": self.problems,
        }


Snapshot = Callable[[list[DeviceView], dict[str, Any]], None]


class _ConsoleWatch:
    """Reads one board's serial port in a thread and records its loop's events."""

    def __init__(self, port: str, view: DeviceView) -> None:
        self._serial = serial.serial_for_url(port, baudrate=115200, timeout=0.2)
        self._view = view
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"watch-{view.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        reader = FrameReader()
        while not self._stop.is_set():
            try:
                data = self._serial.read(4096)
            except (OSError, serial.SerialException):
                return
            for event in reader.feed(data):
                self._record(event)

    def _record(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind, now = event.get("event"), time.time()
        with self._lock:
            if kind == "signed" and isinstance(event.get("nonce"), int):
                self._view.signed.setdefault(event["nonce"], now)
            elif kind in ("error", "halted", "stopped"):
                self._view.errors.append(str(event.get("reason", "")))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._serial.close()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_demo(
    opts: DemoOptions,
    *,
    on_update: Snapshot | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo (see the module doc). ``on_update`` gets a snapshot about once a second."""
    from ioconnect_sim.launch import start_board  # the demo uses the simulator; the core never

    say = progress or (lambda text: None)
    if opts.devices < 1:
        raise DemoError("--devices must be at least 1")
    if load_board(opts.board).network != "wifi":
        raise DemoError(
            f"board {opts.board!r} has no Wi-Fi: the demo's boards publish over MQTT",
            hint="pick esp32-s3, esp32, esp32-c3 or rpi-pico-w",
        )
    tmp = None
    if opts.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ioconnect-demo-")
        work = Path(tmp.name)
    else:
        work = opts.workdir
        work.mkdir(parents=True, exist_ok=True)
    stack: list[Callable[[], None]] = []
    try:
        broker_url, mqtt_version = opts.broker, "5"
        if opts.broker in ("auto", "mosquitto", "embedded"):
            running: RunningBroker = start_broker(opts.broker)  # type: ignore[arg-type]
            stack.append(running.stop)
            broker_url, mqtt_version = running.url, running.mqtt_version
            say(f"MQTT broker ({running.kind}, MQTT {mqtt_version}) on {broker_url}")
        inventory = Inventory(work / "inventory.sqlite3")
        node = Node(work / "node.sqlite3", approved=inventory.is_approved)
        stack.append(node.close)
        server = serve(node)
        stack.append(server.stop)
        say(f"W3bstream node on http://127.0.0.1:{server.port}")
        relay = RelayService(
            RelayOptions(
                broker=broker_url,
                w3bstream=f"http://127.0.0.1:{server.port}",
                store=work / "relay.sqlite3",
                mqtt_version="5" if mqtt_version == "5" else "3.1.1",
                client_id=f"ioconnect-demo-relay-{int(time.time())}",
            ),
            approved=inventory.is_approved,
            log=lambda msg: None,
        )
        relay.start()
        stack.append(relay.stop)
        say(f"relay on {broker_url}")

        views: list[DeviceView] = []
        watches: list[_ConsoleWatch] = []
        for i in range(opts.devices):
            name = f"demo-{i + 1}"
            say(f"starting and provisioning virtual board {name} ({opts.board})")
            # The demo shows the pipeline, not the cable: no wire speed limit.
            board = start_board(
                opts.board, name=name, state_dir=work / "boards" / name, seed=i, fast=True
            )
            stack.append(board.stop)
            ref = BoardRef(port=board.port, board=opts.board, sim_name=name)
            with open_session(ref) as session:
                res = provision(
                    session,
                    ProvisionOptions(
                        project_id=opts.project_id,
                        board=opts.board,
                        broker=broker_url,
                        wifi_ssid="ioconnect-demo",
                        wifi_password="demo-password",
                    ),
                    inventory=inventory,
                )
                session.call("config.set", key="sample.interval_s", value=opts.interval_s)
            # Into the attestation loop, as after a power cycle in the field.
            board.power_cut()
            view = DeviceView(name=name, address=str(res.identity["address"]).lower())
            views.append(view)
            watches.append(_ConsoleWatch(board.port, view))
        stack.extend(w.close for w in watches)
        say("attesting")
        start = time.monotonic()

        def refresh() -> None:
            for view in views:
                for task in node.tasks_of(view.address):
                    view.accepted.setdefault(task["nonce"], time.time())
            if on_update:
                on_update(views, relay.stats())

        def done() -> bool:
            if opts.messages is not None:
                return all(len(v.accepted) >= opts.messages for v in views)
            return time.monotonic() - start >= opts.duration_s

        while not done():
            time.sleep(0.5)
            refresh()
        stop_at = time.time()
        say("stopped sampling count; waiting for the last readings")
        deadline = time.monotonic() + opts.settle_s
        while time.monotonic() < deadline:
            refresh()
            if all(
                all(n in v.accepted for n, t in v.signed.items() if t <= stop_at) for v in views
            ):
                break
            time.sleep(0.5)
        return _result(views, relay.stats(), stop_at)
    finally:
        for undo in reversed(stack):
            try:
                undo()
            except Exception as exc:  # tear down the rest whatever one part does
                say(f"while stopping: {exc!r}")
        if tmp is not None:
            tmp.cleanup()


def _result(views: list[DeviceView], relay_stats: dict[str, Any], stop_at: float) -> DemoResult:
    problems: list[str] = []
    latencies: list[float] = []
    signed_total = accepted_total = 0
    for v in views:
        due = {n: t for n, t in v.signed.items() if t <= stop_at}
        signed_total += len(due)
        accepted_total += sum(1 for n in due if n in v.accepted)
        missing = sorted(set(due) - set(v.accepted))
        if missing:
            problems.append(f"{v.name}: {len(missing)} signed readings never accepted: {missing}")
        if not due:
            problems.append(f"{v.name}: signed no reading")
        latencies += [v.accepted[n] - t for n, t in due.items() if n in v.accepted]
        problems += [f"{v.name}: {e}" for e in v.errors]
    p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
    totals = {
        "devices": len(views),
        "signed": signed_total,
        "accepted": accepted_total,  # of the readings signed before the stop
        "relayed": relay_stats["accepted"],
        "rejected": sum(relay_stats["rejections"].values()),
        "duplicates_suppressed": relay_stats["ingest"].get("duplicate", 0),
        "latency_p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "latency_p99_ms": None if p99 is None else round(p99 * 1000, 1),
    }
    return DemoResult(ok=not problems, devices=views, totals=totals, problems=problems)
