"""The ``ioconnect`` command: a thin shell over the host library.

Commands parse their arguments, call one library function and print its result,
as text or, with ``--json``, as one JSON object. Faults of the device or the
input (:class:`~ioconnect_host.errors.IoconnectError`) become one stderr line
``ioconnect: error: …`` and a non-zero exit; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .cli_attest import add_attest_command
from .cli_board import add_board_commands
from .cli_demo import add_demo_command
from .cli_deploy import add_deploy_command
from .cli_doctor import add_doctor_command
from .cli_flash import add_flash_command
from .cli_image import add_image_commands
from .cli_monitor import add_console_commands
from .cli_parser import OneLineParser, run_command
from .cli_relay import add_relay_commands
from .cli_sim import add_sim_commands
from .cli_verify import add_verify_command
from .errors import UsageError
from .identity import CURVES, DEFAULT_DIR, Identity, new_identity, show_identity

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


def _print_identity(ident: Identity, *, as_json: bool, note: str | None = None) -> None:
    if as_json:
        print(json.dumps(ident.to_json(), indent=None, sort_keys=False))
        return
    if note:
        print(note)
    rows = [
        ("Curve", ident.curve),
        ("DID", ident.did),
        ("did:key", ident.did_key),
        ("Address", ident.address),
        ("IoTeX address", ident.io_address),
        ("Public key", ident.public_key),
        ("Key file", f"{ident.key_file} (private key stays there)"),
    ]
    for name, value in rows:
        if value is not None:
            print(f"{name + ':':<15}{value}")
    print("DID document:")
    print(json.dumps(ident.document, indent=2))


def _identity_new(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    ident = new_identity(directory, args.curve)
    if ident.created:
        note = f"Created a new {ident.curve} identity in {directory}."
    else:
        note = f"An identity already exists in {directory}: showing it, not overwriting."
        if ident.curve != args.curve:
            note += f" (It is {ident.curve}; --curve {args.curve} was not used.)"
    _print_identity(ident, as_json=args.json, note=note)
    return 0


def _identity_show(args: argparse.Namespace) -> int:
    _print_identity(show_identity(args.dir), as_json=args.json)
    return 0


def _add_identity(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ident = sub.add_parser(
        "identity", help="make or show the device identity (key, DIDs, addresses)"
    )
    ident.set_defaults(handler=_help_of(ident))
    cmds = ident.add_subparsers(title="identity commands", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dir",
            type=Path,
            default=DEFAULT_DIR,
            help="the (virtual) device filesystem holding the key (default: ./identity)",
        )
        p.add_argument("--json", action="store_true", help="print one JSON object")

    new = cmds.add_parser(
        "new",
        help="create the device key unless one exists, and show the identity",
        description="Create the device key on the device (MicroPython VM) unless one exists "
        "in DIR, then print its DIDs, addresses and DID document. Never overwrites a key; "
        "the private key is never printed.",
    )
    new.add_argument(
        "--curve", choices=CURVES, default=CURVES[0], help="key type (default: secp256k1)"
    )
    common(new)
    new.set_defaults(handler=_identity_new)

    show = cmds.add_parser("show", help="show the existing identity")
    common(show)
    show.set_defaults(handler=_identity_show)


def _help_of(parser: argparse.ArgumentParser) -> Handler:
    """The handler of a command given without its subcommand: a usage error naming them."""

    def missing_command(args: argparse.Namespace) -> int:
        names = [
            name
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        ]
        command = parser.prog.removeprefix("ioconnect").strip()
        raise UsageError(
            f"{command + ': ' if command else ''}give a command: {', '.join(names)}",
            hint=f"see `{parser.prog} --help`",
        )

    return missing_command


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ioconnect`` command."""
    parser: argparse.ArgumentParser = OneLineParser(
        prog="ioconnect",
        description="Put devices on IoTeX: device identity, provisioning and signed data.",
    )
    parser.add_argument("--version", action="version", version=f"ioconnect {__version__}")
    parser.set_defaults(handler=_help_of(parser))
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="top_command")
    _add_identity(sub)
    add_sim_commands(sub)
    add_demo_command(sub)
    add_relay_commands(sub)
    add_board_commands(sub)
    add_deploy_command(sub)
    add_attest_command(sub)
    add_verify_command(sub)
    add_console_commands(sub)
    add_doctor_command(sub)
    add_image_commands(sub)
    add_flash_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ioconnect`` command; returns the exit status.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success; 2 for usage errors; the error's ``exit_code`` for faults.

    Example:
        >>> main(["--version"])
        ioconnect 0.1.0
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 2
    except UsageError as err:
        print(f"ioconnect: error: {err}", file=sys.stderr)
        return err.exit_code
    return run_command(args.handler, args, args.top_command)


if __name__ == "__main__":
    sys.exit(main())
