"""Supervisor process of a detached virtual board (started by ``ioconnect sim start --detach``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ioconnect_host.errors import IoconnectError

from .launch import run_foreground, start_board


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ioconnect_sim")
    parser.add_argument("--board", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heap")
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--bootsel", action="store_true")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--engine", default="unix")
    args = parser.parse_args(argv)
    try:
        vb = start_board(
            args.board,
            name=args.name,
            state_dir=args.state,
            seed=args.seed,
            heap=args.heap,
            fast=args.fast,
            bootsel=args.bootsel,
            download=args.download,
            engine=args.engine,
        )
    except IoconnectError as err:
        print(f"ioconnect-sim: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.name}: {vb.port}", flush=True)
    run_foreground(vb, args.board)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
