"""``ioconnect demo``: the whole product on this machine, with a live view.

Exit status 0 only if every reading signed during the run was accepted by the
node exactly once.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TypeAlias

from .cli_args import number_in
from .demo import DemoInterrupted, DemoOptions, DemoResult, DeviceView, run_demo
from .errors import report_interrupt

__all__ = ["add_demo_command"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class _LiveView:
    """A table redrawn in place on a terminal; nothing when output is not a tty."""

    def __init__(self) -> None:
        self._lines = 0
        self._tty = sys.stdout.isatty()

    def __call__(self, views: list[DeviceView], stats: dict[str, Any]) -> None:
        if not self._tty:
            return
        rows = [f"{'device':<10} {'address':<44} {'signed':>7} {'accepted':>9} {'errors':>7}"]
        for v in views:
            r = v.row()
            rows.append(
                f"{r['device']:<10} {r['address']:<44} {r['signed']:>7} {r['accepted']:>9} "
                f"{r['errors']:>7}"
            )
        rows.append(
            f"relay: {stats['accepted']} accepted, {stats['queued']} queued, "
            f"{sum(stats['rejections'].values())} rejected, "
            f"{stats['ingest'].get('duplicate', 0)} duplicates suppressed"
        )
        out = "".join("\x1b[1A\x1b[2K" for _ in range(self._lines)) + "\n".join(rows) + "\n"
        sys.stdout.write(out)
        sys.stdout.flush()
        self._lines = len(rows)


def _print_summary(result: DemoResult, *, interrupted: bool = False) -> None:
    t = result.totals
    print(
        f"{t['devices']} devices: {t['signed']} readings signed before the stop, "
        f"{t['relayed']} relayed (in all), "
        f"{t['accepted']} accepted by the node, {t['rejected']} rejected, "
        f"{t['duplicates_suppressed']} duplicates suppressed"
    )
    if result.faults:
        print(
            f"{t['faults']} faults injected; the relay restarted {t['relay_restarts']} times, "
            f"the forwarder retried {t['forwarder_retries']} requests"
        )
    if t["latency_p50_ms"] is not None:
        print(
            f"latency signed -> accepted: p50 {t['latency_p50_ms']} ms, "
            f"p99 {t['latency_p99_ms']} ms"
        )
    for f in result.faults:
        facts = ", ".join(f"{k} {v}" for k, v in f.to_json().items() if k not in ("fault", "at_s"))
        print(f"fault at {f.at_s:5.1f} s: {f.fault}: {facts}")
    if interrupted:
        print("interrupted: the counts so far (readings on their way were not waited for)")
    else:
        print("every reading accepted exactly once" if result.ok else "NOT every reading arrived:")


def _demo(args: argparse.Namespace) -> int:
    opts = DemoOptions(
        devices=args.devices,
        board=args.board,
        duration_s=args.duration,
        messages=args.messages,
        interval_s=args.interval,
        broker=args.broker,
        project_id=args.project_id,
        workdir=args.workdir,
        faults=args.faults,
    )

    def progress(text: str) -> None:
        if not args.json:
            print(f"demo: {text}", file=sys.stderr, flush=True)

    try:
        result = run_demo(opts, on_update=None if args.json else _LiveView(), progress=progress)
    except DemoInterrupted as stop:
        # What was counted is still worth seeing; exit as Ctrl-C does (130).
        if args.json:
            print(json.dumps({**stop.partial.to_json(), "interrupted": True}))
        else:
            _print_summary(stop.partial, interrupted=True)
        return report_interrupt("demo")
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        _print_summary(result)
    for problem in result.problems:
        print(f"ioconnect: demo: {problem}", file=sys.stderr)
    return 0 if result.ok else 1


_count = number_in(1, 1000, what="whole number")
_seconds = number_in(1, 86400, what="number of seconds", kind=float)


def add_demo_command(sub: Sub) -> None:
    """Register ``demo``."""
    from pathlib import Path

    p = sub.add_parser(
        "demo",
        help="virtual boards attest, the relay carries, a local W3bstream node accepts",
        description="Start a broker (mosquitto if installed, else embedded), a local "
        "W3bstream node, the relay and N virtual boards running the real firmware; "
        "provision the boards and let them attest. Exit 0 only if every reading signed "
        "was accepted exactly once.",
    )
    p.add_argument("--devices", type=_count, default=3, help="virtual boards (default 3)")
    p.add_argument(
        "--board", default="esp32-s3", help="board type, one with Wi-Fi (default esp32-s3)"
    )
    end = p.add_mutually_exclusive_group()
    end.add_argument("--duration", type=_seconds, default=20.0, help="seconds to run (default 20)")
    end.add_argument("--messages", type=_count, default=None, help="readings per device, then stop")
    p.add_argument(
        "--interval", type=_count, default=1, help="seconds between readings (default 1)"
    )
    p.add_argument(
        "--broker",
        default="auto",
        help="mqtt://host:port of a running broker, or start one: auto (mosquitto if "
        "installed, else embedded), mosquitto, embedded (default auto)",
    )
    p.add_argument("--project-id", default="42", help="W3bstream project id (default 42)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the demo's files here")
    p.add_argument(
        "--faults",
        action="store_true",
        help="during the run restart the broker, stop the node for a while, SIGKILL and "
        "restart the relay, cut a board's power and drop a board's Wi-Fi; still exit 0 "
        "only if every reading was accepted exactly once",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(handler=_demo)
