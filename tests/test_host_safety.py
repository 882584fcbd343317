"""Host safety: caches built across processes, private files, bounded logs and buffers.

Real processes throughout: builds race in separate Python processes, boards run
the MicroPython VM behind a pty.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ioconnect_host.errors import VMError
from ioconnect_host.paths import firmware_dir
from ioconnect_host.vm import run_script
from ioconnect_sim.supervisor import compile_vm_lib, vm_dir

# A process that builds the firmware cache and reports every file it was given.
_BUILD_AND_LIST = """
import hashlib, json, sys
from ioconnect_host.firmware import host_build
sys.stdin.readline()  # "go"
out = host_build()
files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
digest = hashlib.sha256(b"".join((out / f).read_bytes() for f in files)).hexdigest()
print(json.dumps({"files": files, "digest": digest}))
"""


def _expected_build_files() -> list[str]:
    src = firmware_dir()
    names = ["boot.py", "main.py"]
    names += [f"ioconnect/{p.stem}.mpy" for p in (src / "ioconnect").glob("*.py")]
    names += [f"ioconnect/tables/{p.name}" for p in (src / "ioconnect" / "tables").glob("*.bin")]
    return sorted(names)


def test_two_processes_building_the_firmware_cache_both_see_all_of_it(tmp_path: Path) -> None:
    env = dict(os.environ, IOCONNECT_HOME=str(tmp_path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD_AND_LIST],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    first, second = procs
    assert first.stdin and second.stdin
    first.stdin.write(b"go\n")
    first.stdin.close()
    # Freeze the first while it is writing modules, let the second build meanwhile.
    pattern = str(tmp_path / "cache" / "*" / "ioconnect" / "*.mpy")
    deadline = time.monotonic() + 60
    while not glob.glob(pattern, include_hidden=True):
        assert first.poll() is None and time.monotonic() < deadline
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second.stdin.write(b"go\n")
        second.stdin.close()
        second.wait(timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    results = []
    for proc in procs:
        proc.stdin = None  # closed above: communicate() only reads
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    want = _expected_build_files()
    assert len(want) > 15
    assert results[0]["files"] == want
    assert results[1]["files"] == want
    assert results[0]["digest"] == results[1]["digest"]
    # No temporary build is left behind.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")) == []


def test_vm_lib_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    dest = tmp_path / "vmlib"
    code = "import sys, pathlib\nfrom ioconnect_sim.supervisor import compile_vm_lib\n"
    code += "compile_vm_lib(pathlib.Path(sys.argv[1]))\n"
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], stderr=subprocess.PIPE)
    want = sorted(p.stem + ".mpy" for p in vm_dir().glob("*.py"))
    seen: list[str] = []
    while proc.poll() is None and not seen:
        # What a VM starting now would find on its import path.
        with contextlib.suppress(OSError):
            seen = sorted(p.name for p in dest.iterdir() if p.suffix == ".mpy")
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert seen in ([], want)  # [] only if the build finished between two looks
    assert sorted(p.name for p in dest.iterdir()) == want
    # A second call (another board of the fleet) reuses it without rebuilding.
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    assert compile_vm_lib(dest) == dest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_a_build_missing_a_module_is_an_error_not_a_compile_from_source(tmp_path: Path) -> None:
    # A build folder that lacks the package (half-written, or an old layout): the VM
    # must not quietly find the firmware's .py source instead.
    build = tmp_path / "build"
    build.mkdir()
    (build / "boot.py").write_bytes((firmware_dir() / "boot.py").read_bytes())
    with pytest.raises(VMError) as err:
        run_script("import ioconnect.did", fs_dir=tmp_path / "fs", extra_path=[build])
    assert "ImportError: no module named 'ioconnect" in str(err.value)
    # Without a build the shipped source is the path (device-code tools rely on it).
    src = run_script("import ioconnect.did\nprint('ok')", fs_dir=tmp_path / "fs")
    assert src.strip() == "ok"
