"""Provision a board: firmware check, identity, settings, board facts, registration bundle.

Each step is idempotent: a second run on the same board keeps its identity
(``rotate=True`` replaces it), rewrites the same settings and reads them back,
and writes the same bundle. Every public key and signature the board returns
is checked on the host with independent libraries (:mod:`ioconnect_host.verify`).

Example:
    >>> with open_session(select_port("auto")) as board:
    ...     result = provision(board, ProvisionOptions(project_id="42"))
    >>> write_bundle(result.bundle, Path(result.bundle["address"] + ".json"))
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import verify
from .agent import AgentError, Curve
from .boards import BoardError, list_boards, load_board
from .errors import IoconnectError
from .inventory import Device, Inventory
from .session import FirmwareMissingError, Session

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "BOARD_JSON",
    "BUNDLE_VERSION",
    "DEVICE_CA",
    "ProvisionError",
    "ProvisionOptions",
    "ProvisionResult",
    "board_from_facts",
    "board_json",
    "check_options",
    "default_bundle_path",
    "parse_broker",
    "provision",
    "write_bundle",
]

#: Where the board facts go on the device (the attestation loop reads its sensors there).
BOARD_JSON = "board.json"
#: Where ``--ca`` puts the broker's CA certificate on the device.
DEVICE_CA = "ca.pem"
#: Version of the registration bundle's layout.
BUNDLE_VERSION = 1

Progress = Callable[[str], None]


class ProvisionError(IoconnectError):
    """Provisioning cannot go on: bad input, or the board refused a step."""


@dataclass(frozen=True)
class ProvisionOptions:
    """What to provision (the ``ioconnect provision`` options).

    Attributes:
        project_id: W3bstream project id (decimal).
        project_version: W3bstream project version ("" leaves it unset).
        curve: key type for a new identity.
        rotate: replace an existing identity with a new key.
        board: board definition; default from the board's ``info`` or its USB ids.
        wifi_ssid, wifi_password: Wi-Fi credentials (both or neither).
        broker: ``mqtt://host[:port]`` or ``mqtts://host[:port]``.
        ca: CA certificate file to copy to the device (``ca.pem``).
        owner, chain_id, nonce, registry: ioID Permit to sign (``owner`` enables it).
    """

    project_id: str
    project_version: str = ""
    curve: Curve = "secp256k1"
    rotate: bool = False
    board: str | None = None
    wifi_ssid: str | None = None
    wifi_password: str | None = None
    broker: str | None = None
    ca: Path | None = None
    owner: str | None = None
    chain_id: int = 4689
    nonce: int | None = None
    registry: str | None = None


@dataclass
class ProvisionResult:
    """What provisioning did and found.

    Attributes:
        identity: the device's identity (checked on the host).
        created: a new identity was made (``rotated``: it replaced one).
        board: board definition name.
        config: the device's settings as read back (secrets shown as ``<set>``).
        files: device path -> SHA-256 of each file written.
        bundle: the registration bundle (see :func:`write_bundle`).
        device: the inventory row.
    """

    identity: dict[str, Any]
    created: bool
    rotated: bool
    board: str
    firmware: str
    config: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    device: Device | None = None


def parse_broker(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` / ``mqtts://host[:port]`` -> (host, port, tls).

    Raises:
        ProvisionError: another scheme, no host, a path, or a bad port.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ProvisionError(f"--broker {url!r}: scheme must be mqtt:// or mqtts://")
    try:
        port = parts.port
    except ValueError as exc:
        raise ProvisionError(f"--broker {url!r}: port must be 1..65535") from exc
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise ProvisionError(f"--broker {url!r}: expected mqtt[s]://host[:port] and nothing else")
    tls = parts.scheme == "mqtts"
    if port == 0:
        raise ProvisionError(f"--broker {url!r}: port must be 1..65535")
    return parts.hostname, port or (8883 if tls else 1883), tls


def board_json(board: str) -> bytes:
    """The board's TOML definition (validated) as compact JSON, for ``board.json``."""
    spec = load_board(board)  # validates: a broken definition never reaches a device
    data = tomllib.loads(spec.source.read_text(encoding="utf-8"))
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def check_options(opts: ProvisionOptions) -> None:
    """Refuse bad options before any board is touched.

    Raises:
        ProvisionError: names the option and what is wrong with it.
    """
    pid = str(opts.project_id)
    if not pid.isdigit() or not pid.isascii() or len(pid) > 20:
        raise ProvisionError(f"--project-id {pid!r} must be a decimal number (up to 20 digits)")
    if (opts.wifi_ssid is None) != (opts.wifi_password is None):
        raise ProvisionError("--wifi-ssid and --wifi-password go together")
    if opts.broker is not None:
        parse_broker(opts.broker)
    if opts.ca is not None and not opts.ca.is_file():
        raise ProvisionError(f"--ca {opts.ca}: no such file")
    if opts.chain_id <= 0:
        raise ProvisionError(f"--chain-id {opts.chain_id} must be a positive chain id")
    if opts.nonce is not None and opts.nonce < 0:
        raise ProvisionError(f"--nonce {opts.nonce} must not be negative")
    if opts.owner is not None:
        if opts.nonce is None:
            raise ProvisionError("--owner needs --nonce (the registry's nonce for the device)")
        verify.ioid_permit_digest(opts.owner, 0, opts.chain_id, opts.registry or _registry(opts))
    elif opts.nonce is not None:
        raise ProvisionError("--nonce and --chain-id only make sense with --owner")


