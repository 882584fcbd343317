"""The virtual board's line editor, byte for byte as MicroPython's readline.c.

The last test types the same keys into the unix port's own REPL (the C
readline.c itself) and requires the same transcript.

Keys go in over the board's pty (pexpect on the port) and every echo is
compared whole: nothing before it, nothing after it. The expected bytes follow
shared/readline/readline.c as the esp32 and rp2 ports build it (Emacs keys and
auto-indent on, 8 lines of history): a cursor move of up to 4 steps is
backspaces, a longer one ``ESC [ n D``; a shortened line is erased with ``ESC [ K``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pexpect
import pexpect.spawnbase
import pytest
from ioconnect_host.vm import micropython_command
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard
from pexpect import fdpexpect

LEFT, RIGHT, UP, DOWN = b"\x1b[D", b"\x1b[C", b"\x1b[A", b"\x1b[B"
CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E, CTRL_F = (
    b"\x01",
    b"\x02",
    b"\x03",
    b"\x04",
    b"\x05",
    b"\x06",
)
CTRL_K, CTRL_N, CTRL_P, CTRL_U = b"\x0b", b"\x0e", b"\x10", b"\x15"
BACKSPACE, TAB = b"\x7f", b"\t"
PROMPT = b"\r\n>>> "


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualBoard]:
    state = tmp_path_factory.mktemp("readline")
    vb = start_board("rpi-pico", name="readline-pico", state_dir=state)
    yield vb
    vb.stop()


class Keys:
    """The board's port under pexpect: send keys, require an exact echo."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        self.child = fdpexpect.fdspawn(self.fd, timeout=60)
        self.synced = 0

    def sync(self) -> None:
        # Leave raw mode, drop what is pending, and wait for a fresh prompt.
        self.child.send(b"\r\x03\x03\x02")
        self.child.expect_exact(b'Type "help()" for more information.\r\n>>> ')
        self.synced += 1
        self.child.send(b"print('sync', %d)\r" % self.synced)
        self.child.expect_exact(b"sync %d\r\n>>> " % self.synced)

    def press(self, keys: bytes, echo: bytes) -> None:
        self.child.send(keys)
        self.child.expect_exact(echo)
        before = self.child.before
        assert before == b"", f"after {keys!r}: {before!r} came before {echo!r}"

    def close(self) -> None:
        self.child.close()


@pytest.fixture
def keys(board: VirtualBoard) -> Iterator[Keys]:
    k = Keys(board.port)
    k.sync()
    yield k
    k.close()


def test_cursor_keys_and_editing(keys: Keys) -> None:
    keys.press(b"abcdefgh", b"abcdefgh")
    keys.press(LEFT * 6, b"\b" * 6)  # cursor before "c"
    keys.press(b"\x1b[3~", b"\x1b[Kdefgh\x1b[5D")  # Delete: "ab|defgh"
    keys.press(b"X", b"Xdefgh\x1b[5D")  # insert mid-line: "abX|defgh"
    keys.press(BACKSPACE, b"\b\x1b[Kdefgh\x1b[5D")  # "ab|defgh"
    keys.press(CTRL_E, b"defgh")
    keys.press(b"\x1b[H", b"\x1b[7D")  # Home: 7 steps back is ESC [ 7 D
    keys.press(CTRL_F + RIGHT + CTRL_B, b"ab\b")
    keys.press(b"\x1bOF", b"bdefgh")  # End (ESC O F)
    keys.press(b"\x1b[1~", b"\x1b[7D")  # Home (ESC [ 1 ~)
    keys.press(b"\x1b[4~", b"abdefgh")  # End (ESC [ 4 ~)
    keys.press(b"\x1bOH", b"\x1b[7D")  # Home (ESC O H); the next key is a key again
    keys.press(b"\x1b[F" + LEFT * 4, b"abdefgh" + b"\b" * 4)
    keys.press(CTRL_K, b"\x1b[K")  # kill to the end: "abd"
    keys.press(CTRL_A + CTRL_D, b"\b\b\b\x1b[Kbd\b\b")  # delete at the cursor: "|bd"
    keys.press(CTRL_E + CTRL_U, b"bd\b\b\x1b[K")  # kill to the start
    keys.press(b"print(6 * 7)\r", b"print(6 * 7)\r\n42" + PROMPT)


