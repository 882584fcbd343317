# The virtual board's console: MicroPython's friendly REPL, raw REPL and
# raw-paste mode, spoken over stdin/stdout exactly as a board speaks them on its
# USB serial port. Runs inside the VM, so code sent by a host runs beside the
# firmware. While user code runs (ctl "run" ... "idle"), the supervisor turns a
# Ctrl-C into SIGINT, raised here as KeyboardInterrupt; otherwise it passes the
# byte 0x03 on, which the REPLs read as Ctrl-C. A KeyboardInterrupt that still
# lands while the console waits for input also counts as that character.
#
# Exit codes tell the supervisor what to do next (see supervisor.py).
import io
import os
import sys

import _simboard as board

_SOFT_FRIENDLY = 10  # soft reset, come back in the friendly REPL
_SOFT_RAW = 11  # soft reset, come back in the raw REPL

_out = sys.stdout.buffer
_in = sys.stdin.buffer
_ns = {"__name__": "__main__"}  # one namespace for boot.py, main.py and the REPL


class _Reset(Exception):
    pass


def w(b):
    _out.write(b)


def getc():
    # One byte from the host; Ctrl-C arrives as a signal, not as a byte.
    try:
        b = _in.read(1)
    except KeyboardInterrupt:
        return 3
    if not b:
        sys.exit(0)  # host side closed: the board lost power
    return b[0]


def print_exception(e):
    # As a board prints it: without the console's own frames.
    buf = io.StringIO()
    sys.print_exception(e, buf)
    for line in buf.getvalue().split("\n"):
        if line and "console.py" not in line:
            w(line.encode() + b"\r\n")


def execute(src, name, mode, eof):
    # Compile and run like pyexec's parse_compile_execute. Returns False on a
    # SystemExit, which a board answers with a soft reset.
    try:
        code = compile(src, name, mode)
        # While user code runs, the supervisor delivers Ctrl-C as an interrupt;
        # otherwise as the byte 0x03, in order with what was typed before it.
        board.ctl("run")
        try:
            exec(code, _ns)
        finally:
            board.ctl("idle")
        if eof:
            w(b"\x04")
    except SystemExit:
        if eof:
            w(b"\x04\x04")  # pyexec ends both outputs before the soft reset
        return False
    except BaseException as e:  # noqa: B036 - the REPL prints every error, as a board does
        if eof:
            w(b"\x04")
        print_exception(e)
    if eof:
        w(b"\x04")
    return True


def run_file(path):
    try:
        os.stat(path)
    except OSError:
        return True
    with open(path) as f:
        src = f.read()
    return execute(src, path, "exec", False)


# -- raw REPL ---------------------------------------------------------------


def raw_paste():
    # Flow control: window = half of a 256-byte buffer; the window size is sent
    # first, then 0x01 for a second window, then 0x01 for every window read.
    w(b"R\x01\x80\x00\x01")
    buf = bytearray()
    remain = 128
    while True:
        c = getc()
        if c == 4 or c == 3:
            w(b"\x04")  # tell the host the end was seen
            if c == 3:
                w(b"\x04")
                print_exception(KeyboardInterrupt())
                w(b"\x04")
                return True
            break
        buf.append(c)
        remain -= 1
        if not remain:
            w(b"\x01")
            remain = 128
    try:
        src = str(buf, "utf-8")
    except (MemoryError, UnicodeError) as e:
        w(b"\x04")
        print_exception(e)
        w(b"\x04")
        return True
    buf = None  # the text is all that is needed now: give the bytes back
    return execute(src, "<stdin>", "exec", True)


def raw_repl():
    w(b"raw REPL; CTRL-B to exit\r\n")
    while True:
        w(b">")
        line = bytearray()
        while True:
            c = getc()
            if c == 1:
                if len(line) == 2 and line[0] == 5:
                    if line[1] != 65:  # only 'A' is defined
                        w(b"R\x00")
                        line = bytearray()
                        continue
                    if not raw_paste():
                        return _SOFT_RAW
                    line = None
                    break
                w(b"raw REPL; CTRL-B to exit\r\n")
                line = None
                break
            if c == 2:
                w(b"\r\n")
                return None  # to the friendly REPL
            if c == 3:
                line = bytearray()
            elif c == 4:
                break
            else:
                line.append(c)
        if line is None:
            continue
        w(b"OK")
        if not line:
            w(b"\r\n")
            return _SOFT_RAW
        if not execute(bytes(line), "<stdin>", "exec", True):
            return _SOFT_RAW