def _registry(opts: ProvisionOptions) -> str:
    if opts.registry:
        return opts.registry
    known = verify.IOID_REGISTRY.get(opts.chain_id)
    if known is None:
        raise ProvisionError(
            f"no ioID registry known for chain {opts.chain_id}",
            hint="IoTeX mainnet 4689 or testnet 4690",
        )
    return known


def board_from_facts(machine: str, reported: str, usb_board: str | None) -> str | None:
    """Which board definition a connected board is, from what it says about itself.

    Args:
        machine: its ``sys.implementation._machine`` ("<board_name> with <mcu_name>"
            on a real board, as the REPL banner shows).
        reported: the agent's ``info`` board: the definition's name on a virtual
            board, ``sys.platform`` (``esp32``, ``rp2``) on a real one.
        usb_board: the one definition its USB ids fit, if exactly one.

    Returns:
        The board name, or None when the facts do not settle it.
    """
    boards = [load_board(name) for name in list_boards()]
    exact = [b.name for b in boards if machine == f"{b.board_name} with {b.mcu_name}"]
    if len(exact) == 1:
        return exact[0]
    same_chip = [b.name for b in boards if machine.endswith(f" with {b.mcu_name}")]
    if same_chip:
        # A real board ("esp32" is also a platform name: the chip decides, not it).
        if len(same_chip) == 1:
            return same_chip[0]
        return usb_board if usb_board in same_chip else None
    if reported in (b.name for b in boards):
        return reported  # a virtual board reports its definition's name
    return usb_board


def _pick_board(session: Session, info: dict[str, Any], opts: ProvisionOptions) -> str:
    if opts.board:
        try:
            load_board(opts.board)
        except BoardError as exc:
            raise ProvisionError(str(exc)) from exc
        return opts.board
    machine = str(session.transport.eval("__import__('sys').implementation._machine"))
    reported = str(info.get("board"))
    found = board_from_facts(machine, reported, session.ref.board)
    if found is None:
        raise ProvisionError(
            f"cannot tell which board this is (it says {machine!r})",
            hint="pass --board, one of " + ", ".join(list_boards()),
        )
    return found


def _accepts(session: Session, key: str) -> bool:
    try:
        session.call("config.get", key=key)
    except AgentError as exc:
        if exc.code == "invalid_config" and "unknown setting" in str(exc):
            return False
        raise
    return True