def test_unknown_sequences_are_dropped_and_ctrl_c_cancels(keys: Keys) -> None:
    keys.press(b"ab\x1b[Zc\x1bxd", b"abcd")  # ESC [ Z and ESC x: no such keys
    # Alt-B (a word back) is not built into esp32/rp2 firmware; bytes past ASCII
    # never enter the line.
    keys.press(b"\x1bb\xc3\xa9e", b"e")
    keys.press(CTRL_C, PROMPT)


def test_history_keeps_eight_lines(keys: Keys) -> None:
    for i in range(10):
        keys.press(b"h%d = %d\r" % (i, i), b"h%d = %d\r\n>>> " % (i, i))
    keys.press(UP, b"h9 = 9")
    for i in range(8, 1, -1):  # each line is as long as the last: no erase needed
        keys.press(UP, b"\x1b[6Dh%d = %d" % (i, i))
    # The 9th step up finds nothing more (8 lines kept): no echo at all, so the
    # next echo must come straight after.
    keys.press(UP + CTRL_N, b"\x1b[6Dh3 = 3")
    keys.press(CTRL_P, b"\x1b[6Dh2 = 2")
    keys.press(b"\r", PROMPT)
    keys.press(UP, b"h2 = 2")  # the line run from history is now the newest
    keys.press(UP, b"\x1b[6Dh9 = 9")
    keys.press(DOWN + DOWN, b"\x1b[6Dh2 = 2\x1b[6D\x1b[K")  # past the newest: empty
    keys.press(DOWN + CTRL_C, PROMPT)  # nothing below the empty line


def test_auto_indent_and_continuation(keys: Keys) -> None:
    keys.press(b"for i in range(2):\r", b"for i in range(2):\r\n...     ")
    keys.press(b"print(i * 10)\r", b"print(i * 10)\r\n...     ")
    # Auto-indent refills two empty lines (the second looks two lines up); the
    # third, bare, ends the block.
    keys.press(b"\r", b"\r\n...     ")
    keys.press(b"\r", b"\r\n... ")
    keys.press(b"\r", b"\r\n0\r\n10" + PROMPT)
    keys.press(b"if 1:\r", b"if 1:\r\n...     ")
    keys.press(BACKSPACE, b"\b\b\b\b\x1b[K")  # in the indent, one level at a time
    keys.press(CTRL_C, PROMPT)
    keys.press(b"if 1:\r", b"if 1:\r\n...     ")
    keys.press(b" ", b"\b\b\b")  # a space just after auto-indent: pasted code comes
    keys.press(b"x=1\r", b"x=1\r\n... ")  # auto-indent stays off for the statement
    keys.press(b"\r", PROMPT)
    keys.press(b"(1,\r", b"(1,\r\n... ")  # an open bracket continues, without indent
    keys.press(b"2)\r", b"2)\r\n(1, 2)" + PROMPT)
    keys.press(b"if 1:\r", b"if 1:\r\n...     ")
    keys.press(b"x = 5\r", b"x = 5\r\n...     ")
    # Ctrl-D on the indented line deletes nothing (the cursor is at the end); on
    # an empty line it ends the block, which runs with no newline before the prompt.
    keys.press(CTRL_D + CTRL_U + CTRL_D, b"\b\b\b\b\x1b[K>>> ")
    keys.press(b"x\r", b"x\r\n5" + PROMPT)


