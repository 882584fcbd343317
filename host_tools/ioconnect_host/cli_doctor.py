"""``ioconnect doctor``: what stands between this machine and a board.

Exit status 1 when something blocks (a port held open, no permission, a
read-only UF2 drive), else 0; warnings do not fail it.
"""

from __future__ import annotations

import argparse
import json
from typing import TypeAlias

from .doctor import diagnose

__all__ = ["add_doctor_command"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _doctor(args: argparse.Namespace) -> int:
    findings = diagnose()
    blocked = any(f.level == "block" for f in findings)
    if args.json:
        print(json.dumps({"blocked": blocked, "findings": [f.to_json() for f in findings]}))
    else:
        for f in findings:
            print(f.line())
        if blocked:
            print("doctor: something above stands between this machine and a board")
    return 1 if blocked else 0


def add_doctor_command(sub: Sub) -> None:
    """Register ``doctor``."""
    p = sub.add_parser(
        "doctor",
        help="what stands between this machine and a board, each with its fix",
        description="Serial ports and their permissions, ports held by other programs, "
        "programs that grab serial ports, a read-only RPI-RP2 drive, esptool/mpremote "
        "versions, virtual boards. Exit 1 when something blocks.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_doctor)