def _settings(session: Session, opts: ProvisionOptions) -> list[tuple[str, str | int | bool]]:
    wanted: list[tuple[str, str | int | bool]] = [("w3bstream.project_id", str(opts.project_id))]
    if opts.project_version:
        wanted.append(("w3bstream.project_version", opts.project_version))
    if opts.wifi_ssid is not None and opts.wifi_password is not None:
        wanted += [("wifi.ssid", opts.wifi_ssid), ("wifi.password", opts.wifi_password)]
    if opts.broker is not None:
        host, port, tls = parse_broker(opts.broker)
        wanted += [("mqtt.host", host), ("mqtt.port", port)]
        if _accepts(session, "mqtt.tls"):
            wanted.append(("mqtt.tls", tls))
        elif tls:
            raise ProvisionError(
                "the board's firmware has no mqtt.tls setting, so it cannot use mqtts://",
                hint="update the firmware, or use an mqtt:// broker",
            )
    for key, _ in wanted:
        if not _accepts(session, key):
            raise ProvisionError(
                f"the board's firmware has no {key} setting", hint="update the firmware"
            )
    return wanted


def _set(session: Session, key: str, value: str | int | bool) -> None:
    try:
        session.call("config.set", key=key, value=value)
    except AgentError as exc:
        if key == "mqtt.tls" and exc.code == "invalid_config" and isinstance(value, bool):
            # A schema that keeps flags as 0/1 integers.
            session.call("config.set", key=key, value=int(value))
            return
        raise ProvisionError(f"the board refused {key}: {exc}") from exc


def _read_back(
    session: Session, wanted: list[tuple[str, str | int | bool]], secrets: set[str]
) -> dict[str, Any]:
    stored: dict[str, Any] = session.call("config.get")
    for key, value in wanted:
        expect: Any = "<set>" if key in secrets else value
        got = stored.get(key)
        if got != expect and not (isinstance(value, bool) and got == int(value)):
            raise ProvisionError(f"{key} reads back as {got!r}, not {expect!r}")
    return stored


def _identity(
    session: Session, info: dict[str, Any], opts: ProvisionOptions
) -> tuple[dict[str, Any], bool]:
    state = (info.get("identity") or {}).get("state")
    if opts.rotate and state != "none":
        return session.call("identity.rotate", curve=opts.curve), True
    if state == "ok":
        return session.call("identity.show"), False
    if state == "corrupt":
        reason = (info.get("identity") or {}).get("reason", "")
        raise ProvisionError(
            f"the board's identity is corrupt ({reason})",
            hint="--rotate makes a new one (the old file is kept on the device)",
        )
    return session.call("identity.create", curve=opts.curve), True