def test_tab_completion(keys: Keys) -> None:
    line = b"zzq_alpha = 1; zzq_beta = 2; zzq_betamax = 3"
    keys.press(line + b"\r", line + PROMPT)
    keys.press(b"zzq_a" + TAB, b"zzq_alpha")
    keys.press(CTRL_C, PROMPT)
    # Several matches with no longer common prefix: the list in 16-column slots,
    # in the order the names were made (qstr order), then the line again.
    keys.press(
        b"zzq_" + TAB,
        b"zzq_\r\nzzq_alpha" + b" " * 7 + b"zzq_beta" + b" " * 8 + b"zzq_betamax\r\n>>> zzq_",
    )
    keys.press(b"b" + TAB, b"beta")  # the common prefix of zzq_beta and zzq_betamax
    keys.press(TAB, b"\r\nzzq_beta        zzq_betamax\r\n>>> zzq_beta")
    keys.press(b"m" + TAB + b"\r", b"max\r\n3" + PROMPT)
    keys.press(b"import machine\r", b"import machine" + PROMPT)
    keys.press(b"machine.Pi" + TAB, b"machine.Pin")
    keys.press(b".OU" + TAB, b".OUT")  # attributes of attributes
    keys.press(CTRL_C, PROMPT)
    keys.press(b"x = " + TAB, b"x =     ")  # after a space, Tab indents by 4
    keys.press(CTRL_C, PROMPT)
    keys.press(b"im" + TAB, b"import ")  # the keyword, when nothing else matches
    keys.press(b"no_such." + TAB, b"no_such.")
    keys.press(CTRL_C, PROMPT)


def test_raw_repl_keeps_bytes_friendly_history_survives_it(keys: Keys) -> None:
    keys.press(b"hist_kept = 1\r", b"hist_kept = 1" + PROMPT)
    keys.press(CTRL_A, b"\r\nraw REPL; CTRL-B to exit\r\n>")
    keys.press(b"\x1b[A\x04", b"OK")  # no line editing in the raw REPL: ESC [ A is code
    keys.child.expect_exact(b"\x04>")
    keys.press(CTRL_B, b"\r\nMicroPython ")
    keys.child.expect_exact(b'Type "help()" for more information.\r\n>>> ')
    keys.press(UP, b"hist_kept = 1")
    keys.press(CTRL_C, PROMPT)


# Keystrokes that the unix port's REPL treats as a board's does (it is built from
# the same readline.c; its extra word-move keys and longer history are avoided).
SCRIPT = b"".join(
    [
        b"abcdefgh" + LEFT * 6 + b"\x1b[3~X" + BACKSPACE + CTRL_E + b"\x1b[H" + CTRL_F + RIGHT,
        CTRL_B + b"\x1bOF\x1b[1~\x1b[4~\x1bOH\x1b[F" + LEFT * 4 + CTRL_K + CTRL_A + CTRL_D,
        CTRL_E + CTRL_U + b"print(6 * 7)\r",
        b"zzq_alpha = 1; zzq_beta = 2; zzq_betamax = 3\r",
        b"zzq_" + TAB + b"b" + TAB + TAB + b"m" + TAB + b"\r",
        b"for i in range(2):\rprint(i)\r\r\r\r",
        b"if 1:\r" + BACKSPACE + CTRL_C,
        b"if 1:\r x=1\r\r",
        b"(1,\r2)\r",
        UP + UP + UP + DOWN + CTRL_P + CTRL_N + CTRL_C,
        b"x = " + TAB + CTRL_C,
        b"ab\x1b[Zc\x1bxd" + CTRL_C,
        b"1/0\r",
        b"print('E' 'ND')\r",
    ]
)


def _transcript(child: pexpect.spawnbase.SpawnBase) -> bytes:
    child.send(SCRIPT)
    child.expect(rb"END\r+\n>>> ")
    # The unix port writes through a pty that adds a CR to each LF.
    return (child.before + child.after).replace(b"\r\r\n", b"\r\n")


def test_same_echo_as_micropython_readline(keys: Keys) -> None:
    unix = pexpect.spawn(micropython_command("2M")[0], micropython_command("2M")[1:], timeout=60)
    try:
        unix.expect_exact(b">>> ")
        assert _transcript(keys.child) == _transcript(unix)
    finally:
        unix.close(force=True)
