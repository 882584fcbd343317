# The virtual board's console: MicroPython's friendly REPL, raw REPL and
# raw-paste mode, spoken over stdin/stdout exactly as a board speaks them on its
# USB serial port. Runs inside the VM, so code sent by a host runs beside the
# firmware. While user code runs (ctl "run" ... "idle"), the supervisor turns a
# Ctrl-C into SIGINT, raised here as KeyboardInterrupt; otherwise it passes the
# byte 0x03 on, which the REPLs read as Ctrl-C. A KeyboardInterrupt that still
# lands while the console waits for input also counts as that character.
#
# Exit codes tell the supervisor what to do next (see supervisor.py).
import os
import sys

import __main__
import _simboard as board
from micropython import const

_SOFT_FRIENDLY = 10  # soft reset, come back in the friendly REPL
_SOFT_RAW = 11  # soft reset, come back in the raw REPL

_out = sys.stdout.buffer
_in = sys.stdin.buffer
# One namespace for boot.py, main.py and the REPL: __main__'s, as on a board
# (`import __main__` sees the REPL's names; tab completion looks there).
_main = __main__
_ns = __main__.__dict__


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
    # The console and shims are compiled to native code, which adds no
    # traceback entries: only the user's frames show, as with a board's C code.
    sys.print_exception(e)


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
# A port of MicroPython's line editor (shared/readline/readline.c) with the
# options the esp32 and rp2 ports build it with: Emacs keys and auto-indent on,
# word moves off, 8 lines of history. Every echo below is the byte sequence the
# C code writes, so a terminal (or a test) sees what a board would send.

_HIST_SIZE = const(8)  # MICROPY_READLINE_HISTORY_SIZE
_AI_ON = const(1)  # auto_indent_state flags
_AI_JUST_ADDED = const(2)
_UP = const(1)  # keys that several bytes or sequences map to
_DOWN = const(2)
_LEFT = const(3)
_RIGHT = const(4)
_HOME = const(5)
_END = const(6)
_DEL = const(7)

_hist = []  # newest first; a soft reset (a new VM) clears it, as on a board
_ai = 0


def _back(n):
    # mp_hal_move_cursor_back: backspaces for up to 4 steps, else ESC [ n D.
    if n > 4:
        w(b"\x1b[%dD" % n)
    elif n > 0:
        w(b"\b\b\b\b"[:n])


def _push_history(text):
    if text and (not _hist or _hist[0] != text):
        _hist.insert(0, bytes(text))
        if len(_hist) > _HIST_SIZE:
            _hist.pop()


def _auto_indent(line):
    # After a line ending in ":" indent one level deeper; keep the level of the
    # line before; stop indenting after two blank lines. Returns bytes added.
    global _ai
    n = len(line)
    if not _ai & _AI_ON or n < 2 or line[n - 1] != 10:
        return 0
    i = n - 1
    while i > 0 and line[i - 1] != 10:
        i -= 1
    j = i
    while j < n and line[j] == 32:
        j += 1
    if i > 0 and j + 1 == n:  # the line before is blank: look one further up
        k = i - 1
        while k > 0:
            if line[k - 1] == 10:
                return 0
            if line[k - 1] != 32:
                break
            k -= 1
    levels = (j - i) // 4 + (line[n - 2] == 58)
    for _ in range(levels):
        line.extend(b"    ")
        w(b"    ")
        _ai |= _AI_JUST_ADDED
    return 4 * levels


def _isalnum(c):
    return 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122


