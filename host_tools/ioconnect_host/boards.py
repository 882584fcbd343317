"""Board definitions: one TOML file per supported board (``boards/*.toml``).

Host tools read them to flash and recognise boards (flash layout, USB ids); the
virtual board reads them to become that board (heap, pins, sensors, network).
Every file is validated on load: an unknown, missing or mistyped field raises
:class:`BoardError` naming the file and the field.

Example:
    >>> board = load_board("esp32")
    >>> board.heap, board.filesystem.offset
    ('96K', 2097152)
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from .errors import IoconnectError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "Board",
    "BoardError",
    "Filesystem",
    "Flash",
    "I2CBus",
    "I2CDevice",
    "Pins",
    "TemperatureSensor",
    "UsbId",
    "board_json",
    "boards_dir",
    "boards_for_usb",
    "list_boards",
    "load_board",
]

Port = Literal["esp32", "rp2"]
Network = Literal["wifi", "none"]
ImageFormat = Literal["bin", "uf2"]
UsbRole = Literal["serial", "bootloader"]
LedKind = Literal["gpio", "ws2812"]
TemperatureSource = Literal["esp32_raw_temperature", "esp32_mcu_temperature", "rp2_adc4"]
SensorModel = Literal["sht3x", "bme280"]
MpyArch = Literal["xtensawin", "armv6m", "rv32imc"]

_PORTS: tuple[Port, ...] = ("esp32", "rp2")
_NETWORKS: tuple[Network, ...] = ("wifi", "none")
_FORMATS: tuple[ImageFormat, ...] = ("bin", "uf2")
_ROLES: tuple[UsbRole, ...] = ("serial", "bootloader")
_LEDS: tuple[LedKind, ...] = ("gpio", "ws2812")
_SOURCES: tuple[TemperatureSource, ...] = (
    "esp32_raw_temperature",
    "esp32_mcu_temperature",
    "rp2_adc4",
)
_MODELS: tuple[SensorModel, ...] = ("sht3x", "bme280")
_ARCHES: tuple[MpyArch, ...] = ("xtensawin", "armv6m", "rv32imc")
_OUI = re.compile(r"^[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class BoardError(IoconnectError):
    """A board definition is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Flash:
    """Flash chip and where the firmware image goes."""

    size: int
    firmware_offset: int
    firmware_format: ImageFormat
    #: Address of flash offset 0 in the image (UF2 targets the XIP base).
    image_base: int
    #: UF2 family id (0 for esptool images).
    uf2_family: int


@dataclass(frozen=True)
class Filesystem:
    """The MicroPython filesystem partition (littlefs)."""

    offset: int
    size: int
    block_size: int


@dataclass(frozen=True)
class UsbId:
    """A USB vendor/product id under which the board shows up."""

    vid: int
    pid: int
    name: str
    role: UsbRole


@dataclass(frozen=True)
class I2CBus:
    """Default pins of one hardware I2C controller (``I2C(id)`` without pins)."""

    sda: int
    scl: int


@dataclass(frozen=True)
class Pins:
    """GPIO facts the firmware and the simulator rely on."""

    gpio_count: int
    #: Argument of ``machine.Pin`` that drives the on-board LED.
    led: int | str
    led_kind: LedKind
    #: Pin names accepted by ``machine.Pin("NAME")``: GPIO number or a chip pin name.
    named: Mapping[str, int | str]
    adc: tuple[int, ...]
    i2c: tuple[I2CBus, ...]


@dataclass(frozen=True)
class TemperatureSensor:
    """An on-chip temperature sensor and the signal the simulator gives it."""

    name: str
    source: TemperatureSource
    mean_c: float
    swing_c: float


@dataclass(frozen=True)
class I2CDevice:
    """An I2C sensor wired to the board (modelled by the simulator)."""

    name: str
    model: SensorModel
    bus: int
    address: int
    sda: int
    scl: int


#: USB full speed moves at most 19 bulk packets of 64 bytes per 1 ms frame (USB 2.0
#: spec 5.8.4): the ceiling of a native-USB CDC console (S3, C3, RP2040).
USB_FULL_SPEED_BULK_BYTES_PER_S = 19 * 64 * 1000


