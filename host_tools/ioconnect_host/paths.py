"""Where the shipped device files live (package data of the distribution)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def firmware_dir() -> Path:
    """The folder holding ``boot.py``, ``main.py`` and the ``ioconnect`` device package."""
    # firmware/ has no __init__.py (it is copied to boards as is), so it is a
    # namespace package: ask the import system where it is.
    spec = importlib.util.find_spec("ioconnect_firmware")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ioconnect is not installed: firmware files not found")
    return Path(next(iter(spec.submodule_search_locations)))


def home() -> Path:
    """ioconnect's own folder: ``$IOCONNECT_HOME``, else ``~/.ioconnect``."""
    return Path(os.environ.get("IOCONNECT_HOME") or Path.home() / ".ioconnect")
