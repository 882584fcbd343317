"""``ioconnect doctor``: what stands between this machine and a board, one finding a line.

Checks: serial ports and whether this user may open them (the device's group,
dialout/uucp membership, a group joined but not yet in this login), ports held
open by another program (``/proc/*/fd``), programs known to grab new serial
ports (ModemManager, brltty), a Pico's RPI-RP2 drive mounted read-only
(``/proc/mounts``), the esptool and mpremote versions, and running virtual
boards. Every finding names its fix; ``block`` findings make the exit non-zero.

Where the checks read the system (``/proc``, the group database, the user's
ids) they take it as arguments, so each can be pointed at a prepared tree.

Example:
    >>> [f.line() for f in diagnose() if f.level == "block"]
    ['BLOCK /dev/ttyACM0 is open in process 4242 (screen): close that program first']
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Finding",
    "UserIds",
    "check_drives",
    "check_grabbers",
    "check_holders",
    "check_port_access",
    "check_tools",
    "diagnose",
    "port_holders",
]

Level = Literal["ok", "warn", "block"]
_SERIAL_GROUPS = ("dialout", "uucp")  # Debian/Ubuntu/Fedora, Arch
_GRABBERS = {
    "ModemManager": "it probes new ttyACM ports (and can reset a board): "
    '`sudo systemctl stop ModemManager`, or a udev rule with ENV{ID_MM_DEVICE_IGNORE}="1"',
    "brltty": "it takes CH340/CP210x ttyUSB ports: `sudo apt remove brltty` if no braille display",
}
#: Oldest versions the host tools were tested with.
_TOOLS = {"esptool": (5, "flash (ESP32 family)"), "mpremote": (1, "comparisons, manual file work")}


@dataclass(frozen=True)
class Finding:
    """One thing found: ``ok``, ``warn`` (may bite) or ``block`` (stops a board working)."""

    level: Level
    what: str
    fix: str = ""

    def line(self) -> str:
        """One line: level, what, and the fix."""
        tag = {"ok": "ok   ", "warn": "WARN ", "block": "BLOCK"}[self.level]
        return f"{tag} {self.what}" + (f": {self.fix}" if self.fix else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UserIds:
    """Who runs the command: user id, name, the groups of this login."""

    uid: int
    name: str
    gids: frozenset[int]

    @staticmethod
    def current() -> UserIds:
        import pwd

        uid = os.getuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return UserIds(uid, name, frozenset([os.getgid(), *os.getgroups()]))


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _listed_in(group: str, user: str) -> bool:
    """The group database lists ``user`` (takes effect at the next login)."""
    try:
        return user in grp.getgrnam(group).gr_mem
    except KeyError:
        return False


def check_port_access(port: str, user: UserIds) -> Finding:
    """Whether ``user`` may open ``port`` read-write, from its mode bits and group."""
    try:
        st = os.stat(port)
    except OSError as exc:
        return Finding("block", f"{port}: {exc.strerror}", "is the board still plugged in?")
    mode = st.st_mode
    if user.uid == 0:
        need = 0  # root opens anything
    elif st.st_uid == user.uid:
        need = stat.S_IRUSR | stat.S_IWUSR
    elif st.st_gid in user.gids:
        need = stat.S_IRGRP | stat.S_IWGRP
    else:
        need = stat.S_IROTH | stat.S_IWOTH
    allowed = mode & need == need
    group = _group_name(st.st_gid)
    if allowed:
        return Finding("ok", f"{port}: read-write for {user.name}")
    if st.st_gid not in user.gids and _listed_in(group, user.name):
        return Finding(
            "block",
            f"{port}: {user.name} was added to group {group}, but this login predates it",
            "log out and in again (or `newgrp " + group + "`)",
        )
    if st.st_gid not in user.gids and mode & stat.S_IRGRP and mode & stat.S_IWGRP:
        return Finding(
            "block",
            f"{port} belongs to group {group}; {user.name} is not in it",
            f"`sudo usermod -aG {group} {user.name}`, then log in again",
        )
    return Finding(
        "block",
        f"{port} is not read-write for {user.name} (mode {stat.filemode(mode)}, group {group})",
        'a udev rule giving the port MODE="0660" and GROUP="dialout"',
    )


def check_serial_groups(user: UserIds) -> list[Finding]:
    """Membership of the groups serial devices belong to (even with no board plugged in)."""
    out = []
    for group in _SERIAL_GROUPS:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            continue  # this distribution has no such group
        if user.uid == 0 or gid in user.gids:
            out.append(Finding("ok", f"{user.name} is in group {group}"))
        elif _listed_in(group, user.name):
            what = f"group {group} lists {user.name}, this login does not have it"
            out.append(Finding("warn", what, "log out and in again"))
        else:
            what = f"{user.name} is not in group {group}; boards' ports are"
            fix = f"`sudo usermod -aG {group} {user.name}`, then log in again"
            out.append(Finding("warn", what, fix))
    return out


def port_holders(ports: Iterable[str], proc: Path = Path("/proc")) -> dict[str, list[int]]:
    """Process ids that have each port open (their ``/proc/PID/fd`` links), by port."""
    wanted = {os.path.realpath(p): p for p in ports}
    found: dict[str, list[int]] = {}
    for entry in proc.iterdir() if wanted else ():
        if not entry.name.isdigit():
            continue
        try:
            links = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's process
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target in wanted:
                found.setdefault(wanted[target], []).append(int(entry.name))
    return found


def _comm(pid: int, proc: Path) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def check_holders(
    ports: Iterable[str], proc: Path = Path("/proc"), ignore: Iterable[int] = ()
) -> list[Finding]:
    """A finding for each port another program holds open (a board has one reader)."""
    skip = {os.getpid(), *ignore}
    out = []
    for port, pids in sorted(port_holders(ports, proc).items()):
        for pid in sorted(set(pids) - skip):
            what = f"{port} is open in process {pid} ({_comm(pid, proc)})"
            fix = "close that program (a serial terminal, IDE or another ioconnect)"
            out.append(Finding("block", what, fix))
    return out


def check_grabbers(proc: Path = Path("/proc")) -> list[Finding]:
    """Programs that open new serial ports on their own."""
    out = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            name = _comm(int(entry.name), proc)
            if name in _GRABBERS:
                out.append(Finding("warn", f"{name} runs (pid {entry.name})", _GRABBERS[name]))
    return out


def _unescape(field: str) -> str:
    # /proc/mounts writes a space as \040, a tab \011, a newline \012, a backslash \134.
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def check_drives(proc: Path = Path("/proc")) -> list[Finding]:
    """RPI-RP2 drives (a Pico in BOOTSEL): a UF2 copy needs them writable."""
    try:
        text = (proc / "mounts").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        where, options = _unescape(parts[1]), parts[3].split(",")
        if os.path.basename(where.rstrip("/")) != "RPI-RP2":
            continue
        if "ro" in options:
            out.append(Finding("block", f"Pico drive {where} is mounted read-only",
                               f"`sudo mount -o remount,rw {where}` (a read-only FAT: unplug, "
                               "hold BOOTSEL, plug in again)"))  # fmt: skip
        else:
            out.append(Finding("ok", f"Pico drive {where} is writable (board in BOOTSEL)"))
    return out


def check_tools() -> list[Finding]:
    """esptool and mpremote: installed, and new enough."""
    out = []
    for name, (major, used_for) in _TOOLS.items():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(Finding("warn", f"{name} is not installed (needed for {used_for})",
                               f"`pip install '{name}>={major}'`"))  # fmt: skip
            continue
        head = version.split(".")[0]
        if head.isdigit() and int(head) < major:
            out.append(Finding("warn", f"{name} {version} is older than {major}",
                               f"`pip install -U '{name}>={major}'`"))  # fmt: skip
        else:
            out.append(Finding("ok", f"{name} {version}"))
    return out


def diagnose(*, proc: Path = Path("/proc"), user: UserIds | None = None) -> list[Finding]:
    """Every check, in the order a user would fix them.

    Args:
        proc: the ``/proc`` tree to read (processes, mounts).
        user: whose access to check (default: this process's user and login groups).
    """
    from ioconnect_sim.registry import list_running

    from .ports import list_ports

    user = user or UserIds.current()
    findings: list[Finding] = []
    usb = [p for p in list_ports(include_virtual=False)]
    if not usb:
        findings.append(Finding("warn", "no USB serial port found",
                                "plug the board in with a data (not charge-only) cable; "
                                "`ioconnect ports` lists what is seen"))  # fmt: skip
    for p in usb:
        findings.append(check_port_access(p.port, user))
    findings += check_serial_groups(user)
    running = list_running()
    for rec in running:
        findings.append(Finding("ok", f"virtual board {rec.name} ({rec.board}) on {rec.port}"))
    supervisors = [rec.pid for rec in running]  # a virtual board's own process holds its pty
    findings += check_holders([p.port for p in usb] + [r.port for r in running], proc, supervisors)
    findings += check_grabbers(proc)
    findings += check_drives(proc)
    findings += check_tools()
    return findings
