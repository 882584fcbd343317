"""pytest plugin: one ``board`` fixture, a fresh virtual board or the real one on a port.

Installed with the package (entry point ``pytest11``: ``ioconnect``). A test asks
for ``board`` and gets a started virtual board by default; with
``--ioc-port PORT --ioc-board B`` the same test talks to a real board instead.

Options, each also a fixture that an indirect parameter overrides
(parameter > option > default):

- ``--ioc-port PORT`` (fixture ``ioc_port``): a real board's port (path, pyserial
  URL, ``sim:NAME``, ``id:SERIAL``: as ``ioconnect --port``). Repeat it to give
  ``boards`` several. Default: none, so boards are virtual.
- ``--ioc-board B`` (fixture ``ioc_board_name``): board definition, default ``esp32``.
- ``--ioc-scope function|module|session``: lifetime of ``board``/``boards``
  (default ``function``: a fresh board per test).
- ``--ioc-deploy`` (fixture ``ioc_deploy``): bring the firmware up to date before
  tests, through ``ioconnect_host.deploy.deploy(session)``, which skips files
  whose hash on the device already matches.
- ``--ioc-lock-dir DIR``, ``--ioc-lock-timeout S``: a board's port is locked
  (``flock`` on ``DIR/<port>.lock``) while a fixture holds it, so pytest-xdist
  workers, or two test runs, take turns on one board and never share it.

On failure, what the board printed during the test is attached to the report
(section ``ioconnect console: PORT``). ``@pytest.mark.hardware`` tests are
skipped unless ``--ioc-port`` is given.

Example:
    >>> def test_firmware(board):
    ...     assert board.agent("info")["firmware"] == "0.1.0"
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import itertools
import os
import re
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import pytest

from .errors import IoconnectError
from .ports import BoardRef, PortSelectionError, select_port
from .session import Session, timeout_scale
from .transport import SerialTransport

if TYPE_CHECKING:
    from ioconnect_sim.rp2040_board import Rp2040Board
    from ioconnect_sim.supervisor import VirtualBoard

__all__ = [
    "DEFAULT_BOARD",
    "Board",
    "BoardFactory",
    "PortBusyError",
    "PortLock",
    "deploy_firmware",
]

#: Board definition of virtual boards when neither a parameter nor --ioc-board names one.
DEFAULT_BOARD = "esp32"
Scope = Literal["function", "module", "session"]
_SCOPES: tuple[Scope, ...] = ("function", "module", "session")
_CONSOLE_KEY = pytest.StashKey[dict[str, int]]()  # port -> console log size at test start
_names = itertools.count(1)
# Ports whose lock this process holds: a second fixture asking for one of them
# would wait on itself forever (flock locks per open file), so it fails at once.
_held: set[str] = set()


class PortBusyError(IoconnectError):
    """Another process (an xdist worker, another run) kept the board's port too long."""


