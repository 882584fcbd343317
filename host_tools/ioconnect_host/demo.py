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
from .demo_faults import FaultRecord, RelayProcess, watch_for
from .errors import IoconnectError
from .frames import FrameReader
from .inventory import Inventory
from .node import Node, NodeServer, serve
from .ports import BoardRef
from .provision import ProvisionOptions, provision
from .relay_service import RelayOptions, RelayService
from .session import open_session

__all__ = ["DemoError", "DemoInterrupted", "DemoOptions", "DemoResult", "DeviceView", "run_demo"]


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
    faults: bool = False  # break every part once during the run (see demo_faults)
    resend_s: int = 5  # the boards' mqtt.resend_s: publish again when no relay ack came


@dataclass
class DeviceView:
    """One board as the demo sees it."""

    name: str
    address: str = ""
    signed: dict[int, float] = field(default_factory=dict)  # nonce -> time seen signed
    accepted: dict[int, float] = field(default_factory=dict)  # nonce -> time accepted
    errors: list[str] = field(default_factory=list)
    boots: int = 0  # attestation loops started (power cuts show here)

    def row(self) -> dict[str, Any]:
        return {
            "device": self.name,
            "address": self.address,
            "signed": len(self.signed),
            "accepted": len(self.accepted),
            "errors": len(self.errors),
            "boots": self.boots,
        }


@dataclass
class DemoResult:
    """The summary: ``ok`` only if every reading signed before the stop was accepted once."""

    ok: bool
    devices: list[DeviceView]
    totals: dict[str, Any]
    problems: list[str]
    faults: list[FaultRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "totals": self.totals,
            "devices": [d.row() for d in self.devices],
            "faults": [f.to_json() for f in self.faults],
            "problems": self.problems,
        }


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C once the boards attest: ``partial`` holds the counts so far."""

    def __init__(self, partial: DemoResult) -> None:
        super().__init__()
        self.partial = partial


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
            elif kind == "started":
                self._view.boots += 1
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
        running: RunningBroker | None = None
        if opts.broker in ("auto", "mosquitto", "embedded"):
            running = start_broker(opts.broker)  # type: ignore[arg-type]
            stack.append(running.stop)
            broker_url, mqtt_version = running.url, running.mqtt_version
            say(f"MQTT broker ({running.kind}, MQTT {mqtt_version}) on {broker_url}")
        inventory = Inventory(work / "inventory.sqlite3")
        node = Node(work / "node.sqlite3", approved=inventory.is_approved)
        stack.append(node.close)
        servers = [serve(node)]  # the node, restarted on its port after an outage
        node_port = servers[0].port
        stack.append(lambda: servers[-1].stop())
        say(f"W3bstream node on http://127.0.0.1:{node_port}")
        relay_opts = RelayOptions(
            broker=broker_url,
            w3bstream=f"http://127.0.0.1:{node_port}",
            store=work / "relay.sqlite3",
            mqtt_version="5" if mqtt_version == "5" else "3.1.1",
            client_id=f"ioconnect-demo-relay-{int(time.time())}",
        )
        relay: RelayService | RelayProcess
        if opts.faults:
            # Its own process, so that a fault can SIGKILL it; started once the
            # inventory it reads exists (readings sent before are sent again).
            relay = RelayProcess(_relay_args(relay_opts, work / "inventory.sqlite3"),
                                 work / "relay.log")  # fmt: skip
        else:
            relay = RelayService(relay_opts, approved=inventory.is_approved, log=lambda m: None)
            relay.start()
            stack.append(relay.stop)
            say(f"relay on {broker_url}")

        views: list[DeviceView] = []
        boards: list[Any] = []
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
                session.call("config.set", key="mqtt.resend_s", value=opts.resend_s)
            # Into the attestation loop, as after a power cycle in the field.
            board.power_cut()
            boards.append(board)
            view = DeviceView(name=name, address=str(res.identity["address"]).lower())
            views.append(view)
            watches.append(_ConsoleWatch(board.port, view))
        stack.extend(w.close for w in watches)
        if isinstance(relay, RelayProcess):
            relay.start()
            stack.append(relay.stop)
            say(f"relay on {broker_url} (a child process)")
        say("attesting")
        start = time.monotonic()
        faults: list[FaultRecord] = []
        breaker = None
        if opts.faults:
            if running is None:
                say("--faults with --broker URL: the broker is not ours to restart")
            assert isinstance(relay, RelayProcess)
            plan = _FaultPlan(running, servers, node, relay, boards, views, faults, start, say)
            breaker = threading.Thread(target=plan.run, args=(_run_length(opts),),
                                       name="demo-faults", daemon=True)  # fmt: skip
            breaker.start()

        def collect() -> None:
            for view in views:
                for task in node.tasks_of(view.address):
                    view.accepted.setdefault(task["nonce"], time.time())

        def refresh() -> None:
            collect()
            if on_update:
                on_update(views, relay.stats())

        def done() -> bool:
            if opts.messages is not None:
                return all(len(v.accepted) >= opts.messages for v in views)
            return time.monotonic() - start >= opts.duration_s

        try:
            while not done() or (breaker is not None and breaker.is_alive()):
                time.sleep(0.5)
                refresh()
        except KeyboardInterrupt:
            # Counted as of now (nothing waited for); the parts are stopped below.
            collect()
            raise DemoInterrupted(_result(views, relay.stats(), time.time(), faults)) from None
        stop_at = time.time()
        say("time is up: readings signed from now on are not counted; waiting for the last ones")
        deadline = time.monotonic() + opts.settle_s
        while time.monotonic() < deadline:
            refresh()
            if all(
                all(n in v.accepted for n, t in v.signed.items() if t <= stop_at) for v in views
            ):
                break
            time.sleep(0.5)
        # The relay stops (draining what it has in flight) before the last look at
        # the node: the summary then matches the node's store exactly.
        stats = relay.stats()
        stack.remove(relay.stop)
        relay.stop()
        collect()
        return _result(views, stats, stop_at, faults)
    finally:
        for undo in reversed(stack):
            try:
                undo()
            except Exception as exc:  # tear down the rest whatever one part does
                say(f"while stopping: {exc!r}")
        if tmp is not None:
            tmp.cleanup()


def _result(
    views: list[DeviceView],
    relay_stats: dict[str, Any],
    stop_at: float,
    faults: list[FaultRecord] | None = None,
) -> DemoResult:
    problems: list[str] = []
    faults = faults or []
    for f in faults:
        if f.took_effect is None:
            _judge_wifi(f, views)
        if not f.took_effect:
            problems.append(f"fault {f.fault} at {f.at_s:.1f} s did not take effect: {f.evidence}")
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
        "forwarder_retries": relay_stats.get("forwarder", {}).get("retries", 0),
        "relay_restarts": sum(1 for f in faults if f.fault == "relay SIGKILL" and f.took_effect),
        "faults": len(faults),
    }
    return DemoResult(
        ok=not problems, devices=views, totals=totals, problems=problems, faults=faults
    )


def _relay_args(o: RelayOptions, inventory: Path) -> list[str]:
    """``ioconnect relay`` arguments for the options the demo's relay runs with."""
    assert o.broker is not None  # the demo's relay always reads a broker
    return [
        "--broker", o.broker, "--w3bstream", o.w3bstream, "--store", str(o.store),
        "--inventory", str(inventory), "--client-id", o.client_id,
        "--mqtt-version", o.mqtt_version,
    ]  # fmt: skip


