"""``ioconnect sim …``: start, list, stop virtual boards and inject faults."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from .boards import list_boards


def _start(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import run_foreground, start_board, start_detached

    name = args.name or f"{args.board}-1"
    if args.detach:
        rec = start_detached(
            args.board, name=name, state_dir=args.state, seed=args.seed, heap=args.heap
        )
        port, state = rec.port, rec.state_dir
    else:
        vb = start_board(
            args.board, name=name, state_dir=args.state, seed=args.seed, heap=args.heap
        )
        port, state = vb.port, str(vb.config.state_dir)
    if args.json:
        print(
            json.dumps({"name": name, "board": args.board, "port": port, "state_dir": state}),
            flush=True,
        )
    else:
        print(f"{name} ({args.board}) serial port: {port}", flush=True)
        if not args.detach:
            print("Running; Ctrl-C stops it.", file=sys.stderr, flush=True)
    if not args.detach:
        run_foreground(vb, args.board)
    return 0


def _list(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import list_running

    boards = list_running()
    if args.json:
        print(json.dumps([asdict(b) for b in boards]))
        return 0
    if not boards:
        print("no virtual boards running")
    for b in boards:
        print(f"{b.name:<16} {b.board:<12} {b.port:<14} pid {b.pid}  {b.state_dir}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import stop_running

    rec = stop_running(args.name)
    print(f"stopped {rec.name}")
    return 0


def _fault(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import find_running, power_cut_running
    from ioconnect_sim.supervisor import write_faults

    rec = find_running(args.name)
    changes: dict[str, object] = {}
    if args.wifi:
        changes["wifi"] = args.wifi
    if args.flash:
        changes["flash"] = None if args.flash == "ok" else args.flash
    if args.sensor:
        sensors = {}
        for item in args.sensor:
            sensor, _, state = item.partition("=")
            sensors[sensor] = state or "fail"
        changes["sensors"] = sensors
    if changes:
        write_faults(Path(rec.state_dir), changes)
    if args.power_cut:
        power_cut_running(args.name)  # through the board's state folder, not a signal
    done = [f"{k}={v}" for k, v in changes.items()] + (["power cut"] if args.power_cut else [])
    print(f"{rec.name}: " + (", ".join(done) or "no change"))
    return 0


def add_sim_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sim start|list|stop|fault`` on the top-level parser."""
    sim = sub.add_parser(
        "sim", help="virtual boards: the firmware on MicroPython behind a serial port"
    )

    def usage(args: argparse.Namespace) -> int:
        sim.print_help(sys.stderr)
        return 2

    sim.set_defaults(handler=usage)
    cmds = sim.add_subparsers(title="sim commands", metavar="COMMAND")

    start = cmds.add_parser(
        "start",
        help="start a virtual board and print its serial port",
        description="Start a virtual board: the board's firmware on the MicroPython VM with the "
        "board's heap, behind a pseudo-terminal that mpremote, pyserial and ioconnect use like "
        "the board's USB serial port. Runs until Ctrl-C, or in the background with --detach.",
    )
    start.add_argument("--board", required=True, choices=list_boards(), help="board definition")
    start.add_argument(
        "--name", help="device name (default: <board>-1); one running board per name"
    )
    start.add_argument(
        "--state", type=Path, help="flash/state folder (default: ~/.ioconnect/sims/NAME)"
    )
    start.add_argument("--seed", type=int, default=0, help="seed of sensor signals and unique id")
    start.add_argument("--heap", help="heap override, e.g. 200K (default: the board's budget)")
    start.add_argument("--detach", action="store_true", help="run in the background")
    start.add_argument("--json", action="store_true", help="print one JSON object")
    start.set_defaults(handler=_start)

    lst = cmds.add_parser("list", help="running virtual boards")
    lst.add_argument("--json", action="store_true", help="print a JSON list")
    lst.set_defaults(handler=_list)

    stop = cmds.add_parser("stop", help="stop a detached virtual board")
    stop.add_argument("name")
    stop.set_defaults(handler=_stop)

    fault = cmds.add_parser("fault", help="inject a fault into a running virtual board")
    fault.add_argument("name")
    fault.add_argument("--power-cut", action="store_true", help="kill the VM now, boot again")
    fault.add_argument("--wifi", choices=["up", "down"], help="Wi-Fi loss or return")
    fault.add_argument("--sensor", action="append", metavar="NAME[=fail|ok]", help="fail a sensor")
    fault.add_argument("--flash", choices=["eio", "enospc", "ok"], help="make flash writes fail")
    fault.set_defaults(handler=_fault)
