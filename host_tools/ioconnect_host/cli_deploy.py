"""The ``deploy`` command: sync the firmware onto a board (see :mod:`.deploy`).

Kept apart from the other commands so that it imports only what a deploy needs,
and also runnable without the full CLI (:func:`run_deploy`, used by
:mod:`.launcher`): a no-change deploy takes about 30 ms, importing every command
group about 200 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

from .cli_parser import OneLineParser, run_command
from .cli_progress import draw_bar
from .errors import UsageError

if TYPE_CHECKING:
    from .deploy import DeployResult

__all__ = ["add_deploy_command", "run_deploy"]

_HELP = "put the firmware on a board: send only changed files, switch atomically"

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy
    from .ports import select_port
    from .session import open_session

    draw = sys.stderr.isatty() and not args.json
    ref = select_port(args.port)
    with open_session(ref) as board:
        result = deploy(
            board,
            mpy=args.mpy,
            delete=args.delete,
            dry_run=args.dry_run,
            # The library's reset stays in the raw REPL, where MicroPython skips
            # main.py: the board would wait at its prompt. Reset it below instead.
            reset=False,
            progress=partial(draw_bar, unit=" bytes") if draw else None,
        )
    said = None
    if args.reset and not args.dry_run and (result.files_sent or result.files_deleted):
        from .console import reset_board

        # Ctrl-D in the friendly REPL: boot.py and main.py run the new firmware.
        said = reset_board(ref, timeout_s=20.0 * ref.slowness)["said"]
    if args.json:
        print(json.dumps({**result.to_json(), "reset_said": said}))
    else:
        _summary(result)
        if said is not None:
            print(f"soft reset, the board says: {said}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _summary(r: DeployResult) -> None:
    verb = "would send" if r.dry_run else "sent"
    print(
        f"{verb} {_count(len(r.files_sent), 'file')} ({_count(r.bytes_sent, 'byte')}), skipped "
        f"{len(r.files_skipped)}, {'would delete' if r.dry_run else 'deleted'} "
        f"{len(r.files_deleted)}, in {r.seconds:.2f} s"
    )
    for path in r.files_sent:
        print(f"  + {path}")
    for path in r.files_deleted:
        print(f"  - {path}")
    if r.pending:
        print(f"(an interrupted deploy was {r.pending} first)")


def _arguments(p: argparse.ArgumentParser) -> None:
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
        "--delete",
        action="store_true",
        help="remove files an earlier deploy put there and we no longer ship "
        "(never files it did not put there)",
    )
    p.add_argument(
        "--no-reset",
        dest="reset",
        action="store_false",
        help="leave the board at its REPL after a change (default: soft-reset it, "
        "so main.py runs the new firmware)",
    )
    p.set_defaults(handler=_deploy)


def add_deploy_command(sub: Sub) -> None:
    """Register ``deploy`` on the top-level parser's subcommands."""
    _arguments(sub.add_parser("deploy", help=_HELP, description=_HELP))


def run_deploy(argv: Sequence[str]) -> int:
    """``ioconnect deploy ARGV`` without loading the other commands; the exit status.

    Faults become one stderr line and exit status, as :func:`ioconnect_host.cli.main`
    makes them.
    """
    parser = OneLineParser(prog="ioconnect deploy", description=_HELP)
    _arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 2
    except UsageError as err:
        print(f"ioconnect: error: {err}", file=sys.stderr)
        return err.exit_code
    return run_command(_deploy, args, "deploy")
