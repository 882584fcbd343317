"""The device identity: a key made and kept on a device filesystem, and its DIDs.

The device code (``ioconnect.keys``, ``ioconnect.did``) runs on the real
MicroPython VM with a board's heap; the directory given here is that virtual
device's filesystem. The private key is written there by the device and never
crosses to the host: only public facts come back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import IoconnectError
from .firmware import host_build
from .vm import DEFAULT_HEAP, run_script

__all__ = [
    "CURVES",
    "DEFAULT_DIR",
    "KEY_FILE",
    "Curve",
    "Identity",
    "IdentityError",
    "NoIdentityError",
    "new_identity",
    "show_identity",
]

Curve = Literal["secp256k1", "p256", "ed25519"]
#: Supported key types, default first.
CURVES: tuple[Curve, ...] = get_args(Curve)
#: Where ``ioconnect identity`` keeps a virtual device's filesystem by default.
DEFAULT_DIR = Path("identity")
#: The key store file inside the device filesystem (``ioconnect.keys.DEFAULT_PATH``).
KEY_FILE = "identity.key"


class IdentityError(IoconnectError):
    """The identity could not be made or read (bad input, or the device's key store refused)."""


class NoIdentityError(IdentityError):
    """There is no identity in the directory yet."""


@dataclass(frozen=True)
class Identity:
    """Public facts of a device identity, as the device computed them.

    Attributes:
        curve: key type.
        public_key: hex; uncompressed ``04||X||Y`` (ECDSA) or 32 bytes (Ed25519).
        did: ``did:io:0x…`` for ECDSA keys, the ``did:key`` for Ed25519.
        did_key: standard W3C ``did:key:z…``.
        address: ``0x…`` (lowercase) keccak address; None for Ed25519.
        io_address: IoTeX ``io1…`` address; None for Ed25519.
        document: the W3C DID document (JsonWebKey2020 public keys).
        key_file: the key store file on the device filesystem.
        created: True if this call made the key, False if it already existed.
    """

    curve: Curve
    public_key: str
    did: str
    did_key: str
    address: str | None
    io_address: str | None
    document: dict[str, Any]
    key_file: Path
    created: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``key_file`` as a string)."""
        data = asdict(self)
        data["key_file"] = str(self.key_file)
        return data


# Fixed device program; its two arguments are Python literals of checked values
# (a constant path, and a curve from CURVES or None).
_DEVICE_MAIN = "from ioconnect import identity\nidentity.main({path}, {curve})\n"


def _run_device(directory: Path, curve: Curve | None, heap: str) -> Identity:
    code = _DEVICE_MAIN.format(path=repr(KEY_FILE), curve=repr(curve))
    # The firmware as a board runs it (.mpy): compiling source needs RAM a board lacks.
    printed = run_script(code, fs_dir=directory, heap=heap, extra_path=[host_build()])
    _keep_private(directory)
    out = printed.strip().splitlines()
    try:
        reply = json.loads(out[-1])
    except (IndexError, ValueError) as exc:
        raise IdentityError("the device gave no readable identity", hint=repr(out[-3:])) from exc
    if not reply.get("ok"):
        error, message = str(reply.get("error")), str(reply.get("message"))
        if error == "NoIdentityError":
            raise NoIdentityError(
                f"no identity in {directory}", hint="create one with `ioconnect identity new`"
            )
        # The device names its own path ("identity.key: ..."); name the host's.
        prefix = KEY_FILE + ": "
        if message.startswith(prefix):
            message = f"{directory / KEY_FILE}: {message[len(prefix) :]}"
        raise IdentityError(message, hint=f"device {error}")
    info = reply["identity"]
    return Identity(
        curve=info["curve"],
        public_key=info["public_key"],
        did=info["did"],
        did_key=info["did_key"],
        address=info["address"],
        io_address=info["io_address"],
        document=_tidy(info["document"]),
        key_file=directory / reply["path"],
        created=bool(reply["created"]),
    )


# Conventional member order for people reading the document (MicroPython
# dicts have none); the content is unchanged.
_MEMBERS = ["@context", "id", "type", "controller", "verificationMethod", "authentication"]
_MEMBERS += ["assertionMethod", "keyAgreement", "publicKeyJwk", "kty", "crv", "x", "y"]
_ORDER = {k: i for i, k in enumerate(_MEMBERS)}


def _tidy(value: Any) -> Any:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (_ORDER.get(k, len(_ORDER)), k))
        return {k: _tidy(value[k]) for k in keys}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def _keep_private(directory: Path) -> None:
    """The key file 0600 in a 0700 folder, as ssh keeps ~/.ssh.

    The VM writes with umask 077 (``run_script``); this also tightens a key made
    by an older version or copied in. Only our own files: chmod would fail on others'.
    """
    key = directory / KEY_FILE
    for path, mode in ((key, 0o600), (directory, 0o700)):
        try:
            st = path.stat()
        except FileNotFoundError:
            return  # no key: nothing private here
        if st.st_uid == os.getuid() and st.st_mode & 0o777 != mode:
            path.chmod(mode)


# Permission checks as the kernel will make them (a setuid or seteuid process).
_EFFECTIVE = os.access in os.supports_effective_ids


def _check_dir(directory: Path, *, create: bool = False) -> None:
    """Refuse a folder that cannot be the device filesystem, in one line naming the fix.

    With ``create`` the folder is made (parents too) and must be writable unless
    it already holds a key (then ``new`` only shows it).
    """
    fix = "give --dir a folder you can write: the device filesystem"
    try:
        if directory.exists() and not directory.is_dir():
            raise IdentityError(
                f"{directory} is not a directory",
                hint="--dir names the folder that holds identity.key, not a file",
            )
        if create:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # it will hold the key
    except OSError as exc:  # a parent is a file, not writable, not searchable
        raise IdentityError(f"cannot create {directory}: {exc.strerror}", hint=fix) from exc
    if not directory.is_dir():
        return  # nothing there yet: show says so
    # The VM runs inside the folder: it must be searchable and readable.
    if not os.access(directory, os.R_OK | os.X_OK, effective_ids=_EFFECTIVE):
        raise IdentityError(f"cannot read {directory}: permission denied", hint=fix)
    writable = os.access(directory, os.W_OK, effective_ids=_EFFECTIVE)
    if create and not writable and not (directory / KEY_FILE).exists():
        raise IdentityError(f"cannot write a key in {directory}: permission denied", hint=fix)


def new_identity(
    directory: Path | str = DEFAULT_DIR, curve: Curve = "secp256k1", *, heap: str = DEFAULT_HEAP
) -> Identity:
    """Make the device key in ``directory`` unless one exists; return the identity.

    The key is generated by the device code on the MicroPython VM (from its
    ``os.urandom``) and stored in ``directory/identity.key``, mode 0600, the
    folder 0700 (an existing key and its folder are tightened to that). An existing
    identity is never overwritten: it is returned with ``created=False``
    (its curve may then differ from ``curve``).

    Args:
        directory: the virtual device's filesystem; created if missing.
        curve: key type for a new key.
        heap: MicroPython heap size, a board's budget (``"96K"``).

    Returns:
        The identity's public facts.

    Raises:
        IdentityError: unknown curve; ``directory`` is a file, cannot be
            created or written; or the stored key file is unreadable (corrupt,
            truncated, wrong format).
        VMError: MicroPython could not run the device code.

    Example:
        >>> ident = new_identity("identity", "secp256k1")
        >>> ident.did.startswith("did:io:0x")
        True
    """
    if curve not in CURVES:
        raise IdentityError(f"unknown curve {curve!r}", hint="choose " + ", ".join(CURVES))
    path = Path(directory)
    _check_dir(path, create=True)
    return _run_device(path, curve, heap)


def show_identity(directory: Path | str = DEFAULT_DIR, *, heap: str = DEFAULT_HEAP) -> Identity:
    """The identity stored in ``directory``, without creating one.

    Args:
        directory: the virtual device's filesystem.
        heap: MicroPython heap size.

    Returns:
        The identity's public facts (``created`` is False).

    Raises:
        NoIdentityError: there is no key in ``directory``.
        IdentityError: ``directory`` is a file or not readable, or the key
            file is unreadable.
        VMError: MicroPython could not run the device code.

    Example:
        >>> show_identity("identity").io_address.startswith("io1")
        True
    """
    path = Path(directory)
    _check_dir(path)
    if not path.is_dir():
        raise NoIdentityError(
            f"no identity in {path}", hint="create one with `ioconnect identity new`"
        )
    return _run_device(path, None, heap)
