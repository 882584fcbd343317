"""Board definitions (boards/*.toml) and their typed loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ioconnect_host.boards import (
    Board,
    BoardError,
    boards_dir,
    boards_for_usb,
    list_boards,
    load_board,
)
from ioconnect_host.errors import IoconnectError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REQUIRED = ["esp32", "esp32-s3", "esp32-c3", "rpi-pico", "rpi-pico-w"]
ROOT = Path(__file__).resolve().parent.parent


def test_all_boards_load() -> None:
    names = list_boards()
    assert set(REQUIRED) <= set(names)
    for name in names:
        board = load_board(name)
        assert board.name == name
        assert board.heap == f"{board.heap_kib}K"
        fs = board.filesystem
        assert fs.offset + fs.size <= board.flash.size
        # vm_config goes into sim.json: it must survive JSON unchanged.
        cfg = board.vm_config()
        assert json.loads(json.dumps(cfg)) == cfg
        for key in ("board_name", "mcu_name", "heap_bytes", "filesystem", "network"):
            assert key in cfg
        for key in ("sensors", "pins", "i2c", "chip", "port", "name"):
            assert key in cfg
        assert cfg["heap_bytes"] == board.heap_kib * 1024


def test_published_facts() -> None:
    # Values from MicroPython's board configs, partition tables and esptool docs.
    esp32 = load_board("esp32")
    assert (esp32.flash.firmware_offset, esp32.flash.firmware_format) == (0x1000, "bin")
    assert (esp32.filesystem.offset, esp32.filesystem.size) == (0x200000, 0x200000)
    assert (esp32.board_name, esp32.mcu_name, esp32.heap) == (
        "Generic ESP32 module",
        "ESP32",
        "96K",
    )
    assert esp32.sensors[0].source == "esp32_raw_temperature"
    for name in ("esp32-s3", "esp32-c3"):
        board = load_board(name)
        assert board.flash.firmware_offset == 0
        assert board.sensors[0].source == "esp32_mcu_temperature"
    pico, pico_w = load_board("rpi-pico"), load_board("rpi-pico-w")
    for board, fs_kib in ((pico, 1408), (pico_w, 848)):
        assert board.flash.firmware_format == "uf2"
        assert board.flash.image_base == 0x10000000
        assert board.flash.uf2_family == 0xE48BFF56
        assert board.filesystem.size == fs_kib * 1024
        assert board.filesystem.offset + board.filesystem.size == 2 * 1024 * 1024
        assert board.unique_id_bytes == 8
        assert board.sensors[0].source == "rp2_adc4"
    assert pico.heap == "200K" and pico.network == "none" and pico_w.network == "wifi"
    assert pico.pins.named["LED"] == 25 and pico_w.pins.named["LED"] == "WL_GPIO0"


def test_usb_lookup_and_preload() -> None:
    assert {b.name for b in boards_for_usb(0x2E8A, 0x0005)} == {"rpi-pico", "rpi-pico-w"}
    assert "esp32" in {b.name for b in boards_for_usb(0x10C4, 0xEA60)}
    assert boards_for_usb(0x1234, 0x5678) == []
    for name in list_boards():
        board = load_board(name)
        pre = board.sim_preload()
        assert ("network" in pre) == (board.network == "wifi")
        assert ("esp32" in pre) == (board.port == "esp32")
        assert "machine" in pre


def test_unknown_board_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(BoardError, match="unknown board 'esp8266'") as exc:
        load_board("esp8266")
    assert "esp32" in str(exc.value)  # the hint lists the known boards
    assert isinstance(exc.value, IoconnectError)
    bad = tmp_path / "broken.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(BoardError, match=r"^.*broken\.toml: invalid TOML"):
        load_board(bad)


# -- validation messages ------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    items = ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items())
    return "{ " + items + " }" if items else "{}"


def _dump(doc: dict[str, Any]) -> str:
    """A TOML document with one line per top-level key (inline tables)."""
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in doc.items())


def _original() -> dict[str, Any]:
    return tomllib.loads((boards_dir() / "esp32.toml").read_text())


def _leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """(field path as the loader names it, value) for every scalar or int array."""
    if isinstance(node, dict):
        out = []
        for k, v in node.items():
            out += _leaves(v, f"{path}.{k}" if path else k)
        return out
    if isinstance(node, list) and node and isinstance(node[0], dict):
        out = []
        for i, v in enumerate(node):
            out += _leaves(v, f"{path}[{i}]")
        return out
    return [(path, node)]


def _set(doc: Any, path: str, value: Any, delete: bool = False) -> None:
    parts = path.replace("[", ".[").split(".")
    node = doc
    for p in parts[:-1]:
        node = node[int(p[1:-1])] if p.startswith("[") else node[p]
    last = parts[-1]
    if delete:
        del node[last]
    else:
        node[last] = value


LEAVES = [p for p, _ in _leaves(_original()) if not p.startswith("pins.named.")]
# Tables whose keys are names chosen by the board file, not fields.
FREE_TABLES = ("sensors", "pins.named")


def _load_mutated(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "esp32.toml"
    path.write_text(_dump(doc))
    with pytest.raises(BoardError) as exc:
        load_board(path)
    return str(exc.value)


def test_dumper_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "esp32.toml"
    path.write_text(_dump(_original()))
    assert load_board(path).vm_config() == load_board("esp32").vm_config()


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(LEAVES), how=st.sampled_from(["mistype", "missing"]))
def test_each_field_error_names_file_and_field(
    tmp_path_factory: pytest.TempPathFactory, path: str, how: str
) -> None:
    doc = _original()
    value = dict(_leaves(doc))[path]
    if how == "missing":
        _set(doc, path, None, delete=True)
        expected = "missing"
    else:
        # A value of a type the field never takes.
        wrong: Any = ["x"] if isinstance(value, (str, int)) else "x"
        if isinstance(value, list):
            wrong = "x"
        _set(doc, path, wrong)
        expected = "expected"
    tmp = tmp_path_factory.mktemp("b")
    msg = _load_mutated(tmp, doc)
    label = str(tmp / "esp32.toml")
    assert msg.startswith(f"{label}: field '{path}': "), msg
    assert expected in msg


@pytest.mark.parametrize(
    "table", ["", "flash", "filesystem", "pins", "usb[0]", "i2c[0]", "sensors.temperature"]
)
def test_unknown_field_is_named(tmp_path: Path, table: str) -> None:
    doc = _original()
    if table:
        _set(doc, f"{table}.colour", "blue")
    else:
        doc["colour"] = "blue"
    field = f"{table}.colour" if table else "colour"
    msg = _load_mutated(tmp_path, doc)
    assert msg == f"{tmp_path / 'esp32.toml'}: field '{field}': unknown field"


@pytest.mark.parametrize(
    ("path", "value", "field", "why"),
    [
        ("network", "lte", "network", "not one of"),
        ("heap_kib", True, "heap_kib", "expected int"),
        ("flash.size", 3000000, "flash.size", "not a power of two"),
        ("filesystem.size", 0x300000, "filesystem.size", "past the flash size"),
        ("filesystem.offset", 0x200100, "filesystem.offset", "multiples of block_size"),
        ("usb[1].vid", 0x10000, "usb[1].vid", "out of range"),
        ("i2c[0].address", 0x80, "i2c[0].address", "out of range"),
        ("pins.led", 40, "pins.led", "out of range"),
        ("pins.led", "LED", "pins.led", "not in pins.named"),
        ("mac_oui", "24-0a-c4", "mac_oui", "xx:xx:xx"),
        ("name", "esp32x", "name", "does not match the file name"),
        ("unique_id_bytes", 7, "unique_id_bytes", "expected 6"),
        ("flash.uf2_family", 0xE48BFF56, "flash.uf2_family", "must be 0"),
        ("sensors.temperature.source", "thermistor", "sensors.temperature.source", "not one of"),
    ],
)
def test_semantic_errors(tmp_path: Path, path: str, value: Any, field: str, why: str) -> None:
    doc = _original()
    _set(doc, path, value)
    msg = _load_mutated(tmp_path, doc)
    assert msg.startswith(f"{tmp_path / 'esp32.toml'}: field '{field}': "), msg
    assert why in msg


def test_shipped_label_names_boards_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Errors in a shipped file say "boards/<name>.toml", as the user knows it.
    doc = _original()
    _set(doc, "flash.size", "4MB")
    (tmp_path / "esp32.toml").write_text(_dump(doc))
    monkeypatch.setattr("ioconnect_host.boards.boards_dir", lambda: tmp_path)
    with pytest.raises(BoardError) as exc:
        load_board("esp32")
    assert str(exc.value) == "boards/esp32.toml: field 'flash.size': expected int"


def test_loader_is_mypy_strict_clean(tmp_path: Path) -> None:
    # The loader's types are precise enough to catch a caller's mistake.
    good = tmp_path / "good.py"
    good.write_text(
        "from ioconnect_host.boards import load_board\n"
        "b = load_board('esp32')\n"
        "size: int = b.flash.size\n"
        "heap: str = b.heap\n"
        "cfg: dict[str, object] = b.vm_config()\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from ioconnect_host.boards import load_board\nsize: str = load_board('esp32').flash.size\n"
    )
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary"]
    cmd += ["--cache-dir", str(ROOT / ".mypy_cache"), "--python-version", "3.10"]
    env = dict(os.environ, MYPYPATH=str(ROOT / "host_tools"))
    run = {"capture_output": True, "text": True, "cwd": ROOT, "env": env, "check": False}
    done = subprocess.run([*cmd, str(good)], **run)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([*cmd, str(bad)], **run)  # type: ignore[call-overload]
    assert done.returncode == 1 and "Incompatible types" in done.stdout, done.stdout


def test_board_is_frozen() -> None:
    board: Board = load_board("rpi-pico")
    with pytest.raises(AttributeError):
        board.heap_kib = 1  # type: ignore[misc]
