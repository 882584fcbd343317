"""``ioconnect flash``: put MicroPython (or an ``image build`` image) on a board.

Dispatches on the board file's ``[flash].firmware_format``: ``uf2`` boards
(the Pico family) go through the BOOTSEL drive (:mod:`.flash_uf2`); ``bin``
boards (the ESP32 family) through esptool's Python API (:mod:`.flash_esp`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from .boards import Board
from .cli_progress import draw_bar
from .errors import UsageError
from .ports import BoardRef

__all__ = ["FLASHERS", "add_flash_command"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: firmware_format -> flasher(board, args, ref) returning the JSON report.
Flasher: TypeAlias = Callable[[Board, argparse.Namespace, "BoardRef | None"], dict[str, object]]


def _flash_uf2(board: Board, args: argparse.Namespace, ref: BoardRef | None) -> dict[str, object]:
    from .flash_arch import check_image_arch
    from .flash_uf2 import check_uf2_for, flash_uf2

    data = args.firmware.read_bytes()
    check_uf2_for(board, data, args.firmware.name)  # its own words for a malformed file first
    check_image_arch(board, ref, data, args.firmware.name)

    result = flash_uf2(
        board,
        args.firmware,
        ref=ref,
        drive=args.drive,
        timeout_s=args.timeout,
        erase_identity=args.erase_identity,
        say=lambda text: (
            print(text, file=sys.stderr, flush=True) if "WARNING" in text or not args.json else None
        ),
    )
    return result.to_json()


def _press_enter(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.stdin.readline()


def _flash_bin(board: Board, args: argparse.Namespace, ref: BoardRef | None) -> dict[str, object]:
    from .flash_arch import check_image_arch
    from .flash_esp import check_image, flash_esp

    try:
        image = args.firmware.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --firmware {args.firmware}: {exc.strerror}") from None
    check_image(board, image)  # a wrong image is refused before the board is touched
    check_image_arch(board, ref, image, args.firmware.name)
    if ref is None:
        raise UsageError(f"give -p/--port: {board.name} is flashed over its serial port")
    if args.erase and args.erase_identity:
        print(
            "WARNING: --erase --erase-identity DESTROYS the device's identity key: "
            "its DID and every registration made with it are lost for good",
            file=sys.stderr,
            flush=True,
        )
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    result = flash_esp(
        board,
        image,
        ref,
        erase=args.erase,
        erase_identity=args.erase_identity,
        baud=args.baud,
        progress=draw_bar if interactive and not args.json else None,
        ask=_press_enter if interactive else None,
    )
    return result.to_json()


FLASHERS: dict[str, Flasher] = {"uf2": _flash_uf2, "bin": _flash_bin}


def _flash(args: argparse.Namespace) -> int:
    from .boards import load_board
    from .ports import select_port

    # What the command line says is checked before any port is touched.
    if not args.firmware.is_file():
        raise UsageError(f"--firmware {args.firmware}: no such file")
    named = load_board(args.board) if args.board else None
    # In BOOTSEL a real board has no serial port: only a given one is looked up.
    ref = None if args.bootsel_only and not args.port else select_port(args.port)
    name = named.name if named else (ref.board if ref else None)
    if name is None:
        raise UsageError("give --board: the port does not say which board it is")
    board = named or load_board(name)
    flasher = FLASHERS.get(board.flash.firmware_format)
    if flasher is None:
        raise UsageError(
            f"flashing {board.flash.firmware_format} images ({board.name}) is not available here"
        )
    report = flasher(board, args, ref)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"flashed {args.firmware} to {board.name} in {float(str(report['seconds'])):.1f} s")
    return 0


def add_flash_command(sub: Sub) -> None:
    """Register ``flash`` on the top-level parser's subcommands."""
    text = (
        "put a firmware on a board: Pico boards through the RPI-RP2 (BOOTSEL) drive, "
        "asking the running MicroPython for its bootloader first; ESP32 boards through "
        "esptool (chip and image checked, written at the board's offset, verified, reset)"
    )
    p = sub.add_parser("flash", help="flash MicroPython or an image onto a board", description=text)
    p.add_argument("--board", help="board name (default: what the port is known as)")
    p.add_argument("--firmware", required=True, type=Path, help="the image (.uf2 for Pico boards)")
    p.add_argument(
        "-p", "--port", help="serial path, sim:NAME, id:SERIAL, a DID, or auto (default)"
    )
    p.add_argument("--drive", type=Path, help="the RPI-RP2 drive's mount point (default: found)")
    p.add_argument(
        "--bootsel-only",
        action="store_true",
        help="the board is in BOOTSEL already (no serial port to ask or wait for)",
    )
    p.add_argument(
        "--erase",
        action="store_true",
        help="ESP32: erase the whole flash first (refused while the board holds an identity)",
    )
    p.add_argument(
        "--erase-identity",
        action="store_true",
        help="allow an image with its own filesystem, or --erase, to replace a board's "
        "identity (key lost)",
    )
    p.add_argument(
        "--baud",
        type=int,
        default=460800,
        choices=[115200, 230400, 460800, 921600],
        help="ESP32: fastest baud rate to try; slower ones follow on failure (default 460800)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for each wait")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_flash)
