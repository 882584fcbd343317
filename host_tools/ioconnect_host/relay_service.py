"""The relay as a running service: store, ingest, forwarder, MQTT front, metrics.

Used by ``ioconnect relay`` and by the demo. ``stop()`` is graceful: the MQTT
side stops taking messages first (what it had not acknowledged is redelivered
to the next relay), then the forwarder finishes the requests in flight;
everything queued stays in the store for the next start.

Example:
    >>> svc = RelayService(RelayOptions(broker="mqtt://127.0.0.1:1883",
    ...                                 w3bstream="http://127.0.0.1:8888",
    ...                                 store=Path("relay.db")), approved=inv.is_approved)
    >>> svc.start()
    >>> svc.stats()["accepted"]
    0
    >>> svc.stop()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from .node import Approver
from .relay import DEFAULT_WORKERS, Forwarder, Relay
from .relay_mqtt import MqttFront
from .relay_serial import SerialFront
from .relay_store import open_store

__all__ = ["RelayOptions", "RelayService", "prometheus_text"]


@dataclass(frozen=True)
class RelayOptions:
    """What ``ioconnect relay`` takes on its command line."""

    broker: str | None  # None: serial ports only
    w3bstream: str
    store: Path | str  # a SQLite file, or a postgresql:// URL
    projects: frozenset[str] | None = None
    signed_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    workers: int = DEFAULT_WORKERS
    client_id: str = "ioconnect-relay"
    ca_file: str | None = None
    metrics_port: int | None = None  # None: no /metrics endpoint; 0: any free port
    max_queue: int = 100_000
    mqtt_version: Literal["5", "3.1.1"] = "5"
    serial: tuple[str, ...] = ()  # boards' consoles read for readings (no network)
    sprout: str | None = None  # sprout endpoint for devices' sprout messages


class RelayService:
    """One relay process's worth of parts, started and stopped together."""

    def __init__(
        self, options: RelayOptions, *, approved: Approver, log: Callable[[str], None] = print
    ) -> None:
        self.options = options
        self.store = open_store(options.store, max_queue=options.max_queue)
        self.relay = Relay(
            self.store,
            approved=approved,
            projects=options.projects,
            signed_keys=options.signed_keys,
            sprout=options.sprout is not None,
        )
        self.front = None if options.broker is None else MqttFront(
            self.relay, options.broker, client_id=options.client_id, ca_file=options.ca_file,
            log=log, mqtt_version=options.mqtt_version, sprout=options.sprout is not None,
        )  # fmt: skip
        self.serial = SerialFront(self.relay, options.serial, approved=approved, log=log)
        self.forwarder = Forwarder(
            self.store, options.w3bstream, workers=options.workers, log=log,
            sprout_url=options.sprout,
        )  # fmt: skip
        self._metrics: ThreadingHTTPServer | None = None

    @property
    def metrics_port(self) -> int | None:
        return int(self._metrics.server_address[1]) if self._metrics else None

    def start(self, *, connect_timeout_s: float = 10.0) -> None:
        """Start every part; fails (RelayError) if the broker cannot be reached."""
        if self.front is not None:
            self.front.start()
            try:
                self.front.wait_connected(connect_timeout_s)
            except BaseException:
                self.front.stop()
                raise
        self.serial.start()
        self.forwarder.start()
        if self.options.metrics_port is not None:
            self._metrics = _serve_metrics(self, self.options.metrics_port)

    def stop(self) -> None:
        """Graceful: stop taking messages, finish requests in flight, close the store."""
        if self.front is not None:
            self.front.stop()
        self.serial.stop()
        self.forwarder.stop()
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        self.store.close()

    def stats(self) -> dict[str, Any]:
        """Store counts, ingest outcomes and forwarder counters, JSON-able."""
        s = self.store.stats()
        s["ingest"] = dict(self.relay.counts)
        s["forwarder"] = {
            "posted": self.forwarder.posted,
            "retries": self.forwarder.retries,
            "errors": self.forwarder.errors,
        }
        s["mqtt_connected"] = self.front is not None and self.front.connected.is_set()
        s["serial"] = self.serial.stats()
        return s


def prometheus_text(stats: dict[str, Any]) -> str:
    """The stats in Prometheus' text exposition format."""
    lines = [
        "# HELP ioconnect_relay_messages Readings in the relay store by status.",
        "# TYPE ioconnect_relay_messages gauge",
    ]
    for status in ("queued", "accepted", "dead_letters"):
        lines.append(f'ioconnect_relay_messages{{status="{status}"}} {stats[status]}')
    lines += [
        "# HELP ioconnect_relay_rejections_total Messages refused, by reason.",
        "# TYPE ioconnect_relay_rejections_total counter",
    ]
    for reason, n in sorted(stats["rejections"].items()):
        lines.append(f'ioconnect_relay_rejections_total{{reason="{_label(reason)}"}} {n}')
    lines += [
        "# HELP ioconnect_relay_ingested_total Messages taken from MQTT, by outcome.",
        "# TYPE ioconnect_relay_ingested_total counter",
    ]
    for kind, n in sorted(stats["ingest"].items()):
        lines.append(f'ioconnect_relay_ingested_total{{outcome="{kind}"}} {n}')
    fwd = stats["forwarder"]
    lines += [
        "# TYPE ioconnect_relay_w3bstream_posts_total counter",
        f"ioconnect_relay_w3bstream_posts_total {fwd['posted']}",
        "# TYPE ioconnect_relay_w3bstream_retries_total counter",
        f"ioconnect_relay_w3bstream_retries_total {fwd['retries']}",
        "# TYPE ioconnect_relay_mqtt_connected gauge",
        f"ioconnect_relay_mqtt_connected {int(stats['mqtt_connected'])}",
    ]
    serial_ports = stats.get("serial") or {}
    if serial_ports:
        lines += [
            "# HELP ioconnect_relay_serial_acks_total Acks a board confirmed, by port.",
            "# TYPE ioconnect_relay_serial_acks_total counter",
        ]
        for port, st in sorted(serial_ports.items()):
            label = _label(port)
            lines.append(f'ioconnect_relay_serial_acks_total{{port="{label}"}} {st["acked"]}')
        lines.append("# TYPE ioconnect_relay_serial_open gauge")
        for port, st in sorted(serial_ports.items()):
            label = _label(port)
            lines.append(f'ioconnect_relay_serial_open{{port="{label}"}} {int(st["open"])}')
    return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _serve_metrics(service: RelayService, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            data = prometheus_text(service.stats()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="relay-metrics", daemon=True).start()
    return server