def _run_length(opts: DemoOptions) -> float:
    if opts.messages is not None:
        return float(opts.messages * opts.interval_s)
    return opts.duration_s


class _FaultPlan:
    """Breaks each part once, spread over the run; records what it did and saw."""

    def __init__(
        self,
        broker: RunningBroker | None,
        servers: list[NodeServer],
        node: Node,
        relay: RelayProcess,
        boards: list[Any],
        views: list[DeviceView],
        out: list[FaultRecord],
        start: float,
        say: Callable[[str], None],
    ) -> None:
        self.broker, self.servers, self.node, self.relay = broker, servers, node, relay
        self.boards, self.views, self.out, self.start, self.say = boards, views, out, start, say

    def _at(self, t: float) -> None:
        time.sleep(max(0.0, self.start + t - time.monotonic()))

    def _record(self, fault: str, target: str = "") -> FaultRecord:
        rec = FaultRecord(fault, time.monotonic() - self.start, target)
        self.out.append(rec)
        self.say(f"fault: {fault}" + (f" ({target})" if target else ""))
        return rec

    def run(self, length_s: float) -> None:
        try:
            self._run(length_s)
        except Exception as exc:  # reported in the result, never a hung demo
            failed = FaultRecord("fault plan failed", time.monotonic() - self.start)
            failed.evidence["error"] = repr(exc)
            failed.took_effect = False
            self.out.append(failed)

    def _run(self, length_s: float) -> None:
        relay, broker = self.relay, self.broker
        if broker is not None:
            self._at(0.10 * length_s)
            rec = self._record("broker restart", broker.kind)
            rec.took_effect = watch_for(
                lambda: not relay.stats()["mqtt_connected"], lambda: broker.restart(2.0)
            )
            rec.evidence["relay_saw_broker_go"] = rec.took_effect

        self._at(0.25 * length_s)
        rec = self._record("node outage", "local W3bstream node")
        retries = relay.stats()["forwarder"]["retries"]
        port = self.servers[-1].port
        self.servers[-1].stop()
        time.sleep(5.0)
        self.servers.append(serve(self.node, port=port))
        more = relay.stats()["forwarder"]["retries"] - retries
        rec.evidence.update(down_s=5.0, forwarder_retries=more)
        rec.took_effect = more > 0

        self._at(0.45 * length_s)
        rec = self._record("relay SIGKILL", "relay process")
        code = relay.kill()
        time.sleep(3.0)
        relay.restart()
        rec.evidence.update(exit_status=code, down_s=3.0, restarts=relay.restarts)
        rec.took_effect = code == -9 and relay.stats()["mqtt_connected"]

        self._at(0.60 * length_s)
        view = self.views[0]
        rec = self._record("power cut", view.name)
        boots = view.boots
        self.boards[0].power_cut()
        deadline = time.monotonic() + 30
        while view.boots == boots and time.monotonic() < deadline:
            time.sleep(0.1)
        rec.evidence["booted_again"] = view.boots > boots
        rec.took_effect = view.boots > boots

        self._at(0.70 * length_s)
        i = 1 if len(self.boards) > 1 else 0
        rec = self._record("wifi drop", self.views[i].name)
        self.boards[i].set_fault(wifi="down")
        rec.evidence["down_at"] = time.time()
        time.sleep(6.0)
        self.boards[i].set_fault(wifi="up")
        rec.evidence["up_at"] = time.time()


def _judge_wifi(f: FaultRecord, views: list[DeviceView]) -> None:
    # Readings signed while the board's Wi-Fi was down could only be accepted after
    # it came back: their count says the drop was felt.
    view = next(v for v in views if v.name == f.target)
    down, up = f.evidence.pop("down_at", 0.0), f.evidence.pop("up_at", 0.0)
    held = [n for n, t in view.signed.items() if down <= t <= up and view.accepted.get(n, 0) > up]
    f.evidence.update(down_s=round(up - down, 1), readings_held=len(held))
    f.took_effect = bool(held)