# -- port locks ----------------------------------------------------------------
class PortLock:
    """An exclusive lock on one board's port, shared by every process on this machine.

    Args:
        lock_dir: folder of the lock files (all parties must use the same one).
        port: the port; its lock file is ``lock_dir/<port with non-alphanumerics as _>.lock``.
        timeout_s: how long :meth:`acquire` waits for another holder.
    """

    def __init__(self, lock_dir: Path, port: str, *, timeout_s: float = 600.0) -> None:
        self.port = port
        self.path = lock_dir / (re.sub(r"[^A-Za-z0-9]+", "_", port).strip("_") + ".lock")
        self.timeout_s = timeout_s
        self._fd = -1

    def acquire(self) -> None:
        """Wait until the port is free, then hold it.

        Raises:
            PortBusyError: this process holds it already, or another did for ``timeout_s``.
        """
        if self.port in _held:
            raise PortBusyError(
                f"{self.port} is already held by another board fixture of this test",
                hint="give boards(n) one --ioc-port per board",
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise PortBusyError(
                        f"{self.port} stayed in use by process {holder} "
                        f"for {self.timeout_s:g} s ({self.path})",
                        hint="raise --ioc-lock-timeout, or give each worker its own board",
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # names the holder in others' errors
        self._fd = fd
        _held.add(self.port)

    def release(self) -> None:
        """Let the next process have the port (a no-op when not held)."""
        if self._fd < 0:
            return
        _held.discard(self.port)
        os.close(self._fd)  # closing drops the flock
        self._fd = -1


# -- the board -----------------------------------------------------------------
class _RecordingTransport(SerialTransport):
    """A serial transport that appends everything the board prints to a log file.

    A real board has no console log of its own, so the plugin keeps one for the
    failure report.
    """

    def __init__(self, port: str, *, log_path: Path, byte_timeout_s: float) -> None:
        super().__init__(port, byte_timeout_s=byte_timeout_s)
        self._record = log_path.open("ab")

    def _fill(self) -> bool:
        start = len(self._rx)
        got = super()._fill()
        if got:
            self._record.write(self._rx[start:])
            self._record.flush()
        return got

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._record.close()


class Board:
    """A board under test: a virtual one this plugin started, or a real one on a port.

    Attributes:
        port: the serial port (a pty for a virtual board).
        board_name: board definition (None for a real board of unknown kind).
        virtual: True when the plugin started it (``power_cut`` works only then).
        state_dir: a virtual board's state folder (flash, ``console.log``).
        deployed: what ``--ioc-deploy`` reported (``ioconnect_host.deploy``'s result), or None.

    The serial port is opened on first use and kept; :meth:`release` closes it so
    another tool (pytest-embedded's ``dut``, mpremote) can use the port, and the
    next call opens it again.
    """

    def __init__(
        self,
        ref: BoardRef,
        *,
        log_path: Path,
        virtual: VirtualBoard | Rp2040Board | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.ref = ref
        self.port = ref.port
        self.board_name = ref.board
        self.virtual = virtual is not None
        self.state_dir = state_dir
        self._vb = virtual
        self._log_path = log_path
        self._session: Session | None = None
        self.deployed: Any = None

    @property
    def session(self) -> Session:
        """The board's session (agent calls with fitting limits, file hashing and writes)."""
        if self._session is None:
            scale = timeout_scale(self.board_name, self.ref.slowness)
            transport: SerialTransport
            if self.virtual:
                transport = SerialTransport(self.port, byte_timeout_s=2.0 * scale)
            else:
                transport = _RecordingTransport(
                    self.port, log_path=self._log_path, byte_timeout_s=2.0 * scale
                )
            self._session = Session(self.ref, transport, scale)
        return self._session

    @property
    def transport(self) -> SerialTransport:
        """The raw-REPL transport (``exec``, ``eval``); also what ``ioconnect_host.agent`` takes."""
        return self.session.transport

    def exec(self, code: str | bytes, *, timeout_s: float = 10.0) -> bytes:
        """Run ``code`` on the board; return what it printed.

        With ``port`` this makes the board what ``ioconnect_host.agent``'s
        functions take: ``agent.info(board)``.
        """
        return self.session.exec(code, timeout_s=timeout_s)

    def agent(self, op: str, **args: Any) -> Any:
        """Call agent operation ``op`` (e.g. ``"info"``, ``"sign"``); return its result.

        Raises:
            AgentError: the device refused (``code`` says why).
        """
        return self.session.call(op, **args)

    def release(self) -> None:
        """Leave the raw REPL and close the port, so another program may open it."""
        if self._session is not None:
            self._session.transport.close()
            self._session = None

    def console_log(self) -> str:
        """Everything the board printed: a virtual board's own log, or what this plugin read."""
        path = self.console_log_path
        return path.read_bytes().decode("utf-8", "replace") if path.exists() else ""

    @property
    def console_log_path(self) -> Path:
        """File of :meth:`console_log`."""
        return self.state_dir / "console.log" if self.state_dir else self._log_path

    def power_cut(self) -> None:
        """Kill a virtual board's VM and boot it again from the same flash.

        A real board cannot do this to itself: the test is skipped there.
        """
        if self._vb is None:
            pytest.skip("power_cut needs a virtual board (this one is real)")
        self.release()  # the host's side of the line drops with the power
        self._vb.power_cut()

    def close(self) -> None:
        """Release the port and, for a virtual board, power it off."""
        self.release()
        if self._vb is not None:
            self._vb.stop()

    def __repr__(self) -> str:
        kind = "virtual" if self.virtual else "real"
        return f"<Board {self.board_name or '?'} on {self.port} ({kind})>"


def deploy_firmware(board: Board) -> Any:
    """Bring ``board``'s firmware up to date; unchanged files are not copied.

    This plugin does no deploying of its own: it calls
    ``ioconnect_host.deploy.deploy(session)``, which compares hashes computed on
    the device with the firmware build and copies only what differs.

    Returns:
        Whatever ``deploy`` returns (its report).

    Raises:
        pytest.UsageError: ``ioconnect_host.deploy`` is not installed.
    """
    try:
        module = importlib.import_module("ioconnect_host.deploy")
    except ImportError as exc:
        raise pytest.UsageError(
            f"--ioc-deploy needs ioconnect_host.deploy, which is missing: {exc}"
        ) from exc
    return module.deploy(board.session)


# -- options -------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ioconnect", "ioconnect boards (virtual by default)")
    group.addoption(
        "--ioc-port",
        action="append",
        default=[],
        metavar="PORT",
        help="a real board's port (repeat for several); default: virtual boards",
    )
    group.addoption(
        "--ioc-board", default=None, metavar="B", help=f"board definition (default {DEFAULT_BOARD})"
    )
    group.addoption(
        "--ioc-engine",
        default=None,
        choices=["unix", "rp2040"],
        help="engine of virtual boards (default unix; rp2040: an emulated Pico, blank: "
        "combine with --ioc-deploy)",
    )
    group.addoption(
        "--ioc-scope",
        default="function",
        choices=_SCOPES,
        help="lifetime of board/boards fixtures (default: function, a fresh board per test)",
    )
    group.addoption(
        "--ioc-deploy",
        action="store_true",
        default=None,
        help="deploy the firmware first (ioconnect_host.deploy; unchanged files are skipped)",
    )
    group.addoption(
        "--ioc-lock-dir",
        default=None,
        metavar="DIR",
        help="folder of the port lock files (default: <tmp>/ioconnect-port-locks)",
    )
    group.addoption(
        "--ioc-lock-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for a port another process holds (default 600)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hardware: needs a real board; skipped unless --ioc-port is given"
    )


@pytest.hookimpl(tryfirst=True)  # before any fixture starts a board
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("hardware") and not item.config.getoption("ioc_port"):
        pytest.skip("needs a real board: run with --ioc-port PORT")


def _scope(fixture_name: str, config: pytest.Config) -> Scope:
    """--ioc-scope, for every fixture a board's lifetime depends on."""
    return cast(Scope, config.getoption("ioc_scope"))


def _param_option_default(request: pytest.FixtureRequest, option: str, default: Any) -> Any:
    # Explicit None checks: a parameter or option of False or 0 still wins.
    param = getattr(request, "param", None)
    if param is not None:
        return param
    value = request.config.getoption(option)
    if value is not None and value != []:
        return value
    return default


# -- fixtures ------------------------------------------------------------------
@pytest.fixture(scope=_scope)
def ioc_board_name(request: pytest.FixtureRequest) -> str:
    """Board definition of ``board``: parameter > --ioc-board > ``esp32``."""
    return str(_param_option_default(request, "ioc_board", DEFAULT_BOARD))


@pytest.fixture(scope=_scope)
def ioc_engine(request: pytest.FixtureRequest) -> str:
    """Engine of virtual boards: parameter > --ioc-engine > ``unix``."""
    return str(_param_option_default(request, "ioc_engine", "unix"))


@pytest.fixture(scope=_scope)
def ioc_port(request: pytest.FixtureRequest) -> str | None:
    """A real board's port: parameter > first --ioc-port > None (virtual)."""
    value = _param_option_default(request, "ioc_port", None)
    if isinstance(value, list):
        return str(value[0])
    return None if value is None else str(value)


@pytest.fixture(scope=_scope)
def ioc_deploy(request: pytest.FixtureRequest) -> bool:
    """Deploy the firmware before use: parameter > --ioc-deploy > False."""
    return bool(_param_option_default(request, "ioc_deploy", False))


@pytest.fixture(scope="session")
def ioc_lock_dir(request: pytest.FixtureRequest) -> Path:
    """Folder of the port lock files; every xdist worker resolves the same one."""
    default = Path(tempfile.gettempdir()) / "ioconnect-port-locks"
    return Path(_param_option_default(request, "ioc_lock_dir", default))


class BoardFactory:
    """``boards(n)``: ``n`` more boards, virtual or from the --ioc-port list.

    Every board it made is closed (ports released) when the fixture ends.
    """

    def __init__(self, open_board: Callable[[str | None, str], Board], ports: list[str]) -> None:
        self._open = open_board
        self._ports = ports
        self.made: list[Board] = []
        self._used: set[str] = set()

    def __call__(self, n: int, board_name: str = DEFAULT_BOARD) -> list[Board]:
        """``n`` boards of ``board_name`` (ignored for real ports that say what they are).

        Skips the test when real ports are given but fewer than ``n`` are free.
        """
        if not self._ports:
            picked: list[str | None] = [None] * n
        else:
            free = [p for p in self._ports if p not in self._used]
            if len(free) < n:
                pytest.skip(f"needs {n} real boards, {len(free)} free --ioc-port given")
            picked = list(free[:n])
            self._used.update(free[:n])
        out = [self._open(port, board_name) for port in picked]
        self.made += out
        return out

    def close(self) -> None:
        for b in self.made:
            b.close()


@contextlib.contextmanager
def _board_opener(
    request: pytest.FixtureRequest,
    tmp: pytest.TempPathFactory,
    lock_dir: Path,
    deploy: bool,
    engine: str = "unix",
) -> Iterator[Callable[[str | None, str], Board]]:
    """A function opening boards (locked, deployed if asked) and closing them all on exit."""
    cleanup = contextlib.ExitStack()
    timeout_s = float(request.config.getoption("ioc_lock_timeout"))

    def open_board(port_spec: str | None, board_name: str) -> Board:
        serial = next(_names)
        log_path = tmp.mktemp("ioc-console") / "console.log"
        if port_spec is None:
            from ioconnect_sim.launch import start_board  # only a virtual board needs the sim

            state = tmp.mktemp(f"ioc-{board_name}")
            name = f"pytest-{board_name}-{os.getpid()}-{serial}"
            vb = start_board(board_name, name=name, state_dir=state, seed=serial, engine=engine)
            slowness = getattr(vb, "slowness", 1.0)
            ref = BoardRef(
                port=vb.port, board=board_name, sim_name=name, how="virtual", slowness=slowness
            )
            board = Board(ref, log_path=log_path, virtual=vb, state_dir=state)
        else:
            ref = select_port(port_spec)
            if request.config.getoption("ioc_board") is not None:
                if ref.sim_name and ref.board and ref.board != board_name:
                    # A virtual board says what it is: the tests would run with the
                    # wrong board's facts (heap, pins, chip).
                    raise PortSelectionError(
                        f"--ioc-board {board_name}, but {port_spec} is the virtual "
                        f"{ref.board} {ref.sim_name}",
                        hint=f"give --ioc-board {ref.board}, or leave it out",
                    )
                ref = dataclasses.replace(ref, board=board_name)
            board = Board(ref, log_path=log_path)
        lock = PortLock(lock_dir, board.port, timeout_s=timeout_s)
        try:
            lock.acquire()
        except BaseException:
            board.close()
            raise
        cleanup.callback(lock.release)
        cleanup.callback(board.close)  # callbacks run last-in first-out: close, then unlock
        if deploy:
            board.deployed = deploy_firmware(board)
        return board

    with cleanup:
        yield open_board


@pytest.fixture(scope=_scope)
def board(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    ioc_lock_dir: Path,
    ioc_board_name: str,
    ioc_port: str | None,
    ioc_deploy: bool,
    ioc_engine: str,
) -> Iterator[Board]:
    """The board under test: a fresh virtual ``ioc_board_name``, or the real one at ``ioc_port``.

    Its port is locked for the fixture's life (see ``--ioc-lock-dir``).
    """
    with _board_opener(
        request, tmp_path_factory, ioc_lock_dir, ioc_deploy, ioc_engine
    ) as open_board:
        yield open_board(ioc_port, ioc_board_name)


@pytest.fixture(scope=_scope)
def boards(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    ioc_lock_dir: Path,
    ioc_deploy: bool,
    ioc_engine: str,
) -> Iterator[BoardFactory]:
    """``boards(n, board_name="esp32") -> list[Board]``: several boards at once.

    Virtual by default; with --ioc-port given n times, those real boards.
    """
    ports = list(request.config.getoption("ioc_port"))
    with _board_opener(
        request, tmp_path_factory, ioc_lock_dir, ioc_deploy, ioc_engine
    ) as open_board:
        factory = BoardFactory(open_board, ports)
        try:
            yield factory
        finally:
            factory.made.clear()  # closed by the opener


# -- console log on failure -------------------------------------------------
def _boards_of(item: pytest.Item) -> list[Board]:
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    out = []
    for value in funcargs.values():
        if isinstance(value, Board):
            out.append(value)
        elif isinstance(value, BoardFactory):
            out += value.made
    return out


def _log_size(b: Board) -> int:
    try:
        return b.console_log_path.stat().st_size
    except OSError:
        return 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    boards_here = _boards_of(item)
    if call.when == "setup":
        # A board shared by a module or session has printed for earlier tests:
        # attach only what it printed from here on.
        item.stash[_CONSOLE_KEY] = {b.port: _log_size(b) for b in boards_here}
    elif report.failed:
        start = item.stash.get(_CONSOLE_KEY, {})
        for b in boards_here:
            with contextlib.suppress(OSError), b.console_log_path.open("rb") as f:
                f.seek(start.get(b.port, 0))
                text = f.read().decode("utf-8", "replace")
                report.sections.append((f"ioconnect console: {b.port}", text or "(nothing)"))
    return report