@dataclass(frozen=True)
class Console:
    """The line the REPL is on: a UART behind a USB bridge, or the chip's own USB."""

    link: Literal["uart", "usb"]
    baud: int  # UART only (0 on USB)

    @property
    def bytes_per_s(self) -> int:
        """Payload bytes per second the line carries (8N1: ten bits a byte on a UART)."""
        return self.baud // 10 if self.link == "uart" else USB_FULL_SPEED_BULK_BYTES_PER_S


@dataclass(frozen=True)
class Board:
    """One board definition, validated."""

    name: str
    chip: str
    port: Port
    platform: str
    mpy_arch: MpyArch  # mpy-cross -march for compiling the firmware for this chip
    board_name: str
    mcu_name: str
    heap_kib: int
    cpu_freq_hz: int
    network: Network
    unique_id_bytes: int
    mac_oui: str
    console: Console
    flash: Flash
    filesystem: Filesystem
    usb: tuple[UsbId, ...]
    pins: Pins
    sensors: tuple[TemperatureSensor, ...]
    i2c: tuple[I2CDevice, ...]
    source: Path

    @property
    def heap_bytes(self) -> int:
        return self.heap_kib * 1024

    @property
    def heap(self) -> str:
        """Heap budget as ``micropython -X heapsize=`` takes it, e.g. ``"96K"``."""
        return f"{self.heap_kib}K"

    def sim_preload(self) -> list[str]:
        """Hardware shims the virtual board imports before mounting its flash.

        ``network`` only on Wi-Fi boards and ``esp32`` only on the ESP32 port, so
        that importing them fails elsewhere as it does on the real board. The
        supervisor counts what these hold as the board's C code. On a board with
        I2C sensors, ``_machx`` (ADC, I2C, RTC) and ``_i2cdev`` (the sensor
        models) too: on silicon an I2C transfer allocates nothing but its result,
        so loading them mid-loop in the firmware's heap (1.3 KB at a time) would
        fail readings a real board takes. Elsewhere they load on first use.
        """
        mods = ["_sensors", "machine"]
        if self.i2c:
            mods += ["_machx", "_i2cdev"]
        if self.network == "wifi":
            mods += ["network", "socket"]
        if self.port == "esp32":
            mods.append("esp32")
        return mods

    def vm_config(self) -> dict[str, object]:
        """Plain JSON-able facts the virtual board needs (``sim.json`` "board")."""
        return {
            "name": self.name,
            "chip": self.chip,
            "port": self.port,
            "platform": self.platform,
            "board_name": self.board_name,
            "mcu_name": self.mcu_name,
            "heap_bytes": self.heap_bytes,
            "cpu_freq_hz": self.cpu_freq_hz,
            "network": self.network,
            "unique_id_bytes": self.unique_id_bytes,
            "mac_oui": self.mac_oui,
            "flash": {
                "size": self.flash.size,
                "firmware_offset": self.flash.firmware_offset,
                "firmware_format": self.flash.firmware_format,
                "image_base": self.flash.image_base,
                "uf2_family": self.flash.uf2_family,
            },
            "filesystem": {
                "offset": self.filesystem.offset,
                "size": self.filesystem.size,
                "block_size": self.filesystem.block_size,
            },
            "sensors": {
                s.name: {"source": s.source, "mean_c": s.mean_c, "swing_c": s.swing_c}
                for s in self.sensors
            },
            "pins": {
                "gpio_count": self.pins.gpio_count,
                "led": self.pins.led,
                "led_kind": self.pins.led_kind,
                "named": dict(self.pins.named),
                "adc": list(self.pins.adc),
                "i2c": [{"sda": b.sda, "scl": b.scl} for b in self.pins.i2c],
            },
            "i2c": [
                {
                    "name": d.name,
                    "model": d.model,
                    "bus": d.bus,
                    "address": d.address,
                    "sda": d.sda,
                    "scl": d.scl,
                }
                for d in self.i2c
            ],
        }