def _complete(text, prompt):
    # py/repl.c mp_repl_autocomplete on the text before the cursor: the bytes
    # to insert, or None when the candidates were printed. Names are tried in
    # qstr order, the order dir() gives, so the list reads as a board prints it.
    start = len(text)
    while start and (_isalnum(text[start - 1]) or text[start - 1] in b"_."):
        start -= 1
    words = str(text[start:], "ascii").split(".")
    part = words.pop()
    obj = _main
    for name in words:
        try:
            obj = getattr(obj, name)
        except Exception:  # noqa: BLE001 - the C lookup is protected the same way
            return b""
    if text[:7] == b"import ":
        return b""  # built-in module names: the VM cannot list the board's
    try:
        names = [d for d in dir(obj) if d.startswith(part) and (part or d[0] != "_")]
    except Exception:  # noqa: BLE001
        names = []
    n = len(part)
    if not names:
        # Nothing matches the first word of the line: perhaps it is "import".
        if start == 0 and not words and 0 < n < 7 and b"import "[:n] == text:
            return b"import "[n:]
        return b""
    first = names[0]
    common = len(first)
    for d in names[1:]:
        j = n
        while j < common and j < len(d) and first[j] == d[j]:
            j += 1
        common = j
    if len(names) == 1 or common > n:
        return first[n:common].encode()
    col = 64  # 4 slots of 16 columns; the first name starts a new line
    for d in names:
        gap = (col + 15) // 16 * 16 - col
        if gap < 2:
            gap += 16
        if col + gap + len(d) <= 64:
            w(b" " * gap + d.encode())
            col += gap + len(d)
        else:
            w(b"\n" + d.encode())
            col = len(d)
    w(b"\n")
    return None


def readline(line, prompt):
    # Edit one line appended to `line` (the statement so far); returns 0 on
    # Enter, or the control character that ends editing (Ctrl-A..E on an empty
    # line, Ctrl-C).
    global _ai
    orig = cur = len(line)
    esc = 0  # 0 none, 1 ESC, 2 ESC [, 3 ESC [ digit, 4 ESC O
    digit = 0
    hist = -1
    w(prompt)
    if not line:
        _ai = _AI_ON
    cur += _auto_indent(line)
    while True:
        c = getc()
        last_len = len(line)
        back = fwd = key = 0
        redraw = False
        if esc == 0:
            if 1 <= c <= 5 and last_len == orig:
                return c
            if c == 1:
                key = _HOME
            elif c == 2:
                key = _LEFT
            elif c == 3:
                return c
            elif c == 4:
                key = _DEL
            elif c == 5:
                key = _END
            elif c == 6:
                key = _RIGHT
            elif c == 11:  # Ctrl-K: kill to the end of the line
                line[cur:] = b""
                redraw = True
            elif c == 14:
                key = _DOWN
            elif c == 16:
                key = _UP
            elif c == 21:  # Ctrl-U: kill to the start of the line
                line[orig:cur] = b""
                back = cur - orig
                redraw = True
            elif c == 13:
                w(b"\r\n")
                _push_history(line[orig:])
                return 0
            elif c == 27:
                esc = 1
            elif c == 8 or c == 127:
                if cur > orig:
                    # Inside leading spaces, a backspace takes one indent level.
                    spaces = 0
                    for i in range(orig, cur):
                        if line[i] != 32:
                            spaces = 0
                            break
                        spaces += 1
                    back = 4 if spaces >= 4 else 1
                    line[cur - back : cur] = b""
                    redraw = True
            elif _ai & _AI_JUST_ADDED and (c == 9 or c == 32):
                # Tab or space right after an auto-indent turns auto-indent off
                # (a paste is coming); a space also takes back 3 of the 4 spaces.
                _ai = 0
                if c == 32:
                    back = 3
                    line[-3:] = b""
            elif c == 9:
                if line and cur and line[cur - 1] in b" \t\n\r\x0b\x0c":
                    extra = b"    "
                else:
                    extra = _complete(line[orig:cur], prompt)
                if extra is None:  # candidates printed: draw the prompt again
                    w(prompt)
                    w(line[orig:cur])
                    redraw = True
                elif extra:
                    line[cur:cur] = extra
                    redraw = True
                    fwd = len(extra)
            elif 32 <= c <= 126:
                line[cur:cur] = bytes((c,))
                redraw = True
                fwd = 1
        elif esc == 1:
            esc = 2 if c == 91 else 4 if c == 79 else 0  # "[" or "O"
        elif esc == 2:
            if 48 <= c <= 57:
                esc = 3
                digit = c
            else:
                esc = 0
                if 65 <= c <= 68:  # A B C D
                    key = (_UP, _DOWN, _RIGHT, _LEFT)[c - 65]
                elif c == 72:
                    key = _HOME
                elif c == 70:
                    key = _END
        elif esc == 3:
            if c == 126:  # "~"
                if digit in b"17":
                    key = _HOME
                elif digit in b"48":
                    key = _END
                elif digit == 51:
                    key = _DEL
            esc = 0
        else:  # ESC O H / ESC O F
            key = _HOME if c == 72 else _END if c == 70 else 0
            esc = 0
        if key == _UP:
            if hist + 1 < len(_hist):
                hist += 1
                line[orig:] = b""
                line.extend(_hist[hist])
                back = cur - orig
                redraw = True
                fwd = len(line) - orig
        elif key == _DOWN:
            if hist >= 0:
                hist -= 1
                line[orig:] = b""
                if hist >= 0:
                    line.extend(_hist[hist])
                back = cur - orig
                redraw = True
                fwd = len(line) - orig
        elif key == _RIGHT:
            fwd = 1 if cur < len(line) else 0
        elif key == _LEFT:
            back = 1 if cur > orig else 0
        elif key == _HOME:
            back = cur - orig
        elif key == _END:
            fwd = len(line) - cur
        elif key == _DEL and cur < len(line):
            line[cur : cur + 1] = b""
            redraw = True
        # Redraw as readline.c does: move back, rewrite the tail, move back again.
        if back:
            _back(back)
            cur -= back
        if redraw:
            if len(line) < last_len:
                w(b"\x1b[K")  # erase what is left of the old line
            w(line[cur:])
            _back(len(line) - cur - fwd)
            cur += fwd
        elif fwd:
            w(line[cur : cur + fwd])
            cur += fwd
        _ai &= ~_AI_JUST_ADDED


