"""``ioconnect deploy`` on virtual boards over their pty: a sync, not a copy.

First deploy to a blank board, no-change and one-module re-deploys, ``--delete``
(owned files only), ``--dry-run``, sources vs .mpy, power cuts at several points
(the board then boots the old or the new firmware, never a mix, and a re-deploy
finishes the job), and one-line errors for a wrong or missing board.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import interrupt_when
from ioconnect_host.cli import main
from ioconnect_host.deploy import (
    MANIFEST,
    DeployError,
    DeployResult,
    _commit,
    _stage,
    deploy,
    firmware_files,
    mpy_target,
    read_manifest,
)
from ioconnect_host.errors import IoconnectError
from ioconnect_host.firmware import host_mpy_arch
from ioconnect_host.launcher import main as launcher_main
from ioconnect_host.paths import firmware_dir
from ioconnect_host.ports import select_port
from ioconnect_host.session import open_session
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard

ARCH = host_mpy_arch()


@pytest.fixture
def blank(tmp_path: Path) -> Iterator[VirtualBoard]:
    """An esp32 board whose flash holds no firmware (as from the factory)."""
    with start_board(
        "esp32", name="deploy-blank", state_dir=tmp_path / "state", install_firmware=False
    ) as vb:
        yield vb


def flash(vb: VirtualBoard) -> Path:
    return vb.config.flash_dir


def variant(tmp_path: Path, name: str, *, version: str, modules: list[str]) -> Path:
    """A copy of the shipped firmware with ``VERSION`` and ``modules`` changed."""
    src = tmp_path / name
    shutil.copytree(firmware_dir(), src, ignore=shutil.ignore_patterns("__pycache__"))
    init = src / "ioconnect" / "__init__.py"
    init.write_text(init.read_text().replace('VERSION = "0.1.0"', f'VERSION = "{version}"'))
    for m in modules:
        path = src / "ioconnect" / f"{m}.py"
        path.write_text(path.read_text() + f"\n_DEPLOY_VARIANT = {version!r}\n")
    return src


def expected(source: Path | None) -> dict[str, str]:
    return {
        f.path: hashlib.sha256(f.data).hexdigest()
        for f in firmware_files(mpy_arch=ARCH, source=source)
    }


def on_flash(vb: VirtualBoard, paths: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in paths:
        f = flash(vb) / p
        out[p] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None
    return out


def firmware_version(vb: VirtualBoard) -> str:
    with open_session(select_port(vb.port)) as s:
        version: str = s.info()["firmware"]
    return version


def test_first_deploy_to_blank_board_then_no_change(blank: VirtualBoard) -> None:
    assert sorted(p.name for p in flash(blank).iterdir()) == []
    seen: list[tuple[int, int]] = []
    with open_session(select_port(blank.port)) as s:
        first = deploy(s, progress=lambda done, total: seen.append((done, total)))
        assert s.info()["firmware"] == "0.1.0"  # the reset board runs the new firmware
    want = expected(None)
    assert first.files_sent == [*want, MANIFEST]
    assert first.files_skipped == []
    manifest = (flash(blank) / MANIFEST).read_bytes()
    assert first.bytes_sent == sum(len(f.data) for f in firmware_files(mpy_arch=ARCH)) + len(
        manifest
    )
    assert on_flash(blank, list(want)) == want
    assert read_manifest(manifest) == want
    assert manifest.startswith(f"# ioconnect deploy manifest 1, mpy_arch {ARCH}\n".encode())
    assert not (flash(blank) / ".deploy").exists()
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and seen[-1] == (first.bytes_sent, first.bytes_sent)

    boots = blank.boots
    with open_session(select_port(blank.port)) as s:
        again = deploy(s)
    assert (again.files_sent, again.bytes_sent, again.files_deleted) == ([], 0, [])
    assert sorted(again.files_skipped) == sorted(want)
    assert blank.boots == boots  # nothing changed: no reset either


@pytest.mark.parametrize("change", ["edited", "removed", "shadowed"])
def test_changes_made_behind_our_back_are_found(blank: VirtualBoard, change: str) -> None:
    # The manifest still says all is well: the board's files themselves are hashed.
    with open_session(select_port(blank.port)) as s:
        deploy(s)
    did = flash(blank) / "ioconnect" / "did.mpy"
    if change == "edited":
        did.write_bytes(did.read_bytes() + b"\0")
    elif change == "removed":
        did.unlink()
    else:  # a source beside the module: the board would import it instead
        (flash(blank) / "ioconnect" / "did.py").write_text("raise ImportError('shadow')\n")
    with open_session(select_port(blank.port)) as s:
        r = deploy(s)
    if change == "shadowed":
        assert (r.files_sent, r.files_deleted) == ([MANIFEST], ["ioconnect/did.py"])
    else:
        assert r.files_sent == ["ioconnect/did.mpy", MANIFEST]
    assert on_flash(blank, list(expected(None))) == expected(None)
    assert not (flash(blank) / "ioconnect" / "did.py").exists()


def test_one_changed_module_sends_just_it(blank: VirtualBoard, tmp_path: Path) -> None:
    with open_session(select_port(blank.port)) as s:
        deploy(s)
        src = variant(tmp_path, "v2", version="0.1.0", modules=["did"])
        r = deploy(s, source=src)
    did = next(
        f for f in firmware_files(mpy_arch=ARCH, source=src) if f.path == "ioconnect/did.mpy"
    )
    manifest = (flash(blank) / MANIFEST).read_bytes()
    assert r.files_sent == ["ioconnect/did.mpy", MANIFEST]
    assert r.bytes_sent == len(did.data) + len(manifest)
    assert on_flash(blank, list(expected(src))) == expected(src)


def test_delete_removes_stale_owned_file_and_keeps_user_files(
    blank: VirtualBoard, tmp_path: Path
) -> None:
    src = variant(tmp_path, "extra", version="0.1.0", modules=[])
    (src / "ioconnect" / "extra.py").write_text("X = 1\n")
    with open_session(select_port(blank.port)) as s:
        deploy(s, source=src)
        s.put_file("notes.txt", b"mine")
        s.put_file("ioconnect/user.txt", b"also mine")
        kept = deploy(s)  # without --delete: extra.mpy stays, and stays ours
        assert kept.files_deleted == [] and kept.files_sent == []
        assert (flash(blank) / "ioconnect/extra.mpy").is_file()
        gone = deploy(s, delete=True)
    assert gone.files_deleted == ["ioconnect/extra.mpy"]
    assert gone.files_sent == [MANIFEST]
    assert not (flash(blank) / "ioconnect/extra.mpy").exists()
    assert (flash(blank) / "notes.txt").read_bytes() == b"mine"
    assert (flash(blank) / "ioconnect/user.txt").read_bytes() == b"also mine"
    assert read_manifest((flash(blank) / MANIFEST).read_bytes()) == expected(None)


def test_dry_run_changes_nothing(blank: VirtualBoard, tmp_path: Path) -> None:
    with open_session(select_port(blank.port)) as s:
        empty = deploy(s, dry_run=True)
        assert sorted(p.name for p in flash(blank).iterdir()) == []
        assert empty.dry_run and empty.files_sent == [*expected(None), MANIFEST]
        deploy(s)
        before = {p: p.read_bytes() for p in flash(blank).rglob("*") if p.is_file()}
        boots = blank.boots
        src = variant(tmp_path, "v2", version="0.2.0", modules=["agent"])
        r = deploy(s, source=src, dry_run=True)
    after = {p: p.read_bytes() for p in flash(blank).rglob("*") if p.is_file()}
    assert r.files_sent == ["ioconnect/__init__.mpy", "ioconnect/agent.mpy", MANIFEST]
    assert after == before and blank.boots == boots


def test_sources_replace_mpy_and_back(blank: VirtualBoard) -> None:
    with open_session(select_port(blank.port)) as s:
        deploy(s)
        src = deploy(s, mpy=False)
        assert src.mpy_arch is None
        assert "ioconnect/agent.py" in src.files_sent
        assert "ioconnect/agent.mpy" in src.files_deleted  # it would shadow nothing, but is dead
        assert s.info()["firmware"] == "0.1.0"
        assert not list(flash(blank).glob("ioconnect/*.mpy"))
        back = deploy(s)
        # The sources would be imported before the .mpy: always removed.
        assert "ioconnect/agent.py" in back.files_deleted
        assert s.info()["firmware"] == "0.1.0"
    assert not list(flash(blank).glob("ioconnect/*.py"))


def _state(vb: VirtualBoard, old: dict[str, str], new: dict[str, str]) -> str:
    """Which firmware the flash holds ("old"/"new"); every file and the manifest agree."""
    assert not (flash(vb) / ".deploy").exists()
    now = on_flash(vb, list(old))
    manifest = flash(vb) / MANIFEST
    listed = read_manifest(manifest.read_bytes()) if manifest.exists() else None
    if now == new:
        assert listed == new
        return "new"
    assert now == old, f"a mix of firmwares: {now}"
    assert listed == old
    return "old"


@pytest.mark.parametrize(
    ("cut_at", "hold", "want"),
    [
        (0.05, False, None),  # the cut lands while later chunks are on the wire
        (0.5, False, None),
        (0.95, False, None),
        (1.0, True, "old"),  # everything staged, no plan yet
        ("committed", True, "new"),  # plan written and applied, reset not done
    ],
)
def test_power_cut_mid_deploy_boots_old_or_new_then_redeploy(
    blank: VirtualBoard, tmp_path: Path, cut_at: float | str, hold: bool, want: str | None
) -> None:
    with open_session(select_port(blank.port)) as s:
        deploy(s)
    old = expected(None)
    src = variant(tmp_path, "v2", version="0.2.0", modules=["agent", "did", "keys", "sha512"])
    new = expected(src)
    cut, off = threading.Event(), threading.Event()

    def cutter() -> None:
        if cut.wait(30):
            blank.power_cut()  # from another thread, as a user pulls the cable
            off.set()

    def trigger() -> None:
        cut.set()
        if hold:
            off.wait(60)  # keep the host here until the board is off

    def progress(done: int, total: int) -> None:
        if isinstance(cut_at, float) and done >= cut_at * total:
            trigger()

    t = threading.Thread(target=cutter)
    t.start()
    try:
        with open_session(select_port(blank.port)) as s:
            if cut_at == "committed":
                reset = s.transport.enter_raw_repl

                def cut_first(**kw: float | bool) -> None:
                    trigger()
                    reset(**kw)  # type: ignore[arg-type]

                s.transport.enter_raw_repl = cut_first  # type: ignore[method-assign]
            try:
                deploy(s, source=src, progress=progress)
            except IoconnectError:
                pass  # the link died with the board (the reset after a commit survives a cut)
            else:
                assert cut_at == "committed"
    finally:
        cut.set()
        t.join()
    # The board booted again by itself; the agent answers with one whole firmware.
    version = firmware_version(blank)
    state = _state(blank, old, new)
    assert want is None or state == want
    assert version == {"old": "0.1.0", "new": "0.2.0"}[state]
    with open_session(select_port(blank.port)) as s:
        r = deploy(s, source=src)
        assert s.info()["firmware"] == "0.2.0"
    assert _state(blank, old, new) == "new"
    assert r.pending is None
    changed = [p for p in new if new[p] != old[p]]
    assert r.files_sent == ([] if state == "new" else [*changed, MANIFEST])


def test_cut_mid_rename_boot_finishes_the_switch(blank: VirtualBoard, tmp_path: Path) -> None:
    with open_session(select_port(blank.port)) as s:
        deploy(s)
    old = expected(None)
    src = variant(tmp_path, "v2", version="0.2.0", modules=["agent", "did", "keys"])
    new = expected(src)
    files = firmware_files(mpy_arch=ARCH, source=src)
    send = [f for f in files if new[f.path] != old[f.path]]
    assert len(send) == 4
    with open_session(select_port(blank.port)) as s:
        _stage(s, send, [], lambda done, total: None)
        _commit(s, send, [], limit=2)  # the plan is written, 2 of 4 renamed: a mix on flash
    assert on_flash(blank, list(old)) not in (old, new)
    blank.power_cut()
    assert firmware_version(blank) == "0.2.0"  # boot.py finished the renames first
    assert on_flash(blank, list(new)) == new
    assert not (flash(blank) / ".deploy").exists()


def test_staged_but_not_committed_is_dropped(blank: VirtualBoard, tmp_path: Path) -> None:
    with open_session(select_port(blank.port)) as s:
        deploy(s)
        src = variant(tmp_path, "v2", version="0.2.0", modules=["agent"])
        send = [f for f in firmware_files(mpy_arch=ARCH, source=src) if f.path.endswith(".mpy")]
        _stage(s, send, [], lambda done, total: None)
    assert (flash(blank) / ".deploy").is_dir()
    blank.power_cut()
    assert firmware_version(blank) == "0.1.0"
    assert not (flash(blank) / ".deploy").exists()
    assert on_flash(blank, list(expected(None))) == expected(None)


def test_cli_json_and_one_line_errors(
    blank: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy", "--port", blank.port, "--json", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True and dry["files_sent"][-1] == MANIFEST
    assert main(["deploy", "--port", blank.port, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["files_sent"] == dry["files_sent"]
    assert done["bytes_sent"] == dry["bytes_sent"] > 300_000
    # Reset so that main.py runs the new firmware (not left at the REPL prompt).
    assert done["reset_said"] == "ioconnect 0.1.0 identity: none"
    log = blank.config.state_dir / "console.log"
    deadline = time.monotonic() + 60
    while "identity: none" not in log.read_text(errors="replace").rsplit("soft reboot", 1)[-1]:
        assert time.monotonic() < deadline, "main.py did not run after the deploy"
        time.sleep(0.05)
    assert dry["reset_said"] is None
    assert main(["deploy", "--port", blank.port, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reset_said"] is None  # nothing changed: no reset
    assert (again["files_sent"], again["bytes_sent"], again["files_skipped"]) == (
        [],
        0,
        len(expected(None)),
    )

    missing = str(tmp_path / "ttyACM9")
    assert main(["deploy", "--port", missing]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ioconnect: error: no such serial port: {missing}")
    assert main(["deploy", "--port", "sim:no-such-board"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ioconnect: error: ") and "no-such-board" in err[0]


def test_summary_counts_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    from ioconnect_host.cli_deploy import _summary

    _summary(DeployResult(files_sent=[MANIFEST], bytes_sent=1, seconds=0.5))
    assert capsys.readouterr().out.splitlines()[0] == (
        "sent 1 file (1 byte), skipped 0, deleted 0, in 0.50 s"
    )
    _summary(DeployResult(dry_run=True, files_sent=["a.mpy", MANIFEST], bytes_sent=70))
    assert capsys.readouterr().out.startswith("would send 2 files (70 bytes), skipped 0,")


def test_wrong_board_mpy_is_refused() -> None:
    sample = next(
        f.data for f in firmware_files(mpy_arch="xtensawin") if f.path.endswith("keccak.mpy")
    )
    esp32 = 6 | (3 << 8) | (10 << 10)  # what an ESP32 with MicroPython 1.29 reports
    assert mpy_target(esp32, sample) == "xtensawin"
    assert mpy_target(6 | (3 << 8) | (4 << 10), None) == "armv6m"
    with pytest.raises(DeployError, match=r"loads \.mpy version 5\.2, mpy-cross makes 6\.3"):
        mpy_target(5 | (2 << 8) | (10 << 10), sample)
    with pytest.raises(DeployError, match="no native code"):
        mpy_target(6 | (3 << 8), sample)
    with pytest.raises(DeployError, match=r"loads no \.mpy"):
        mpy_target(None, sample)


def test_provision_deploys_a_blank_board(
    blank: VirtualBoard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["provision", "--port", blank.port, "--project-id", "42", "--json"]
    argv += ["--out", str(tmp_path / "b.json"), "--inventory", str(tmp_path / "inv.sqlite3")]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["firmware"] == "0.1.0" and result["created"] is True
    assert on_flash(blank, list(expected(None))) == expected(None)
    assert read_manifest((flash(blank) / MANIFEST).read_bytes()) == expected(None)


def test_launcher_runs_deploy_without_the_other_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = (
        "import sys\n"
        "from ioconnect_host.launcher import main\n"
        "print(main(['deploy', '--port', sys.argv[1]]), 'ioconnect_host.cli' in sys.modules)\n"
    )
    missing = str(tmp_path / "ttyUSB7")
    done = subprocess.run(
        [sys.executable, "-c", code, missing], capture_output=True, text=True, check=True
    )
    assert done.stdout == "1 False\n"
    assert done.stderr.startswith(f"ioconnect: error: no such serial port: {missing}")
    assert done.stderr.count("\n") == 1
    assert launcher_main(["--version"]) == 0  # everything else: the full CLI
    assert capsys.readouterr().out == "ioconnect 0.1.0\n"


def test_deploy_to_a_fragmented_heap_sends_smaller_statements(blank: VirtualBoard) -> None:
    # Blocks of 4.5 KB, every other one freed: no room for a 4 KB chunk's text
    # (5.5 KB of base64), which the board's paste buffer needs in one block.
    fragment = (
        "import gc\n_junk=[]\ntry:\n while True:_junk.append(bytearray(4500))\n"
        "except MemoryError:pass\n_junk=_junk[::2]\ngc.collect()\n"
    )
    with open_session(select_port(blank.port)) as s:
        s.exec(fragment)
        r = deploy(s)
        assert s.info()["firmware"] == "0.1.0"
    assert r.files_sent == [*expected(None), MANIFEST]
    assert on_flash(blank, list(expected(None))) == expected(None)


def test_ctrl_c_mid_deploy_is_one_line_and_leaves_the_port_usable(tmp_path: Path) -> None:
    # At the wire's speed (115200 baud) a first deploy takes about 40 s: time to
    # press Ctrl-C (SIGINT, as a terminal sends it) once files are being staged.
    with start_board(
        "esp32",
        name="deploy-ctrl-c",
        state_dir=tmp_path / "state",
        install_firmware=False,
        fast=False,
    ) as vb:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ioconnect_host.launcher", "deploy", "--port", vb.port],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = interrupt_when(
            proc, (flash(vb) / ".deploy").exists, "deploy staging its files", 120, wait=60
        )
        assert proc.returncode == 130, err
        assert err == (
            "ioconnect: deploy interrupted: the board boots its old firmware or the "
            "new one whole, never a mix; run deploy again to finish\n"
        )
        assert out == ""
        assert not (flash(vb) / MANIFEST).exists()  # nothing was switched
        with SerialTransport(vb.port) as t:  # the next tool gets a working REPL
            assert t.exec("print(6 * 7)") == b"42\r\n"


def test_launcher_deploy_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # `ioconnect deploy` runs through its own small parser: its usage errors must read
    # as every other command's (one line, exit 2), not argparse's usage block.
    for argv, said in (
        (["deploy", "--no-such"], "unrecognized arguments: --no-such"),
        (["deploy", "--port"], "argument -p/--port: expected one argument"),
    ):
        assert launcher_main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert err.startswith(f"ioconnect: error: deploy: {said} ("), err


def test_deploy_into_a_closed_pipe_stops_quietly(blank: VirtualBoard) -> None:
    # `ioconnect deploy --dry-run | head -1`: the reader is gone before the list is
    # printed. As Unix tools do (and every other command): exit 1, no traceback.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ioconnect_host.launcher", "deploy", "--dry-run",
             "--port", blank.port],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (1, "")
