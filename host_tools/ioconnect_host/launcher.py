"""The ``ioconnect`` executable: commands that need little start fast.

Importing the whole CLI loads every command group's libraries (crypto, asyncio,
MQTT): about 0.2 s, more than a no-change ``deploy`` takes. So ``deploy`` runs
through its own small parser; everything else goes to
:func:`ioconnect_host.cli.main`, which also knows ``deploy`` (``--help`` lists it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ioconnect ARGV``; returns the exit status (as :func:`ioconnect_host.cli.main`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["deploy"]:
        from .cli_deploy import run_deploy

        return run_deploy(args[1:])
    from .cli import main as full

    return full(args)


if __name__ == "__main__":
    sys.exit(main())
