"""``ioconnect sim …``: start, list, stop virtual boards and inject faults."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .boards import Board, list_boards, load_board
from .errors import IoconnectError, UsageError

if TYPE_CHECKING:
    from ioconnect_sim.launch import RunningBoard

# Names become file names (registry record, default state folder) and the
# device's name: one path component of plain characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SEED_MAX = 2**32 - 1
# Permission checks as the kernel will make them (a setuid or seteuid process).
_EFFECTIVE = os.access in os.supports_effective_ids


def _device_name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device name: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return text


def _seed(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= _SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a seed: give a whole number from 0 to {_SEED_MAX}"
        )
    return value


def _heap(text: str) -> str:
    from ioconnect_sim.supervisor import parse_heap

    try:
        parse_heap(text)
    except IoconnectError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.strip().upper()


def _state_folder(state: Path, name: str, running: list[RunningBoard]) -> None:
    """Refuse a --state folder that cannot hold a board's flash, or that a board uses."""
    fix = "give --state a folder you can write, or leave it out"
    try:
        if state.exists() and not state.is_dir():
            raise UsageError(f"--state {state} is not a directory", hint=fix)
        state.mkdir(mode=0o700, parents=True, exist_ok=True)  # flash holds the key
    except OSError as exc:
        raise UsageError(f"cannot create --state {state}: {exc.strerror}", hint=fix) from exc
    if not os.access(state, os.R_OK | os.W_OK | os.X_OK, effective_ids=_EFFECTIVE):
        raise UsageError(f"cannot write in --state {state}: permission denied", hint=fix)
    for rec in running:
        # A board of the same name: the library's "already running" says more.
        if rec.name != name and Path(rec.state_dir).resolve() == state.resolve():
            raise UsageError(
                f"--state {state} is in use by virtual board {rec.name!r}",
                hint=f"stop it first (`ioconnect sim stop {rec.name}`) or use another folder",
            )


def _start(args: argparse.Namespace) -> int:
    from ioconnect_sim.bootsel import drive_path
    from ioconnect_sim.launch import (
        default_state_dir,
        list_running,
        run_foreground,
        start_board,
        start_detached,
    )

    name = args.name or f"{args.board}-1"
    if args.bootsel and load_board(args.board).flash.firmware_format != "uf2":
        raise UsageError(f"--bootsel is for boards flashed with UF2 files; {args.board} is not")
    _state_folder(args.state or default_state_dir(name), name, list_running())
    # The same board either way; only the process that keeps it running differs.
    options: dict[str, Any] = {
        "name": name,
        "state_dir": args.state,
        "seed": args.seed,
        "heap": args.heap,
        "fast": args.fast or None,
        "bootsel": args.bootsel,
        "download": args.download,
        "engine": args.engine,
        "firmware": args.firmware,
    }
    if args.detach:
        rec = start_detached(args.board, **options)
        port, state, uart = rec.port, rec.state_dir, rec.uart_port
    else:
        vb = start_board(args.board, **options)
        port, state, uart = vb.port, str(vb.config.state_dir), vb.uart_port
    # Held in BOOTSEL, the board's USB side is its RPI-RP2 drive: say where it is.
    drive = str(drive_path(Path(state))) if args.bootsel else None
    if args.json:
        print(
            json.dumps(
                {
                    "name": name,
                    "board": args.board,
                    "port": port,
                    "state_dir": state,
                    "uart_port": uart,
                    "engine": args.engine,
                    "bootsel_drive": drive,
                }
            ),
            flush=True,
        )
    else:
        print(f"{name} ({args.board}) serial port: {port}", flush=True)
        if uart:
            print(f"{name} UART(1): {uart}", flush=True)
        if drive:
            print(f"{name} BOOTSEL drive (copy a UF2 there): {drive}", flush=True)
        if not args.detach:
            print("Running; Ctrl-C stops it.", file=sys.stderr, flush=True)
    if not args.detach:
        run_foreground(vb, args.board)
    return 0


