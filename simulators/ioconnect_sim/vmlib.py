"""The virtual board's console and hardware shims, compiled once for a whole fleet.

On a board they are C code frozen in flash; here they are .mpy files on the VM's
import path, kept off the virtual flash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

from ioconnect_host.firmware import build_tag, cached_build, compile_module, host_mpy_arch

__all__ = ["compile_vm_lib", "vm_dir"]


def vm_dir() -> Path:
    """Folder with console.py and the hardware shims (kept off the virtual flash)."""
    return Path(__file__).resolve().parent / "vm"


def compile_vm_lib(dest: Path) -> Path:
    """console.py and the shims as .mpy in ``dest``: a board's REPL and drivers are
    C code in flash, so they should not cost the board's heap a compile.

    They are compiled to native code: it keeps off the heap, and a native frame
    adds no traceback entry, so a user's error shows only the user's frames, as
    on a board (``machine.Pin(99)`` fails in ``<stdin>``, not in ``machine.py``).

    Safe across processes (a fleet shares one ``dest``): the .mpy files are built
    into a folder named by a hash of the sources, renamed into place complete, and
    ``dest`` is a symlink switched to it in one step; a VM never sees half a lib.
    """
    arch = host_mpy_arch()
    sources = sorted(vm_dir().glob("*.py"))
    digest = hashlib.sha256(build_tag(arch) + b" native")
    for src in sources:
        digest.update(src.name.encode() + b"\0" + src.read_bytes())
    build = dest.with_name(f".{dest.name}-{digest.hexdigest()[:16]}")

    def compile_all(folder: Path) -> None:
        for src in sources:
            data = compile_module(src, mpy_arch=arch, source_name=src.name, native=True)
            (folder / (src.stem + ".mpy")).write_bytes(data)

    cached_build(build, compile_all)
    if not (dest.is_symlink() and os.readlink(dest) == build.name):
        link = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.link")
        link.unlink(missing_ok=True)
        link.symlink_to(build.name)
        if dest.is_dir() and not dest.is_symlink():
            # Compiled in place by an older version (may be half-written); another
            # process may be removing it too.
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.replace(link, dest)
        except OSError:
            link.unlink(missing_ok=True)
            if not (dest.is_symlink() and os.readlink(dest) == build.name):
                raise
    return dest
