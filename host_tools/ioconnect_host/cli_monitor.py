"""Console commands: ``monitor`` (frames checked live), ``repl`` (a terminal to the
board's REPL) and ``reset`` (soft or hard, then wait for the board).

``monitor`` exits 0 when every frame it saw verified, 1 when one did not (each
is shown as it came); Ctrl-C ends it cleanly with a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import sys
import threading
import time
from typing import Any, TypeAlias

from .cli_verify import claim_options
from .console import open_console, reset_board
from .monitor import (
    FrameChecker,
    MonitorEvent,
    Tally,
    claim_of_device,
    identity_from_board,
    now_ms,
    watch,
)
from .ports import PORT_ENV, find_again, select_port
from .signer import Claim, claim_from
from .transport import PortError

__all__ = ["add_console_commands"]

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_EXIT_KEY = b"\x1d"  # Ctrl-]: leave the terminal (as miniterm and mpremote)


def _port_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-p",
        "--port",
        help=f"serial path, sim:NAME, id:SERIAL, a DID or auto (default: ${PORT_ENV})",
    )


# -- monitor -------------------------------------------------------------------


def _device_claim(args: argparse.Namespace, port: Any) -> tuple[Claim | None, str, bool]:
    """The identity frames are checked against, where it came from, and whether the
    board waits at its REPL prompt to be restarted (it was asked)."""
    named = args.did or args.address or args.public_key
    if named:
        claim = claim_from(
            did=args.did, address=args.address, public_key=args.public_key,
            curve=args.curve, inventory=args.inventory,
        )  # fmt: skip
        return claim, "the command line" + (" and the inventory" if args.inventory else ""), False
    if args.no_ask:
        return None, "nobody: --no-ask (signatures checked for form only)", False
    ident = identity_from_board(port, restart=False)
    if args.inventory:
        # The board says who it is; the inventory must know it with the same key.
        claim = claim_from(
            did=ident["did"], public_key=ident["public_key"], curve=ident["curve"],
            inventory=args.inventory,
        )  # fmt: skip
        return claim, "the board, as recorded in the inventory", True
    return claim_of_device(ident), "the board", True


def _frame_line(event: MonitorEvent) -> str:
    frame, v = event.data, event.verdict
    assert v is not None
    name = frame.get("event", "?") if isinstance(frame, dict) else "?"
    nonce = frame.get("nonce") if isinstance(frame, dict) else None
    head = f"[{name}" + (f" nonce {nonce}" if nonce is not None else "") + "]"
    if not v.valid:
        return f"{head} FAILED verification: {v.reason}"
    if name not in ("task", "signed"):
        rest = {k: val for k, val in frame.items() if k != "event"}
        return f"{head} {json.dumps(rest)}" if rest else head
    if name == "signed":
        return f"{head} signed and sent over MQTT (nonce in order)"
    task_id = next((f.value for p in v.parts for f in p.fields if f.name == "taskID"), "")
    who = v.signer if v.signer_checked else "unchecked signer"
    extra = " + COSE" if len(v.parts) > 1 else ""
    return f"{head} valid{extra}, signed by {who}, taskID {task_id}"


def _monitor(args: argparse.Namespace) -> int:
    ref = select_port(args.port)
    claim, source, restart = _device_claim(args, ref)
    who = claim.did or claim.address or claim.label if claim else "nobody"
    if not args.json:
        print(f"monitor: {ref.port}, device {who} (from {source}); Ctrl-C quits", file=sys.stderr)
    checker = FrameChecker(claim, tuple(args.signed_key or ()))
    tally = Tally()
    deadline = time.monotonic() + args.duration if args.duration else None

    def stop() -> bool:
        if args.frames is not None and tally.frames >= args.frames:
            return True
        return deadline is not None and time.monotonic() >= deadline

    out = sys.stdout.buffer
    pending = bytearray()  # --json: text is sent a line at a time

    def show(event: MonitorEvent) -> None:
        if args.json:
            _json_event(event, pending)
        elif event.kind == "text":
            out.write(event.data)
            out.flush()
        elif event.kind == "damaged":
            print(f"\n[damaged frame, length or CRC wrong] {event.data[:80]!r}", flush=True)
        else:
            print(_frame_line(event), flush=True)

    try:
        while not stop():
            try:
                with open_console(ref.port) as link:
                    if restart:
                        # Ctrl-D at the prompt, on the port read from here on: the
                        # restart is shown from its first byte.
                        link.write(b"\x04")
                        restart = False
                    for event in watch(link, checker, stop=stop, tally=tally):
                        show(event)
            except PortError as exc:
                # Reset, unplugged, re-enumerated: find the same board again.
                _notice(args, f"lost {ref.port} ({exc.args[0]}); looking for the board again")
                ref = find_again(ref, timeout_s=args.reconnect)
                _notice(args, f"found the board again on {ref.port}")
    except KeyboardInterrupt:
        pass  # Ctrl-C: the normal way out
    if args.json and pending:
        _print_json({"type": "text", "text": pending.decode("utf-8", "replace")})
    summary = {"frames": tally.frames, "valid": tally.valid, "invalid": tally.invalid,
               "damaged": tally.damaged, "device": who}  # fmt: skip
    if args.json:
        _print_json({"type": "summary", **summary})
    else:
        print(f"\nmonitor: {tally.frames} frames, {tally.valid} valid, {tally.invalid} failed, "
              f"{tally.damaged} damaged", file=sys.stderr)  # fmt: skip
    if tally.invalid:
        print(f"ioconnect: invalid: {tally.invalid} frame(s) failed verification, first: "
              f"{tally.reasons[0]}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _notice(args: argparse.Namespace, text: str) -> None:
    if args.json:
        _print_json({"type": "notice", "text": text})
    else:
        print(f"\n[monitor] {text}", flush=True)


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps({"t_ms": now_ms(), **obj}), flush=True)


def _json_event(event: MonitorEvent, pending: bytearray) -> None:
    if event.kind == "text":
        pending += event.data
        while (i := pending.find(b"\n")) >= 0:
            line = bytes(pending[: i + 1]).rstrip(b"\r\n")
            del pending[: i + 1]
            _print_json({"type": "text", "text": line.decode("utf-8", "replace")})
    elif event.kind == "damaged":
        _print_json({"type": "damaged", "bytes": event.data.decode("latin-1")})
    else:
        assert event.verdict is not None
        _print_json({"type": "frame", "frame": event.data, "verdict": event.verdict.to_json()})


# -- repl ----------------------------------------------------------------------


def _repl(args: argparse.Namespace) -> int:
    ref = select_port(args.port)
    stdin = sys.stdin.buffer
    interactive = stdin.isatty()
    out = sys.stdout.buffer
    done = threading.Event()
    with open_console(ref.port) as link:

        def board_to_terminal() -> None:
            while not done.is_set():
                try:
                    data = link.read(max(1, link.in_waiting))
                except (OSError, ValueError, TypeError):
                    done.set()  # port gone (or closed under us at the end)
                    return
                if data:
                    out.write(data)
                    out.flush()

        reader = threading.Thread(target=board_to_terminal, name="repl-reader", daemon=True)
        reader.start()
        saved = _raw_tty(stdin.fileno()) if interactive else None
        # \r\n: the terminal may be raw now.
        print(f"repl: {ref.port}; Ctrl-] quits", end="\r\n", file=sys.stderr, flush=True)
        try:
            _terminal_to_board(stdin.fileno(), link, done)
        finally:
            if saved is not None:
                import termios

                termios.tcsetattr(stdin.fileno(), termios.TCSADRAIN, saved)
            done.set()
            reader.join(2)
    print("\nrepl: closed", file=sys.stderr)
    return 0


def _raw_tty(fd: int) -> list[Any]:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    # Keys go to the board as typed (Ctrl-C interrupts it, not us); TCSADRAIN,
    # not setraw's default TCSAFLUSH, keeps what was typed ahead.
    tty.setraw(fd, termios.TCSADRAIN)
    return saved


def _terminal_to_board(fd: int, link: Any, done: threading.Event) -> None:
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    while not done.is_set():
        if not sel.select(timeout=0.2):
            continue
        data = os.read(fd, 1024)
        if not data:  # stdin ended (a pipe): give the board a moment to answer
            time.sleep(0.5)
            return
        cut = data.find(_EXIT_KEY)
        if cut >= 0:
            if cut:
                link.write(data[:cut])
            time.sleep(0.2)  # let the answer to the last line arrive
            return
        link.write(data)


# -- reset ---------------------------------------------------------------------


def _reset(args: argparse.Namespace) -> int:
    result = reset_board(select_port(args.port), hard=args.hard, timeout_s=args.timeout)
    if args.json:
        print(json.dumps(result))
    else:
        how = "hard reset (machine.reset)" if args.hard else "soft reset (Ctrl-D)"
        print(f"{result['port']}: {how}, answered after {result['seconds']} s: {result['said']}")
    return 0


def add_console_commands(sub: Sub) -> None:
    """Register ``monitor``, ``repl`` and ``reset``."""
    mon = sub.add_parser(
        "monitor",
        help="the board's console, signed frames checked live against the device identity",
        description="Show the board's console; every agent frame (task, signed, …) is "
        "decoded and verified against the device (its identity from the options, else "
        "asked from the board, which is soft-reset to run its program again). "
        "Exit 0 if every frame verified, 1 if one did not.",
    )
    _port_arg(mon)
    claim_options(mon)
    mon.add_argument("--no-ask", action="store_true", help="do not ask the board who it is")
    mon.add_argument("--signed-key", action="append", metavar="KEY", help="project signed key")
    mon.add_argument("--frames", type=int, help="stop after this many frames")
    mon.add_argument("--duration", type=float, help="stop after this many seconds")
    mon.add_argument(
        "--reconnect", type=float, default=30.0,
        help="seconds to look for the board after its port went away (30)",
    )  # fmt: skip
    mon.add_argument("--json", action="store_true", help="one JSON object per line")
    mon.set_defaults(handler=_monitor)

    repl = sub.add_parser(
        "repl", help="a terminal to the board's REPL (Ctrl-] quits)",
        description="Connect the terminal to the board's console. Keys go to the board "
        "as typed (raw mode when stdin is a terminal); Ctrl-] quits.",
    )  # fmt: skip
    _port_arg(repl)
    repl.set_defaults(handler=_repl)

    reset = sub.add_parser(
        "reset", help="soft-reset the board (or --hard) and wait until it answers",
        description="Soft reset: Ctrl-C then Ctrl-D in the friendly REPL (boot.py and "
        "main.py run again). --hard: machine.reset() (USB boards re-enumerate and are "
        "found again). Waits until the board prints again.",
    )  # fmt: skip
    _port_arg(reset)
    reset.add_argument("--hard", action="store_true", help="machine.reset() instead")
    reset.add_argument("--timeout", type=float, default=20.0, help="seconds to wait (20)")
    reset.add_argument("--json", action="store_true", help="print JSON")
    reset.set_defaults(handler=_reset)