def _list(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import bootsel_drive, list_running

    boards = list_running()
    if args.json:
        print(json.dumps([{**asdict(b), "bootsel_drive": bootsel_drive(b)} for b in boards]))
        return 0
    if not boards:
        print("no virtual boards running")
    for b in boards:
        engine = "" if b.engine == "unix" else f"  ({b.engine} engine)"
        print(f"{b.name:<16} {b.board:<12} {b.port:<14} pid {b.pid}  {b.state_dir}{engine}")
        if b.uart_port:
            print(f"{'':<16} UART(1) {b.uart_port}")
        drive = bootsel_drive(b)
        if drive:
            print(f"{'':<16} BOOTSEL drive {drive}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import list_running, stop_running
    from ioconnect_sim.registry import SimError

    if args.all == (args.name is not None):
        raise UsageError("sim stop: give a board's name or --all", hint="see `ioconnect sim list`")
    if not args.all:
        rec = stop_running(args.name)
        print(json.dumps({"stopped": asdict(rec)}) if args.json else f"stopped {rec.name}")
        return 0
    stopped = []
    for running in list_running():
        try:
            stopped.append(stop_running(running.name))
        except SimError:  # it stopped by itself meanwhile
            continue
    if args.json:
        print(json.dumps({"stopped": [asdict(r) for r in stopped]}))
    else:
        print("\n".join(f"stopped {r.name}" for r in stopped) or "no virtual boards running")
    return 0


def _reset(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import reset_running

    rec = reset_running(args.name, download=args.download)
    mode = "download mode" if args.download else "its firmware"
    if args.json:
        print(json.dumps({"name": rec.name, "port": rec.port, "download": args.download}))
    else:
        print(f"{rec.name}: reset into {mode} on {rec.port}")
    return 0


def _fault(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import find_running, power_cut_running
    from ioconnect_sim.supervisor import write_faults

    if not (args.power_cut or args.wifi or args.flash or args.sensor):
        raise UsageError(
            "sim fault: give a fault: --power-cut, --wifi, --sensor or --flash",
            hint="see `ioconnect sim fault --help`",
        )
    rec = find_running(args.name)
    spec = load_board(rec.board)
    if rec.engine == "rp2040":
        _chip_can(args, spec, f"{rec.name} ({rec.board})")
    changes: dict[str, object] = {}
    if args.wifi:
        if spec.network != "wifi":
            raise UsageError(f"--wifi: {rec.name} ({rec.board}) has no Wi-Fi")
        changes["wifi"] = args.wifi
    if args.flash:
        changes["flash"] = None if args.flash == "ok" else args.flash
    if args.sensor:
        # write_faults replaces the sensors table: keep the faults set before.
        earlier = write_faults(Path(rec.state_dir), {}).get("sensors")
        sensors = _sensor_faults(args.sensor, spec, f"{rec.name} ({rec.board})")
        changes["sensors"] = {**earlier, **sensors} if isinstance(earlier, dict) else sensors
    if changes:
        new_state = write_faults(Path(rec.state_dir), changes)
    if args.power_cut:
        power_cut_running(args.name)  # through the board's state folder, not a signal
    if args.json:
        faults = new_state if changes else None
        print(json.dumps({"name": rec.name, "faults": faults, "power_cut": args.power_cut}))
        return 0
    done = [f"{k}={v}" for k, v in changes.items()] + (["power cut"] if args.power_cut else [])
    print(f"{rec.name}: " + ", ".join(done))
    return 0


def _chip_can(args: argparse.Namespace, spec: Board, board: str) -> None:
    """Refuse the faults the emulated RP2040 does not model, each with its reason."""
    if args.wifi:
        raise UsageError(f"--wifi: {board} has no Wi-Fi: a Pico (not W) has no radio")
    if args.flash == "eio":
        raise UsageError(
            f"--flash eio: {board} runs on the rp2040 engine, whose flash cannot report EIO "
            "(the rp2 port's flash driver has no error path)",
            hint="--flash enospc wears the flash out: littlefs then answers ENOSPC",
        )
    for item in args.sensor or ():
        name = item.partition("=")[0]
        if name in {d.name for d in spec.i2c}:
            raise UsageError(
                f"--sensor {item}: {board} runs on the rp2040 engine, where only the on-chip "
                "temperature sensor (ADC 4) is modelled; no I2C device is wired to the chip",
                hint="give --sensor temperature=fail or temperature=ok",
            )


def _sensor_faults(items: list[str], spec: Board, board: str) -> dict[str, str]:
    """``NAME``, ``NAME=fail`` or ``NAME=ok`` for sensors the board has.

    ``board`` is how errors name the running board, e.g. ``"dev1 (esp32)"``.
    """
    names = [s.name for s in spec.sensors] + [d.name for d in spec.i2c]
    sensors = {}
    for item in items:
        sensor, eq, state = item.partition("=")
        if sensor not in names:
            raise UsageError(
                f"--sensor {item}: {board} has no sensor {sensor!r}",
                hint="its sensors: " + ", ".join(names),
            )
        if eq and state not in ("fail", "ok"):
            raise UsageError(
                f"--sensor {item}: {state!r} is not a sensor state",
                hint=f"give {sensor}=fail or {sensor}=ok",
            )
        sensors[sensor] = state if eq else "fail"
    return sensors


def _pin(args: argparse.Namespace) -> int:
    from ioconnect_sim.launch import find_running
    from ioconnect_sim.supervisor import drive_pin

    from .boards import load_board

    rec = find_running(args.name)
    if rec.engine != "unix":
        raise UsageError(f"{rec.name} runs on the {rec.engine} engine: `sim pin` is not modelled")
    pins = load_board(rec.board).pins
    if args.pin in pins.named:
        number = pins.named[args.pin]
    elif args.pin.isdigit() and int(args.pin) < pins.gpio_count:
        number = int(args.pin)
    else:
        raise UsageError(
            f"{rec.board} has no pin {args.pin!r}",
            hint=f"a GPIO number 0..{pins.gpio_count - 1}"
            + (f" or one of {', '.join(sorted(pins.named))}" if pins.named else ""),
        )
    levels = drive_pin(Path(rec.state_dir), number, int(args.level))
    if args.json:
        out = {"name": rec.name, "pin": number, "level": int(args.level), "pins": levels}
        print(json.dumps(out))
    else:
        print(f"{rec.name}: pin {number} = {args.level}")
    return 0


def add_sim_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sim start|list|stop|fault`` on the top-level parser."""
    sim = sub.add_parser(
        "sim", help="virtual boards: the firmware on MicroPython behind a serial port"
    )

    def usage(args: argparse.Namespace) -> int:
        raise UsageError(
            "sim: give a command: start, list, stop, reset, fault",
            hint="see `ioconnect sim --help`",
        )

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
        "--name",
        type=_device_name,
        help="device name (default: <board>-1); one running board per name",
    )
    start.add_argument(
        "--state", type=Path, help="flash/state folder (default: ~/.ioconnect/sims/NAME)"
    )
    start.add_argument(
        "--seed", type=_seed, default=0, help="seed of sensor signals and unique id (0-2**32-1)"
    )
    start.add_argument(
        "--heap", type=_heap, help="heap override, e.g. 200K (default: the board's budget)"
    )
    start.add_argument(
        "--fast",
        action="store_true",
        help="lift the serial line's speed limit (default: the board's wire, e.g. 115200 "
        "baud on an ESP32 DevKit, USB full speed on S3/C3/Pico)",
    )
    start.add_argument(
        "--engine",
        choices=["unix", "rp2040"],
        default="unix",
        help="unix: the firmware on the MicroPython unix port (default); rp2040: the stock "
        "MicroPython Pico firmware on an emulated RP2040 (--board rpi-pico; deploy to it)",
    )
    start.add_argument(
        "--firmware",
        type=Path,
        metavar="UF2",
        help="rp2040 engine: MicroPython UF2 to run (checked: RP2040 family, size, boots to a "
        "REPL; kept in the state folder). Default: the board's own, else the project's",
    )
    start.add_argument("--detach", action="store_true", help="run in the background")
    start.add_argument(
        "--bootsel",
        action="store_true",
        help="power on held in BOOTSEL (Pico boards): an RPI-RP2 drive folder in the state "
        "folder takes a UF2, which becomes the board's flash (see `sim list`)",
    )
    start.add_argument(
        "--download",
        action="store_true",
        help="power on in the ROM's download mode (ESP32 family; BOOT held): esptool "
        "--before no-reset flashes it",
    )
    start.add_argument("--json", action="store_true", help="print one JSON object")
    start.set_defaults(handler=_start)

    lst = cmds.add_parser("list", help="running virtual boards")
    lst.add_argument("--json", action="store_true", help="print a JSON list")
    lst.set_defaults(handler=_list)

    stop = cmds.add_parser("stop", help="stop a running virtual board (--all: every one)")
    stop.add_argument("name", nargs="?")
    stop.add_argument("--all", action="store_true", help="stop every running virtual board")
    stop.add_argument("--json", action="store_true", help="print one JSON object")
    stop.set_defaults(handler=_stop)

    reset = cmds.add_parser(
        "reset",
        help="press the reset (EN) button of a running virtual board",
        description="Reset a running virtual board: it boots its firmware, leaving download "
        "mode. With --download the BOOT button is held: it enters the ROM's download mode.",
    )
    reset.add_argument("name")
    reset.add_argument("--download", action="store_true", help="hold BOOT: download mode")
    reset.add_argument("--json", action="store_true", help="print one JSON object")
    reset.set_defaults(handler=_reset)

    fault = cmds.add_parser("fault", help="inject a fault into a running virtual board")
    fault.add_argument("name")
    fault.add_argument("--power-cut", action="store_true", help="kill the VM now, boot again")
    fault.add_argument("--wifi", choices=["up", "down"], help="Wi-Fi loss or return")
    fault.add_argument("--sensor", action="append", metavar="NAME[=fail|ok]", help="fail a sensor")
    fault.add_argument(
        "--flash",
        choices=["eio", "enospc", "ok"],
        help="make flash writes fail (rp2040 engine: enospc, worn flash)",
    )
    fault.add_argument("--json", action="store_true", help="print one JSON object")
    fault.set_defaults(handler=_fault)

    pin = cmds.add_parser(
        "pin",
        help="drive an input pin of a running virtual board",
        description="Set the level the host drives on a board's input pin: Pin.value() reads "
        "it, and a Pin.irq handler on that pin runs on the edge (IRQ_RISING for 0 -> 1, "
        "IRQ_FALLING for 1 -> 0).",
    )
    pin.add_argument("name")
    pin.add_argument("pin", help="GPIO number, or a named pin of the board (e.g. LED)")
    pin.add_argument("level", choices=["0", "1"])
    pin.add_argument("--json", action="store_true", help="print one JSON object")
    pin.set_defaults(handler=_pin)