# -- friendly REPL ----------------------------------------------------------

_OPENERS = ("if ", "for ", "while ", "def ", "class ", "with ", "try:", "@", "async ")


def needs_more(text):
    # A simplified mp_repl_continue_with_input.
    depth = 0
    quote = None
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif ch in "\"'":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else ch
            i += len(quote) - 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        i += 1
    if quote and len(quote) == 3 or depth > 0 or text.endswith("\\"):
        return True
    last = text.rsplit("\n", 1)[-1]
    if "\n" in text:
        return bool(last.strip())  # a blank line ends a compound statement
    return text.lstrip().startswith(_OPENERS) or text.rstrip().endswith(":")


def readline(prompt, indent=""):
    # Echoing line editor: printable bytes, backspace, Enter; escape sequences
    # (cursor keys) are swallowed. Returns (control char or 0, line).
    w(prompt)
    line = bytearray(indent.encode())
    w(line)
    esc = 0
    while True:
        c = getc()
        if esc:
            esc = 0 if (c >= 64 and esc == 2) else 2
            continue
        if c == 27:
            esc = 1
        elif 1 <= c <= 5 and not line:
            return c, ""
        elif c == 3:
            return 3, ""
        elif c == 13:
            w(b"\r\n")
            try:
                return 0, line.decode()
            except UnicodeError:
                return 0, "raise SyntaxError('invalid UTF-8')"
        elif c in (8, 127):
            if line:
                line.pop()
                w(b"\x08 \x08")
        elif c >= 32:
            line.append(c)
            w(bytes((c,)))


def banner():
    w(board.BANNER + b"\r\nType \"help()\" for more information.\r\n")


def paste_mode():
    w(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
    buf = bytearray()
    while True:
        c = getc()
        if c == 3:
            w(b"\r\n")
            return True
        if c == 4:
            w(b"\r\n")
            return execute(bytes(buf), "<stdin>", "exec", False)
        buf.append(c)
        w(b"\r\n=== " if c == 13 else bytes((c,)))


def friendly_repl():
    banner()
    while True:
        ctl, text = readline(b">>> ")
        if ctl == 1:
            w(b"\r\n")
            return None  # to the raw REPL
        if ctl == 2:
            w(b"\r\n")
            banner()
            continue
        if ctl == 3:
            w(b"\r\n")
            continue
        if ctl == 4:
            w(b"\r\n")
            return _SOFT_FRIENDLY
        if ctl == 5:
            if not paste_mode():
                return _SOFT_FRIENDLY
            continue
        if not text:
            continue
        cancelled = False
        while needs_more(text):
            last = text.rsplit("\n", 1)[-1]
            indent = last[: len(last) - len(last.lstrip())]
            if last.rstrip().endswith(":"):
                indent += "    "
            ctl, more = readline(b"... ", indent)
            if ctl == 3:
                w(b"\r\n")
                cancelled = True
                break
            if ctl == 4:
                break
            text += "\n" + more
        if cancelled:
            continue
        if not execute(text + "\n", "<stdin>", "single", False):
            return _SOFT_FRIENDLY


# -- power-on ---------------------------------------------------------------


def calibrate(flash):
    # What the console and shims hold after power-on: on a board they are C code
    # in flash, so the supervisor adds this to the heap the firmware gets.
    import gc

    board.power_on(flash, False)
    gc.collect()
    board.ctl("overhead %d" % gc.mem_alloc())


def start(flash, raw, soft):
    board.power_on(flash, soft)
    try:
        board.ctl("up")  # from here on a Ctrl-C arrives as KeyboardInterrupt
        if soft:
            w(b"MPY: soft reboot\r\n")
        if not run_file("boot.py") or (not raw and not run_file("main.py")):
            sys.exit(_SOFT_FRIENDLY)  # SystemExit in boot.py/main.py: a board soft-resets
    except KeyboardInterrupt:
        pass  # Ctrl-C landed outside user code (between files): go on to the REPL
    while True:
        try:
            code = raw_repl() if raw else friendly_repl()
        except KeyboardInterrupt:
            continue  # Ctrl-C while the console itself was writing: same REPL again
        except Exception as e:  # a console fault must not power the board off
            print_exception(e)
            continue
        if code is not None:
            sys.exit(code)
        raw = not raw
