"""Board commands: ``ports``, ``info``, ``identity create|show|rotate|diddoc``, ``sign``,
``config get|set``, ``provision`` and ``inventory list|show|export``.

Each device command takes ``-p/--port`` (default ``$IOCONNECT_PORT``, else
``auto``), opens one session and calls the library; the commands only parse and
print (``--json``: one JSON value on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeAlias

from . import verify
from .agent import AgentError
from .deploy import install_firmware
from .errors import IoconnectError
from .inventory import Inventory, InventoryError
from .ports import PORT_ENV, list_ports, probe, select_port
from .provision import (
    ProvisionOptions,
    check_options,
    default_bundle_path,
    provision,
    write_bundle,
)
from .session import Session, open_session

__all__ = ["add_board_commands"]

_CURVES = ("secp256k1", "p256", "ed25519")
_PROFILES = ("w3bstream", "sprout", "ioid", "eip191", "cose")
Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@contextmanager
def _board(args: argparse.Namespace) -> Iterator[Session]:
    with open_session(select_port(args.port)) as session:
        yield session


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], None]) -> int:
    if args.json:
        print(json.dumps(data))
    else:
        text()
    return 0


def _rows(rows: list[tuple[str, Any]]) -> None:
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        if value is not None:
            print(f"{name + ':':<{width}}{value}")


# -- ports, info ------------------------------------------------------------


def _ports(args: argparse.Namespace) -> int:
    found = []
    for p in list_ports():
        entry: dict[str, Any] = {
            "port": p.port,
            "kind": p.kind,
            "vid": p.vid,
            "pid": p.pid,
            "serial_number": p.serial_number,
            "description": p.description,
            "likely_boards": list(p.boards),
            "virtual_name": p.sim_name,
            "answer": None,
        }
        if not args.no_probe:
            try:
                entry["answer"] = probe(p.port, timeout_s=args.probe_timeout)
            except IoconnectError:
                entry["answer"] = None  # busy, not MicroPython, or not answering
        found.append(entry)

    def text() -> None:
        if not found:
            print("no serial ports with a board found")
        for e in found:
            ids = f"{e['vid']:04x}:{e['pid']:04x}" if e["vid"] is not None else "virtual"
            board = "/".join(e["likely_boards"]) or "-"
            ans = e["answer"]
            said = "(not asked: --no-probe)" if args.no_probe else "no answer"
            if ans:
                said = f"MicroPython {ans['micropython']} {ans['board']}"
                said += f", ioconnect {ans['firmware']}" if ans["firmware"] else ", no firmware"
                said += f", {ans['did']}" if ans.get("did") else ""
            # What --port takes for a virtual board: its name.
            sn = e["serial_number"] or (f"sim:{e['virtual_name']}" if e["virtual_name"] else "-")
            print(f"{e['port']:<16} {ids:<10} {sn:<18} {board:<20} {said}")

    return _emit(args, found, text)


def _info(args: argparse.Namespace) -> int:
    from .provision import board_from_facts

    with _board(args) as board:
        info = board.info()
        info["port"] = board.port
        # The board says what it is ("<board_name> with <mcu_name>"); our name for it
        # (the board file, what --board takes) is found from that.
        info["board_file"] = board_from_facts(str(info.get("board") or ""), "", board.ref.board)
    ident = info.get("identity") or {}
    named = f"{info['board_file']} ({info.get('board')})" if info["board_file"] else info["board"]

    def text() -> None:
        _rows([
            ("Port", info["port"]),
            ("Board", named),
            ("Firmware", info.get("firmware")),
            ("MicroPython", info.get("micropython")),
            ("Agent API", info.get("api")),
            ("Free heap", f"{info.get('free_heap')} bytes"),
            ("Uptime", f"{info.get('uptime_ms')} ms"),
            ("Identity", ident.get("state")),
            ("Curve", ident.get("curve")),
            ("DID", ident.get("did")),
        ])  # fmt: skip

    return _emit(args, info, text)


# -- identity ----------------------------------------------------------------


def _show_identity(args: argparse.Namespace, ident: dict[str, Any], note: str) -> int:
    def text() -> None:
        if note:
            print(note)
        _rows([
            ("Curve", ident.get("curve")),
            ("DID", ident.get("did")),
            ("did:key", ident.get("did_key")),
            ("Address", ident.get("address")),
            ("IoTeX address", ident.get("io_address")),
            ("Public key", ident.get("public_key")),
        ])  # fmt: skip

    return _emit(args, ident, text)


def _identity_create(args: argparse.Namespace) -> int:
    with _board(args) as board:
        ident = board.call("identity.create", curve=args.curve)
    verify.check_identity(ident)
    return _show_identity(args, ident, f"Created a {ident['curve']} identity on the board.")


def _identity_rotate(args: argparse.Namespace) -> int:
    with _board(args) as board:
        ident = board.call("identity.rotate", curve=args.curve)
    verify.check_identity(ident)
    note = f"New {ident['curve']} identity; the old key is kept on the board as identity.key.bak."
    return _show_identity(args, ident, note)


def _identity_show_board(args: argparse.Namespace) -> int:
    with _board(args) as board:
        ident = board.call("identity.show")
    verify.check_identity(ident)
    return _show_identity(args, ident, "")


def _identity_diddoc(args: argparse.Namespace) -> int:
    with _board(args) as board:
        doc = board.call("diddoc")
    return _emit(args, doc, lambda: print(json.dumps(doc, indent=2)))


# -- sign ----------------------------------------------------------------------


def _sign(args: argparse.Namespace) -> int:
    sign_args: dict[str, Any] = {}
    if args.payload is not None:
        sign_args["payload"] = args.payload
    if args.payload_hex is not None:
        try:
            bytes.fromhex(args.payload_hex)
        except ValueError as exc:
            raise IoconnectError(f"--payload-hex {args.payload_hex!r} is not hex") from exc
        sign_args["payload_hex"] = args.payload_hex
    for name in ("nonce", "project_version", "owner", "chain_id", "registry", "kid"):
        value = getattr(args, name)
        if value is not None:
            sign_args[name] = value
    if args.project_id is not None:
        if not (args.project_id.isdigit() and args.project_id.isascii()):
            raise IoconnectError(f"--project-id {args.project_id!r} must be a decimal number")
        # W3bstream takes the project id as decimal text, sprout as a number.
        pid = args.project_id
        sign_args["project_id"] = pid if args.profile == "w3bstream" else int(pid)
    if args.signed_key:
        sign_args["signed_keys"] = args.signed_key
    with _board(args) as board:
        ident = board.call("identity.show")
        result = board.call("sign", profile=args.profile, args=sign_args)
    verify.check_identity(ident)
    verify.check_signature(ident, args.profile, sign_args, result)  # raises unless it holds
    result["verified_by_host"] = True

    def text() -> None:
        for key, value in result.items():
            print(f"{key}: {value}")

    return _emit(args, result, text)


# -- config ----------------------------------------------------------------


def _config_get(args: argparse.Namespace) -> int:
    with _board(args) as board:
        value = board.call("config.get", key=args.key)

    def text() -> None:
        if args.key is not None:
            print("(not set)" if value is None else value)
            return
        if not value:
            print("(no settings)")
        for key in sorted(value):
            print(f"{key} = {value[key]}")

    return _emit(args, value, text)


def _candidates(text: str) -> list[Any]:
    # The device knows each setting's type; the shell gives text. Try the typed
    # reading first (an integer or a flag), then the text itself.
    out: list[Any] = []
    if text.lstrip("-").isdigit() and text.isascii():
        out.append(int(text))
    if text in ("true", "false"):
        out.append(text == "true")
    out.append(text)
    return out


def _config_set(args: argparse.Namespace) -> int:
    if (args.value is None) == (not args.unset):
        raise IoconnectError("config set takes KEY VALUE, or KEY --unset")
    with _board(args) as board:
        if args.unset:
            stored = board.call("config.set", key=args.key, value=None)
        else:
            err: AgentError | None = None
            for value in _candidates(args.value):
                try:
                    stored = board.call("config.set", key=args.key, value=value)
                    break
                except AgentError as exc:
                    if exc.code != "invalid_config" or "unknown setting" in str(exc):
                        raise
                    err = exc
            else:
                assert err is not None
                raise err
    return _emit(args, {args.key: stored}, lambda: print(f"{args.key} = {stored}"))


# -- provision -----------------------------------------------------------------


def _provision(args: argparse.Namespace) -> int:
    opts = ProvisionOptions(
        project_id=args.project_id,
        project_version=args.project_version,
        curve=args.curve,
        rotate=args.rotate,
        board=args.board,
        wifi_ssid=args.wifi_ssid,
        wifi_password=args.wifi_password,
        broker=args.broker,
        ca=args.ca,
        owner=args.owner,
        chain_id=args.chain_id,
        nonce=args.nonce,
        registry=args.registry,
    )
    check_options(opts)
    if args.out is not None and not args.out.parent.is_dir():
        # Checked before the board is touched: a bundle that cannot be written is lost work.
        raise IoconnectError(f"--out {args.out}: no folder {args.out.parent}")
    show = sys.stderr.isatty() and not args.json

    def progress(step: str) -> None:
        if show:
            print(f"  {step} …", file=sys.stderr, flush=True)

    inventory = Inventory(args.inventory)
    with _board(args) as board:
        result = provision(
            board,
            opts,
            inventory=inventory,
            progress=progress,
            deploy=None if args.no_deploy else install_firmware,
        )
    out = args.out or default_bundle_path(result.bundle)
    write_bundle(result.bundle, out)
    summary = {
        "did": result.identity["did"],
        "address": result.identity.get("address"),
        "curve": result.identity["curve"],
        "created": result.created,
        "rotated": result.rotated,
        "board": result.board,
        "firmware": result.firmware,
        "config": result.config,
        "files": result.files,
        "bundle": str(out),
        "inventory": str(inventory.path),
        "ioid_permit": "ioid_permit" in result.bundle,
    }

    def text() -> None:
        if result.rotated:
            what = "new identity (rotated)"
        elif result.created:
            what = "new identity"
        else:
            what = "existing identity kept"
            if result.identity["curve"] != opts.curve:
                what += f" (it is {result.identity['curve']}; --rotate to make a {opts.curve} one)"
        print(f"Provisioned {result.board} board: {what}")
        _rows([
            ("DID", summary["did"]),
            ("Address", summary["address"]),
            ("Project", f"{opts.project_id} {opts.project_version}".strip()),
            ("Bundle", summary["bundle"]),
            ("Inventory", summary["inventory"]),
        ])  # fmt: skip

    return _emit(args, summary, text)


# -- inventory -----------------------------------------------------------------


def _inventory_list(args: argparse.Namespace) -> int:
    devices = Inventory(args.inventory).devices(args.project_id)

    def text() -> None:
        if not devices:
            print("no devices")
        for d in devices:
            project = d.project_id or "-"
            print(f"{d.did:<52} {d.board or '-':<12} project {project:<8} {d.updated_at}")

    return _emit(args, [asdict(d) for d in devices], text)


def _inventory_show(args: argparse.Namespace) -> int:
    device = Inventory(args.inventory).get(args.device)
    return _emit(args, asdict(device), lambda: _rows(list(asdict(device).items())))


def _inventory_export(args: argparse.Namespace) -> int:
    text = Inventory(args.inventory).export(args.format, args.project_id)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    target: Path = args.output
    try:
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        raise InventoryError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return 0


# -- registration --------------------------------------------------------------


def _port_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-p",
        "--port",
        help=f"serial path, socket://, rfc2217://, sim:NAME, id:USB-SERIAL, a DID, or auto "
        f"(default: ${PORT_ENV}, else auto)",
    )


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _device_parser(cmds: Sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = cmds.add_parser(name, help=help_text, description=help_text)
    _port_arg(p)
    _json_arg(p)
    return p


def _subcommands(parser: argparse.ArgumentParser) -> Sub:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _add_identity(sub: Sub) -> None:
    # `identity new|show --dir` (a board-less identity) lives in cli.py; the board
    # commands join the same group. `identity show` without --dir asks the board.
    ident = sub.choices.get("identity")
    if ident is None:
        ident = sub.add_parser("identity", help="the device identity")
        ident.set_defaults(handler=_usage(ident))
    cmds = _subcommands(ident)
    create = _device_parser(cmds, "create", "create the board's key (refused if it has one)")
    create.add_argument("--curve", choices=_CURVES, default="secp256k1")
    create.set_defaults(handler=_identity_create)
    rotate = _device_parser(cmds, "rotate", "replace the board's key (the old one is kept there)")
    rotate.add_argument("--curve", choices=_CURVES, default="secp256k1")
    rotate.set_defaults(handler=_identity_rotate)
    diddoc = _device_parser(cmds, "diddoc", "the board's DID document")
    diddoc.set_defaults(handler=_identity_diddoc)
    show = cmds.choices.get("show")
    if show is None:
        show = _device_parser(cmds, "show", "the board's identity")
        show.set_defaults(handler=_identity_show_board)
        return
    local_show = show.get_default("handler")
    _port_arg(show)
    show.set_defaults(dir=None)

    def show_either(args: argparse.Namespace) -> int:
        if args.dir is not None:
            if args.port is not None:
                raise IoconnectError("identity show takes --dir or --port, not both")
            result: int = local_show(args)
            return result
        return _identity_show_board(args)

    show.set_defaults(handler=show_either)
    show.description = "Show the identity of the board (--port), or of a board-less --dir."


def _add_provision(sub: Sub) -> None:
    p = _device_parser(
        sub,
        "provision",
        "give a board its identity and settings; write its registration bundle",
    )
    p.add_argument("--project-id", required=True, help="W3bstream project id (decimal)")
    p.add_argument("--project-version", default="", help="W3bstream project version")
    p.add_argument("--curve", choices=_CURVES, default="secp256k1", help="key type of a new key")
    p.add_argument("--rotate", action="store_true", help="replace an existing identity")
    p.add_argument("--board", help="board definition (default: what the board reports)")
    p.add_argument("--wifi-ssid")
    p.add_argument("--wifi-password")
    p.add_argument("--broker", help="mqtt://host[:port] or mqtts://host[:port]")
    p.add_argument("--ca", type=Path, help="CA certificate file to copy to the board")
    p.add_argument("--owner", help="ioID owner address: sign the registry Permit for it")
    p.add_argument("--chain-id", type=int, default=4689, help="4689 mainnet, 4690 testnet")
    p.add_argument("--nonce", type=int, help="the registry's nonce for the device")
    p.add_argument("--registry", help="ioIDRegistry address (default: the chain's)")
    p.add_argument("--out", type=Path, help="bundle file (default: ./<address>.json)")
    p.add_argument("--inventory", type=Path, help="inventory file (default: ~/.ioconnect)")
    p.add_argument(
        "--no-deploy", action="store_true", help="fail on a board without firmware, do not deploy"
    )
    p.set_defaults(handler=_provision)


def _add_inventory(sub: Sub) -> None:
    inv = sub.add_parser("inventory", help="provisioned devices (local SQLite inventory)")
    inv.set_defaults(handler=_usage(inv))
    cmds = inv.add_subparsers(title="inventory commands", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--inventory", type=Path, help="inventory file (default: ~/.ioconnect)")

    lst = cmds.add_parser("list", help="all devices, oldest first")
    common(lst)
    _json_arg(lst)
    lst.add_argument("--project-id", help="only this project's devices")
    lst.set_defaults(handler=_inventory_list)
    show = cmds.add_parser("show", help="one device, by DID or address")
    show.add_argument("device", help="DID or 0x address")
    common(show)
    _json_arg(show)
    show.set_defaults(handler=_inventory_show)
    export = cmds.add_parser("export", help="all devices as CSV or JSON")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("-o", "--output", type=Path, help="file (default: stdout)")
    export.add_argument("--project-id", help="only this project's devices")
    common(export)
    export.set_defaults(handler=_inventory_export)


def add_board_commands(sub: Sub) -> None:
    """Register the board commands on the top-level parser's subcommands."""
    ports = sub.add_parser("ports", help="serial ports, the boards on them and what answers")
    _json_arg(ports)
    ports.add_argument("--no-probe", action="store_true", help="do not open the ports")
    ports.add_argument(
        "--probe-timeout", type=float, default=1.5, help="seconds a port may take to answer"
    )
    ports.set_defaults(handler=_ports)

    _device_parser(sub, "info", "firmware, board, heap and identity of a board").set_defaults(
        handler=_info
    )
    _add_identity(sub)

    sign = _device_parser(sub, "sign", "sign with the board's key; the host checks the signature")
    sign.add_argument("profile", choices=_PROFILES)
    data = sign.add_mutually_exclusive_group()
    data.add_argument("--payload", help="data to sign, as text")
    data.add_argument("--payload-hex", help="data to sign, as hex")
    sign.add_argument("--nonce", type=int)
    sign.add_argument("--project-id")
    sign.add_argument("--project-version")
    sign.add_argument("--signed-key", action="append", help="W3bstream signed key (repeat)")
    sign.add_argument("--owner", help="ioID owner address")
    sign.add_argument("--chain-id", type=int)
    sign.add_argument("--registry")
    sign.add_argument("--kid", help="COSE key id")
    sign.set_defaults(handler=_sign)

    config = sub.add_parser("config", help="the board's settings")
    config.set_defaults(handler=_usage(config))
    cmds = config.add_subparsers(title="config commands", metavar="COMMAND")
    get = _device_parser(cmds, "get", "all settings, or one (secrets show as <set>)")
    get.add_argument("key", nargs="?")
    get.set_defaults(handler=_config_get)
    put = _device_parser(cmds, "set", "set one setting (checked by the board)")
    put.add_argument("key")
    put.add_argument("value", nargs="?")
    put.add_argument("--unset", action="store_true", help="remove the setting")
    put.set_defaults(handler=_config_set)

    _add_provision(sub)
    _add_inventory(sub)