# -- locating the files ------------------------------------------------------


def boards_dir() -> Path:
    """The folder of the shipped board files (package data ``ioconnect_boards``)."""
    spec = importlib.util.find_spec("ioconnect_boards")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # A source checkout whose editable install predates boards/.
    here = Path(__file__).resolve().parents[2] / "boards"
    if here.is_dir():
        return here
    raise BoardError("board definitions not found", hint="reinstall ioconnect")


def list_boards() -> list[str]:
    """Names of the shipped boards, sorted, e.g. ``["esp32", "esp32-c3", ...]``."""
    return sorted(p.stem for p in boards_dir().glob("*.toml"))


def board_json(name_or_path: str | Path) -> bytes:
    """The board file as the device reads it (``board.json`` on its filesystem).

    The TOML is validated first (:func:`load_board`), then dumped as compact JSON
    with the same tables and keys, so the firmware sees the file a user edits.

    Example:
        >>> json.loads(board_json("esp32"))["i2c"][0]["model"]
        'sht3x'

    Raises:
        BoardError: unknown or invalid board definition.
    """
    board = load_board(name_or_path)
    with board.source.open("rb") as f:
        data = tomllib.load(f)
    return json.dumps(data, separators=(",", ":")).encode()


def load_board(name_or_path: str | Path) -> Board:
    """Load and validate a board definition.

    Args:
        name_or_path: a shipped board's name (``"esp32"``) or a path to a TOML file.

    Returns:
        The validated :class:`Board`.

    Raises:
        BoardError: unknown board, unreadable file, or an invalid field (the
            message names the file and the field).

    Example:
        >>> load_board("rpi-pico").pins.led
        'LED'
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text:
        path = Path(name_or_path)
        label = text
    else:
        path = boards_dir() / f"{text}.toml"
        label = f"boards/{text}.toml"
        if not path.is_file():
            known = ", ".join(list_boards())
            raise BoardError(f"unknown board {text!r}", hint=f"known boards: {known}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BoardError(f"{label}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{label}: invalid TOML: {exc}") from exc
    return _parse(data, label, path)


def boards_for_usb(vid: int, pid: int) -> list[Board]:
    """Shipped boards that can show up as USB ``vid:pid`` (a bridge may fit several)."""
    found = []
    for name in list_boards():
        board = load_board(name)
        if any(u.vid == vid and u.pid == pid for u in board.usb):
            found.append(board)
    return found


# -- validation --------------------------------------------------------------


class _Table:
    """Typed access to one TOML table; remembers which keys were read."""

    def __init__(self, data: Mapping[str, object], label: str, prefix: str) -> None:
        self.data = data
        self.label = label
        self.prefix = prefix
        self.used: set[str] = set()

    def error(self, key: str, what: str) -> BoardError:
        return BoardError(f"{self.label}: field '{self.prefix}{key}': {what}")

    def get(self, key: str) -> object:
        self.used.add(key)
        if key not in self.data:
            raise self.error(key, "missing")
        return self.data[key]

    def get_int(self, key: str, lo: int = 0, hi: int = 1 << 40) -> int:
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "expected int")
        if not lo <= value <= hi:
            raise self.error(key, f"{value} is out of range {lo}..{hi}")
        return value

    def get_float(self, key: str) -> float:
        value = self.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.error(key, "expected number")
        return float(value)

    def get_str(self, key: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            raise self.error(key, "expected string")
        if pattern is not None and not pattern.match(value):
            raise self.error(key, f"{value!r} does not match {pattern.pattern}")
        return value

    def get_choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.get_str(key)
        if value not in options:
            raise self.error(key, f"{value!r} is not one of {', '.join(options)}")
        return value

    def get_table(self, key: str) -> _Table:
        value = self.get(key)
        if not isinstance(value, dict):
            raise self.error(key, "expected table")
        return _Table(value, self.label, f"{self.prefix}{key}.")

    def get_tables(self, key: str, allow_empty: bool = True) -> list[_Table]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, "expected array of tables")
        if not value and not allow_empty:
            raise self.error(key, "must not be empty")
        items = cast("list[dict[str, object]]", value)
        return [_Table(v, self.label, f"{self.prefix}{key}[{i}].") for i, v in enumerate(items)]

    def get_ints(self, key: str, lo: int, hi: int) -> tuple[int, ...]:
        value = self.get(key)
        if not isinstance(value, list):
            raise self.error(key, "expected array of int")
        for v in value:
            if not isinstance(v, int) or isinstance(v, bool):
                raise self.error(key, "expected array of int")
            if not lo <= v <= hi:
                raise self.error(key, f"{v} is out of range {lo}..{hi}")
        return tuple(cast("list[int]", value))

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise self.error(extra[0], "unknown field")


def _parse(data: Mapping[str, object], label: str, path: Path) -> Board:
    top = _Table(data, label, "")
    name = top.get_str("name", _NAME)
    if name != path.stem:
        raise top.error("name", f"{name!r} does not match the file name {path.stem!r}")
    chip = top.get_str("chip", _NAME)
    port = cast(Port, top.get_choice("port", _PORTS))
    platform = top.get_str("platform", _NAME)
    mpy_arch = cast(MpyArch, top.get_choice("mpy_arch", _ARCHES))
    board_name = top.get_str("board_name")
    mcu_name = top.get_str("mcu_name")
    heap_kib = top.get_int("heap_kib", 16, 8192)
    cpu_freq_hz = top.get_int("cpu_freq_hz", 1_000_000, 1_000_000_000)
    network = cast(Network, top.get_choice("network", _NETWORKS))
    unique_id_bytes = top.get_int("unique_id_bytes", 6, 8)
    if unique_id_bytes not in (6, 8):
        raise top.error("unique_id_bytes", "expected 6 (a MAC) or 8 (a flash id)")
    mac_oui = top.get_str("mac_oui")
    if network == "wifi" and not _OUI.match(mac_oui):
        raise top.error("mac_oui", "expected 'xx:xx:xx' (lowercase hex) on a Wi-Fi board")
    if network == "none" and mac_oui:
        raise top.error("mac_oui", "must be empty on a board without network")

    console = _console(top.get_table("console"))
    flash = _flash(top.get_table("flash"))
    filesystem = _filesystem(top.get_table("filesystem"), flash)
    usb = tuple(_usb(t) for t in top.get_tables("usb", allow_empty=False))
    pins = _pins(top.get_table("pins"))
    sensors = _sensors(top.get_table("sensors"))
    devices = tuple(_i2c_device(t, pins) for t in top.get_tables("i2c"))
    names = [s.name for s in sensors] + [d.name for d in devices]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise top.error("i2c", f"sensor name {n!r} is used twice")
    wired = [(d.sda, d.scl, d.address) for d in devices]
    if len(set(wired)) != len(wired):
        raise top.error("i2c", "two devices share one address on the same pins")
    top.done()
    return Board(
        name=name,
        chip=chip,
        port=port,
        platform=platform,
        mpy_arch=mpy_arch,
        board_name=board_name,
        mcu_name=mcu_name,
        heap_kib=heap_kib,
        cpu_freq_hz=cpu_freq_hz,
        network=network,
        unique_id_bytes=unique_id_bytes,
        mac_oui=mac_oui,
        console=console,
        flash=flash,
        filesystem=filesystem,
        usb=usb,
        pins=pins,
        sensors=sensors,
        i2c=devices,
        source=path,
    )


def _console(t: _Table) -> Console:
    link = cast(Literal["uart", "usb"], t.get_choice("link", ("uart", "usb")))
    baud = t.get_int("baud", 1200, 12_000_000) if link == "uart" else 0
    t.done()
    return Console(link, baud)


def _flash(t: _Table) -> Flash:
    size = t.get_int("size", 1 << 16, 1 << 30)
    if size & (size - 1):
        raise t.error("size", f"{size} is not a power of two")
    offset = t.get_int("firmware_offset", 0, size - 1)
    fmt = cast(ImageFormat, t.get_choice("firmware_format", _FORMATS))
    image_base = t.get_int("image_base", 0, 0xFFFFFFFF)
    family = t.get_int("uf2_family", 0, 0xFFFFFFFF)
    if fmt == "uf2" and not (family and image_base):
        raise t.error("uf2_family", "a UF2 board needs uf2_family and image_base")
    if fmt == "bin" and family:
        raise t.error("uf2_family", "must be 0 for esptool images")
    t.done()
    return Flash(size, offset, fmt, image_base, family)


def _filesystem(t: _Table, flash: Flash) -> Filesystem:
    block = t.get_int("block_size", 128, 1 << 16)
    if block & (block - 1):
        raise t.error("block_size", f"{block} is not a power of two")
    offset = t.get_int("offset", 0, flash.size - 1)
    size = t.get_int("size", block, flash.size)
    if offset % block or size % block:
        raise t.error("offset", "offset and size must be multiples of block_size")
    if offset + size > flash.size:
        raise t.error("size", f"partition ends at {offset + size:#x}, past the flash size")
    t.done()
    return Filesystem(offset, size, block)


def _usb(t: _Table) -> UsbId:
    vid = t.get_int("vid", 0, 0xFFFF)
    pid = t.get_int("pid", 0, 0xFFFF)
    name = t.get_str("name")
    role = cast(UsbRole, t.get_choice("role", _ROLES))
    t.done()
    return UsbId(vid, pid, name, role)


def _pins(t: _Table) -> Pins:
    count = t.get_int("gpio_count", 1, 64)
    named_t = t.get_table("named")
    named: dict[str, int | str] = {}
    for key, value in named_t.data.items():
        named_t.used.add(key)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise named_t.error(key, "expected int or string")
        if isinstance(value, int) and not 0 <= value < count:
            raise named_t.error(key, f"GPIO {value} is out of range 0..{count - 1}")
        named[key] = value
    led_raw = t.get("led")
    if isinstance(led_raw, bool) or not isinstance(led_raw, (int, str)):
        raise t.error("led", "expected int or string")
    if isinstance(led_raw, int) and not 0 <= led_raw < count:
        raise t.error("led", f"GPIO {led_raw} is out of range 0..{count - 1}")
    if isinstance(led_raw, str) and led_raw not in named:
        raise t.error("led", f"{led_raw!r} is not in pins.named")
    led_kind = cast(LedKind, t.get_choice("led_kind", _LEDS))
    adc = t.get_ints("adc", 0, count - 1)
    buses = []
    for b in t.get_tables("i2c"):
        buses.append(I2CBus(b.get_int("sda", 0, count - 1), b.get_int("scl", 0, count - 1)))
        b.done()
    t.done()
    return Pins(count, led_raw, led_kind, named, adc, tuple(buses))


def _sensors(t: _Table) -> tuple[TemperatureSensor, ...]:
    out = []
    for key in t.data:
        if not _NAME.match(key):
            raise t.error(key, "sensor names are lowercase words")
        s = t.get_table(key)
        source = cast(TemperatureSource, s.get_choice("source", _SOURCES))
        mean = s.get_float("mean_c")
        swing = s.get_float("swing_c")
        if not (-40.0 <= mean <= 125.0 and 0.0 <= swing <= 20.0):
            raise s.error("mean_c", "mean_c must be -40..125 and swing_c 0..20")
        s.done()
        out.append(TemperatureSensor(key, source, mean, swing))
    t.done()
    return tuple(out)


def _i2c_device(t: _Table, pins: Pins) -> I2CDevice:
    name = t.get_str("name", _NAME)
    model = cast(SensorModel, t.get_choice("model", _MODELS))
    bus = t.get_int("bus", 0, max(len(pins.i2c) - 1, 0))
    address = t.get_int("address", 0x08, 0x77)
    sda = t.get_int("sda", 0, pins.gpio_count - 1)
    scl = t.get_int("scl", 0, pins.gpio_count - 1)
    if sda == scl:
        raise t.error("scl", "SDA and SCL must be different pins")
    t.done()
    return I2CDevice(name, model, bus, address, sda, scl)