def _starts_with_word(text, word):
    n = len(word)
    return text[:n] == word and (len(text) == n or not (_isalnum(text[n]) or text[n] == 95))


_COMPOUND = (b"if", b"while", b"for", b"try", b"with", b"def", b"class", b"async")


def needs_more(text):
    # py/repl.c mp_repl_continue_with_input: open brackets or triple quotes, a
    # trailing backslash, or a compound statement not yet ended by a blank line.
    if not text:
        return False
    compound = text[0] == 64 or any(_starts_with_word(text, k) for k in _COMPOUND)
    quote = 0  # 1 ', 2 ", 3 \'\'\', 4 """
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == 39 or c == 34:
            one, three = (1, 3) if c == 39 else (2, 4)
            if quote in (0, three) and i + 2 < n and text[i + 1] == c and text[i + 2] == c:
                i += 2
                quote = three - quote
            elif quote in (0, one):
                quote = one - quote
        elif c == 92 and i + 1 < n and text[i + 1] in b"'\"\\":
            if quote:
                i += 1
        elif not quote:
            if c in b"([{":
                depth += 1
            elif c in b")]}":
                depth -= 1
        i += 1
    if quote > 2:
        return True
    if depth > 0 and not quote:
        return True
    return text[-1] == 92 or (compound and text[-1] != 10)


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
    # pyexec_friendly_repl: the statement grows in one buffer, line by line.
    banner()
    while True:
        line = bytearray()
        ctl = readline(line, b">>> ")
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
        if not line:
            continue
        while needs_more(line):
            line.append(10)
            ctl = readline(line, b"... ")
            if ctl == 3:  # cancel the whole statement
                w(b"\r\n")
                line = None
                break
            if ctl == 4:  # end the compound statement here
                break
        if line is not None and not execute(bytes(line), "<stdin>", "single", False):
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
    _ns.clear()  # the launcher's names: a board's __main__ starts with __name__ only
    _ns["__name__"] = "__main__"
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