def _permit(session: Session, ident: dict[str, Any], opts: ProvisionOptions) -> dict[str, Any]:
    if ident["curve"] != "secp256k1":
        raise ProvisionError(
            f"ioID registration needs a secp256k1 identity; this board's is {ident['curve']}",
            hint="--rotate --curve secp256k1",
        )
    assert opts.owner is not None and opts.nonce is not None  # checked in check_options
    registry = _registry(opts)
    args = {"owner": opts.owner, "nonce": opts.nonce, "chain_id": opts.chain_id}
    args["registry"] = registry
    signed: dict[str, Any] = session.call("sign", profile="ioid", args=args)
    verify.check_signature(ident, "ioid", args, signed)  # raises unless the device signed it
    sig = bytes.fromhex(signed["signature"])
    return {
        "contract": "ioIDRegistry",
        "chain_id": opts.chain_id,
        "registry": registry,
        "owner": opts.owner,
        "device": ident["address"],
        "nonce": opts.nonce,
        "digest": "0x" + signed["digest"],
        "signature": "0x" + signed["signature"],
        "v": sig[64],
        "r": "0x" + sig[:32].hex(),
        "s": "0x" + sig[32:64].hex(),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def provision(
    session: Session,
    opts: ProvisionOptions,
    *,
    inventory: Inventory | None = None,
    deploy: Callable[[Session], None] | None = None,
    progress: Progress | None = None,
) -> ProvisionResult:
    """Provision the board in ``session``; record it in ``inventory`` if given.

    Args:
        session: the open board.
        opts: what to provision.
        inventory: where to record the device (None: do not record).
        deploy: installs the firmware when it is missing or speaks another agent
            API (``ioconnect provision`` passes
            :func:`ioconnect_host.deploy.install_firmware`); None: that is an error.
        progress: called with a short description before each step.

    Returns:
        What was done; ``bundle`` is ready for :func:`write_bundle`.

    Raises:
        ProvisionError: bad options, or the board refused a step.
        FirmwareMissingError: no (compatible) firmware and no ``deploy``.
        VerificationError: something the board returned does not check out.
    """
    step = progress or (lambda text: None)
    check_options(opts)
    step("checking the firmware")
    try:
        info = session.info()
    except FirmwareMissingError:
        if deploy is None:
            raise
        step("deploying the firmware")
        deploy(session)  # the hook installs the firmware (and resets the board), then on
        info = session.info()
    board = _pick_board(session, info, opts)
    step("identity")
    ident, created = _identity(session, info, opts)
    verify.check_identity(ident)
    rotated = created and (info.get("identity") or {}).get("state") != "none"
    step("settings")
    wanted = _settings(session, opts)
    for key, value in wanted:
        _set(session, key, value)
    stored = _read_back(session, wanted, {"wifi.password"})
    files = {}
    step("board facts")
    files[BOARD_JSON] = session.put_file(BOARD_JSON, board_json(board))
    if opts.ca is not None:
        step("CA certificate")
        files[DEVICE_CA] = session.put_file(DEVICE_CA, opts.ca.read_bytes())
    step("DID document")
    document: dict[str, Any] = session.call("diddoc")
    if document.get("id", "").lower() != ident["did"].lower():
        raise verify.VerificationError("the DID document's id is not the device's DID")
    result = ProvisionResult(
        identity=ident,
        created=created,
        rotated=rotated,
        board=board,
        firmware=str(info.get("firmware")),
        config=stored,
        files=files,
    )
    result.bundle = _bundle(result, document, opts)
    if opts.owner is not None:
        step("ioID permit")
        result.bundle["ioid_permit"] = _permit(session, ident, opts)
    if inventory is not None:
        now = _now()
        result.device = inventory.record(
            Device(
                did=ident["did"],
                address=ident.get("address"),
                public_key=ident["public_key"],
                curve=ident["curve"],
                board=board,
                usb_serial=session.ref.usb_serial,
                firmware=result.firmware,
                project_id=str(opts.project_id),
                project_version=opts.project_version or None,
                provisioned_at=now,
                updated_at=now,
            )
        )
    return result


def _bundle(
    result: ProvisionResult, document: dict[str, Any], opts: ProvisionOptions
) -> dict[str, Any]:
    ident = result.identity
    # The hash is over these exact bytes (compact, keys sorted): anyone can redo it.
    canonical = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return {
        "version": BUNDLE_VERSION,
        "did": ident["did"],
        "did_key": ident["did_key"],
        "address": ident.get("address"),
        "io_address": ident.get("io_address"),
        "curve": ident["curve"],
        "public_key": ident["public_key"],
        "did_document": document,
        "did_document_sha256": "0x" + hashlib.sha256(canonical).hexdigest(),
        "board": result.board,
        "firmware": result.firmware,
        "project_id": str(opts.project_id),
        "project_version": opts.project_version,
        "created_at": _now(),
    }


def default_bundle_path(bundle: dict[str, Any], folder: Path | None = None) -> Path:
    """``<address>.json`` (Ed25519: the did:key's last part) in ``folder`` (default cwd)."""
    name = bundle.get("address") or str(bundle["did"]).rsplit(":", 1)[-1]
    return (folder or Path.cwd()) / f"{name}.json"


def write_bundle(bundle: dict[str, Any], path: Path) -> Path:
    """Write the bundle as JSON to ``path`` (temp file + rename: never half a file).

    Raises:
        ProvisionError: the folder does not exist or is not writable.
    """
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ProvisionError(f"cannot write {path}: no folder {folder}")
    if path.is_dir():
        raise ProvisionError(f"cannot write {path}: it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(bundle, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ProvisionError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
