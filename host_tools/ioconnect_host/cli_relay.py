"""``ioconnect node`` and ``ioconnect relay``: long-running services in the foreground.

Both run until Ctrl-C or SIGTERM and then stop gracefully. Logs go to stderr,
one line each (``--json``: one JSON object each, for log collectors).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from .cli_args import number_in
from .errors import IoconnectError
from .inventory import Inventory, default_inventory_path
from .node import Approver, Node, serve
from .paths import home
from .relay import DEFAULT_WORKERS, RelayError
from .relay_serial import check_serial_spec
from .relay_service import RelayOptions, RelayService
from .relay_store import describe_store, is_postgres_url

__all__ = ["add_relay_commands"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_ADDRESS = re.compile(r"0x[0-9a-f]{40}")


def _logger(as_json: bool, component: str) -> Callable[[str], None]:
    def log(message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if as_json:
            line = json.dumps({"time": stamp, "component": component, "message": message})
        else:
            line = f"{stamp} {component}: {message}"
        print(line, file=sys.stderr, flush=True)

    return log


def _approver(args: argparse.Namespace) -> Approver:
    if getattr(args, "approve_all", False):
        return lambda project, address: True
    listed = frozenset(a.lower() for a in getattr(args, "approve", []))
    for address in listed:
        if not _ADDRESS.fullmatch(address):
            raise IoconnectError(f"--approve {address!r} is not a 0x address (40 hex digits)")
    inv = Inventory(args.inventory)
    if not inv.path.exists():
        if listed:
            return lambda project, address: address in listed
        raise IoconnectError(
            f"no inventory at {inv.path}",
            hint="provision a device first, or pass --inventory or --approve ADDRESS",
        )
    return lambda project, address: address in listed or inv.is_approved(project, address)


def _db_path(path: Path, what: str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"cannot create the {what} folder {path.parent}: {err.strerror}"
        raise IoconnectError(msg) from None
    if path.is_dir():
        raise IoconnectError(f"the {what} {path} is a folder, not a file")
    return path


def _until_stopped() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


def _signed_keys(items: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        project, sep, keys = item.partition("=")
        if not sep or not project.isdigit() or not keys:
            raise IoconnectError(
                f"--signed-keys {item!r} is not PROJECT=key[,key...]", hint="e.g. 42=timestamp"
            )
        out[project] = tuple(k for k in keys.split(",") if k)
    return out


def _node(args: argparse.Namespace) -> int:
    log = _logger(args.json, "node")
    approved, keys = _approver(args), _signed_keys(args.signed_keys)
    node = Node(_db_path(args.db, "node database"), approved=approved, signed_keys=keys)
    try:
        server = serve(node, host=args.host, port=args.port, log=log)
    except OSError as err:
        node.close()
        raise IoconnectError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from None
    log(f"W3bstream node on http://{args.host}:{server.port} (tasks in {args.db})")
    try:
        _until_stopped()
    finally:
        server.stop()
        node.close()
        log("stopped")
    return 0


def _relay(args: argparse.Namespace) -> int:
    log = _logger(args.json, "relay")
    if args.broker is None and not args.serial:
        raise RelayError("nothing to relay from: give --broker URL and/or --serial PORT")
    for spec in args.serial:
        check_serial_spec(spec)
    store = args.store if is_postgres_url(args.store) else _db_path(Path(args.store), "relay store")
    options = RelayOptions(
        broker=args.broker,
        w3bstream=args.w3bstream,
        store=store,
        projects=frozenset(args.project) if args.project else None,
        signed_keys=_signed_keys(args.signed_keys),
        workers=args.workers,
        client_id=args.client_id,
        ca_file=args.ca,
        metrics_port=args.metrics_port,
        mqtt_version=args.mqtt_version,
        serial=tuple(args.serial),
        sprout=args.sprout,
    )
    approved = _approver(args)
    service = RelayService(options, approved=approved, log=log)
    service.start()
    sources = ([args.broker] if args.broker else []) + [f"serial {p}" for p in args.serial]
    log(
        f"relaying {', '.join(sources)} -> {args.w3bstream} (store {describe_store(store)}"
        + (f", metrics on :{service.metrics_port}/metrics" if service.metrics_port else "")
        + ")"
    )
    try:
        _until_stopped()
    finally:
        service.stop()
        log(f"stopped: {json.dumps(_summary(service))}")
    return 0


def _summary(service: RelayService) -> dict[str, object]:
    # stats() after stop() would read a closed store: take the counters only.
    return {"ingest": dict(service.relay.counts), "posted": service.forwarder.posted}


_positive = number_in(1, 1024, what="whole number")
_port = number_in(0, 65535, what="port number")


def add_relay_commands(sub: Sub) -> None:
    """Register ``node`` and ``relay``."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--inventory",
            type=Path,
            default=None,
            help="approved devices: the provisioning inventory "
            f"(default {default_inventory_path()})",
        )
        p.add_argument(
            "--approve",
            action="append",
            default=[],
            metavar="ADDRESS",
            help="approve this device address for every project too (repeatable)",
        )
        p.add_argument(
            "--signed-keys",
            action="append",
            default=[],
            metavar="PROJECT=KEY[,KEY]",
            help="payload keys hashed into the digest for a project (Pebble-style)",
        )
        p.add_argument("--json", action="store_true", help="log one JSON object per line")

    node = sub.add_parser(
        "node",
        help="run a local W3bstream-compatible API node (POST /v1/task)",
        description="A W3bstream API node for development and tests: upstream's /v1/task "
        "rules, plus a nonce replay check; GET /v1/devices lists what arrived.",
    )
    node.add_argument("--host", default="127.0.0.1", help="address to listen on")
    node.add_argument("--port", type=_port, default=8888, help="TCP port (default 8888)")
    node.add_argument(
        "--db", type=Path, default=home() / "node.sqlite3", help="where tasks are kept"
    )
    common(node)
    node.set_defaults(handler=_node)

    relay = sub.add_parser(
        "relay",
        help="carry signed readings from MQTT to W3bstream, each exactly once",
        description="Subscribe to devices' signed readings, verify and store each, post it "
        "to W3bstream /v1/task, and acknowledge to the device.",
    )
    relay.add_argument(
        "--broker", default=None, help="mqtt://host[:port] or mqtts://... (or only --serial)"
    )
    relay.add_argument("--w3bstream", required=True, help="API node URL, http(s)://host[:port]")
    relay.add_argument(
        "--store",
        default=str(home() / "relay.sqlite3"),
        metavar="PATH|postgresql://…",
        help="the durable queue: a SQLite file (one relay), or a PostgreSQL URL that "
        "relays on several machines share",
    )
    relay.add_argument(
        "--project", action="append", default=[], help="relay only this project id (repeatable)"
    )
    relay.add_argument(
        "--serial",
        action="extend",
        nargs="+",
        default=[],
        metavar="PORT",
        help="also read signed readings from these boards' consoles (boards without a "
        "network): a path, socket://, rfc2217://, sim:NAME or id:SERIAL",
    )
    relay.add_argument(
        "--sprout",
        default=None,
        metavar="URL",
        help="also relay devices' sprout messages (topic ioconnect/<project>/<address>/messages, "
        'data a JSON object with "nonce") to this sprout endpoint (POST <URL>/message)',
    )
    relay.add_argument(
        "--workers",
        type=_positive,
        default=DEFAULT_WORKERS,
        help=f"concurrent HTTP requests (default {DEFAULT_WORKERS})",
    )
    relay.add_argument("--client-id", default="ioconnect-relay", help="MQTT client id")
    relay.add_argument("--ca", default=None, help="CA file for mqtts://")
    relay.add_argument(
        "--mqtt-version",
        choices=("5", "3.1.1"),
        default="5",
        help="5: shared subscription, relays split the load (default); "
        "3.1.1: for brokers without MQTT 5, one relay per broker",
    )
    relay.add_argument(
        "--metrics-port", type=_port, default=None, help="serve Prometheus /metrics here"
    )
    # Only the relay can approve all: it knows each device's address from its topic
    # and checks the signature against it. A W3bstream signature has no recovery id,
    # so a node approving all could not tell which of two addresses signed.
    relay.add_argument(
        "--approve-all", action="store_true", help="relay every device (development only)"
    )
    common(relay)
    relay.set_defaults(handler=_relay)
