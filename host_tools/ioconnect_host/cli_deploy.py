"""The ``deploy`` command: sync the firmware onto a board (see :mod:`.deploy`).

Kept apart from the other board commands so that it imports only what a deploy
needs: the library is loaded when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from .deploy import DeployResult

__all__ = ["add_deploy_command"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _bar(done: int, total: int) -> None:
    width = 30
    filled = width * done // total if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} bytes")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy
    from .ports import select_port
    from .session import open_session

    draw = sys.stderr.isatty() and not args.json
    with open_session(select_port(args.port)) as board:
        result = deploy(
            board,
            mpy=args.mpy,
            delete=args.delete,
            dry_run=args.dry_run,
            reset=args.reset,
            progress=_bar if draw else None,
        )
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        _summary(result)
    return 0


def _summary(r: DeployResult) -> None:
    verb = "would send" if r.dry_run else "sent"
    print(
        f"{verb} {len(r.files_sent)} files ({r.bytes_sent} bytes), skipped "
        f"{len(r.files_skipped)}, {'would delete' if r.dry_run else 'deleted'} "
        f"{len(r.files_deleted)}, in {r.seconds:.2f} s"
    )
    for path in r.files_sent:
        print(f"  + {path}")
    for path in r.files_deleted:
        print(f"  - {path}")
    if r.pending:
        print(f"(an interrupted deploy was {r.pending} first)")


def add_deploy_command(sub: Sub) -> None:
    """Register ``deploy`` on the top-level parser's subcommands."""
    text = "put the firmware on a board: send only changed files, switch atomically"
    p = sub.add_parser("deploy", help=text, description=text)
    p.add_argument(
        "-p",
        "--port",
        help="serial path, socket://, rfc2217://, sim:NAME, id:USB-SERIAL, a DID, or auto "
        "(default: $IOCONNECT_PORT, else auto)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--mpy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile modules to .mpy for the board (default) or send sources",
    )
    p.add_argument("--dry-run", action="store_true", help="only say what would change")
    p.add_argument(
        "--delete", action="store_true", help="remove files an earlier deploy put there and we "
        "no longer ship (never files it did not put there)",
    )  # fmt: skip
    p.add_argument(
        "--no-reset",
        dest="reset",
        action="store_false",
        help="do not soft-reset the board after a change",
    )
    p.set_defaults(handler=_deploy)
