"""``ioconnect image build``: one flashable file per board (see :mod:`.image`)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TypeAlias

from .deploy import MPY_ARCHES

__all__ = ["add_image_commands"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _write(out: Path, data: bytes) -> None:
    # Temp file + rename: a half-written image is never left under the name a
    # production line would flash.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build(args: argparse.Namespace) -> int:
    from .boards import load_board
    from .firmware import host_mpy_arch
    from .image import build_image

    board = load_board(args.board)
    arch = host_mpy_arch() if args.mpy_arch == "host" else args.mpy_arch
    built = build_image(board, args.firmware, config=args.config, mpy_arch=arch)
    _write(args.output, built.data)
    if args.json:
        print(json.dumps(built.to_json(args.output)))
    else:
        fs = built.to_json(args.output)["filesystem"]
        assert isinstance(fs, dict)
        print(
            f"{args.output}: {built.format} image for {board.name}, {len(built.data)} bytes; "
            f"filesystem at 0x{built.fs_offset:x}: {len(built.files)} files, "
            f"{built.fs_used_bytes} of {built.fs_size} bytes used"
        )
    return 0


def add_image_commands(sub: Sub) -> None:
    """Register ``image build`` on the top-level parser's subcommands."""
    image = sub.add_parser("image", help="build flashable images (firmware + filesystem)")
    cmds = image.add_subparsers(title="image commands", metavar="COMMAND")
    image.set_defaults(handler=lambda a: image.error("give a command: build"))
    text = (
        "one image holding MicroPython, the ioconnect firmware (.mpy for the board) and an "
        "optional config.json in the board's filesystem partition: a merged .bin for the "
        "ESP32 family (esptool write_flash 0x0 OUT), a UF2 for the Pico family"
    )
    p = cmds.add_parser("build", help="build one flashable image", description=text)
    p.add_argument("--board", required=True, help="board name (boards/*.toml), e.g. rpi-pico")
    p.add_argument(
        "--firmware", required=True, type=Path, help="MicroPython for the board (.bin or .uf2)"
    )
    p.add_argument("--config", type=Path, help="device config (JSON object) to put on the board")
    p.add_argument(
        "--mpy-arch",
        choices=[a for a in MPY_ARCHES if a] + ["host"],
        help="native code for another architecture than the board's; 'host': this machine's, "
        "which a virtual board's MicroPython VM runs",
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="image file to write")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_build)
