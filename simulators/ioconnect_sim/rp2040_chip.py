"""One power-on of an emulated RP2040 (PyPI ``rp2040py``) running a MicroPython UF2.

Run by the rp2040 engine's supervisor (``rp2040_board.py``) as its own process,
one per power-on: a power cut is this process killed where it stands.

    python -m ioconnect_sim.rp2040_chip --image FW.uf2 --flash flash.lfs --serial-fd N

- The UF2 is loaded into the emulated flash, the littlefs image over the
  filesystem region (352 blocks of 4 KiB at 0xA0000 on the Pico), and the core
  boots from flash as the bootrom would.
- **Flash writes are mirrored as they happen.** rp2040py applies every erase and
  page program in its SSI model (the QSPI flash chip) when the chip select is
  released; we wrap that one method and write the bytes it changed in the
  filesystem region to ``flash.lfs`` at once (``pwrite``, no buffering in this
  process). A SIGKILL therefore keeps every program or erase that completed
  before it and loses the one in flight, as a real power cut does; littlefs is
  built to survive exactly that. No fsync: a killed process loses nothing the
  kernel already has, and a host crash is not a board's power cut.
- **BOOTSEL.** ``machine.bootloader()`` calls the boot ROM's ``reset_usb_boot``,
  which arms the watchdog to reboot into the ROM's USB mass-storage code. We
  see that request at the watchdog's trigger (its scratch registers hold a
  boot vector into the ROM) and exit with :data:`EXIT_BOOTSEL` instead of
  running that code: the supervisor shows the drive (see ``rp2040_board``).
- **Faults** (``ioconnect sim fault``) are read from ``--faults``, the state
  folder's ``faults.json`` the unix-port engine's VM reads too, whenever the chip
  needs one: ``sensors.temperature = "fail"`` makes ADC channel 4 (the on-chip
  sensor) read 0 V, a value the firmware's range check refuses (437 C); else it
  reads ``--temperature-c`` by the datasheet's formula. ``flash = "enospc"`` is
  worn flash: erases and programs in the filesystem region complete but change
  nothing, so littlefs's read-back finds every block bad and answers ENOSPC
  once it has tried them all; the files already written stay readable.
- The USB CDC console is bridged to ``--serial-fd``, the master side of the
  pty the supervisor owns (it outlives this process, so the port stays the same
  across power cuts, as the unix-port engine's does).

Never downloads anything: the image is always given as a local file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .boardlog import RotatingLog

#: MicroPython's RPI_PICO filesystem (mp ports/rp2/boards/RPI_PICO/mpconfigboard.h):
#: the last 1408 KiB of the 2 MiB flash, littlefs v2 with 4 KiB blocks.
FS_START = 0xA0000
FS_BLOCK_SIZE = 4096
FS_BLOCK_COUNT = 352
FS_SIZE = FS_BLOCK_SIZE * FS_BLOCK_COUNT

# SPI NOR commands rp2040py's SSI applies (JEDEC; the bootrom's flash helpers send them).
_PAGE_PROGRAM = 0x02
_SECTOR_ERASE = 0x20
_BLOCK_ERASE = 0xD8
_ERASE_SIZES = {_SECTOR_ERASE: 4096, _BLOCK_ERASE: 65536}
_PAGE_SIZE = 256

_FAULTS_READ = 4096  # at least supervisor._FAULTS_SIZE: the whole record
_TEMP_CHANNEL = 4  # ADC input 4: the on-chip temperature sensor (datasheet 4.9)

#: This process's exit status when the chip asked for the boot ROM's USB drive.
EXIT_BOOTSEL = 3
# pico-sdk watchdog_reboot(pc, sp, ...): SCRATCH4 = magic, SCRATCH5 = pc ^ -magic,
# SCRATCH7 = pc; the boot ROM jumps to pc after the reset. A pc in the 16 KiB ROM is
# its own USB boot entry (reset_usb_boot's reboot); firmware vectors point at RAM.
_VECTOR_MAGIC = 0xB007C0D3
_ROM_END = 0x4000


def blank_image(path: Path) -> None:
    """An erased filesystem region (all 0xFF): MicroPython formats it on first boot."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(b"\xff" * FS_SIZE)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def changed_range(tx: bytes | bytearray) -> tuple[int, int] | None:
    """The flash range (start, end) an SPI NOR command changes, or None for a read/status."""
    if len(tx) < 4:
        return None
    opcode = tx[0]
    address = (tx[1] << 16) | (tx[2] << 8) | tx[3]
    if opcode in _ERASE_SIZES:
        size = _ERASE_SIZES[opcode]
        start = address & ~(size - 1)
        return start, start + size
    if opcode == _PAGE_PROGRAM and len(tx) > 4:
        return address, address + min(len(tx) - 4, _PAGE_SIZE)
    return None


class ChipFaults:
    """The faults the host set for this board (``faults.json``, rewritten in place by
    ``supervisor.write_faults``), read afresh each time the chip asks."""

    def __init__(self, path: Path | None) -> None:
        self._fd = -1
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._last: dict[str, Any] = {}

    def now(self) -> dict[str, Any]:
        if self._fd < 0:
            return {}
        try:
            state = json.loads(os.pread(self._fd, _FAULTS_READ, 0) or b"{}")
        except ValueError:  # caught mid-rewrite: the state before holds
            return self._last
        self._last = state if isinstance(state, dict) else {}
        return self._last

    def sensor_failed(self, name: str) -> bool:
        sensors = self.now().get("sensors")
        return isinstance(sensors, dict) and sensors.get(name) == "fail"

    def flash_worn(self) -> bool:
        return self.now().get("flash") == "enospc"


def temperature_raw(celsius: float) -> int:
    """The 12-bit ADC reading of the RP2040's sensor at ``celsius`` (datasheet 4.9.5:
    V = 0.706 - (T - 27) * 0.001721, 3.3 V reference)."""
    volts = 0.706 - (celsius - 27) * 0.001721
    return min(max(round(volts / 3.3 * 4095), 0), 4095)


def wire_temperature_sensor(adc: Any, celsius: float, faults: ChipFaults) -> None:
    """Give ADC channel 4 the sensor's voltage at ``celsius``, or 0 V while the host
    has failed the sensor; set at each conversion, so a fault takes effect at once."""
    start: Callable[[int], None] = adc.on_adc_read
    healthy = temperature_raw(celsius)

    def read(channel: int) -> None:
        if channel == _TEMP_CHANNEL:
            adc.channel_values[channel] = 0 if faults.sensor_failed("temperature") else healthy
        start(channel)

    adc.on_adc_read = read


def mirror_flash_writes(
    ssi: Any, flash: Any, fd: int, worn: Callable[[], bool] = lambda: False
) -> None:
    """Wrap ``ssi._apply_command`` so each write to the filesystem region lands in ``fd``;
    while ``worn()``, a write there completes without changing the flash."""
    apply: Callable[[], None] = ssi._apply_command

    def apply_and_mirror() -> None:
        span = changed_range(bytes(ssi._tx_buffer)) if ssi._write_enabled else None
        if span is not None:
            span = max(span[0], FS_START), min(span[1], FS_START + FS_SIZE)
            if span[0] < span[1] and worn():
                ssi._write_enabled = False  # the command runs its course, the cells stay
                span = None
        apply()
        if span is None:
            return
        start, end = span
        if start < end:
            os.pwrite(fd, bytes(flash[start:end]), start - FS_START)

    ssi._apply_command = apply_and_mirror


def asks_for_usb_boot(scratch: list[int]) -> bool:
    """True if the watchdog scratch registers hold a reboot vector into the boot ROM."""
    magic, check, pc = scratch[4], scratch[5], scratch[7]
    return (
        magic == _VECTOR_MAGIC
        and check == (pc ^ -_VECTOR_MAGIC) & 0xFFFFFFFF
        and 0 < pc < _ROM_END
    )


def catch_bootsel(watchdog: Any, on_bootsel: Callable[[], None]) -> None:
    """Wrap the watchdog's trigger: a reboot into the ROM's USB boot calls ``on_bootsel``
    (the chip is left where it stands); any other reset goes ahead as before."""
    trigger: Callable[[], None] = watchdog.on_watchdog_trigger

    def trigger_or_bootsel() -> None:
        if asks_for_usb_boot(watchdog.scratch_data):
            on_bootsel()
        else:
            trigger()

    watchdog.on_watchdog_trigger = trigger_or_bootsel


async def _run(
    image: Path,
    flash_path: Path,
    serial_fd: int,
    log_path: Path | None,
    faults: ChipFaults,
    celsius: float,
) -> int:
    from rp2040py.boards import BOARDS, BoardSpec, FlashLayout
    from rp2040py.cli.pty_repl import PtyInteractiveRepl
    from rp2040py.device.mp_device import MicroPythonDevice

    layout = FlashLayout(
        fs_start=FS_START, fs_blockcount=FS_BLOCK_COUNT, fs_blocksize=FS_BLOCK_SIZE
    )
    spec = BoardSpec(extras=BOARDS["pico"].extras, layout=layout, image=image)

    class Pico(MicroPythonDevice):
        def _post_boot_handshake(self) -> None:
            # rp2040py types a newline once the board enumerates, to draw a prompt. A
            # real board gets nothing from nobody, and a newline left in the raw REPL's
            # buffer would spoil the host's raw-paste request.
            pass

    device = Pico(board=spec, filesystem=flash_path)
    fd = os.open(flash_path, os.O_RDWR | os.O_CLOEXEC)
    mirror_flash_writes(device.mcu.ssi, device.mcu.flash, fd, faults.flash_worn)
    wire_temperature_sensor(device.mcu.adc, celsius, faults)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    bootsel = False

    def enter_bootsel() -> None:  # runs in the emulator's thread
        nonlocal bootsel
        bootsel = True
        device.simulator.stop()  # the USB drive's code is not run: the supervisor shows it
        loop.call_soon_threadsafe(stop.set)

    catch_bootsel(device.mcu.watchdog, enter_bootsel)

    class Bridge(PtyInteractiveRepl):
        # rp2040py's pty bridge, on a pty the supervisor made and keeps.
        async def _on_start(self) -> None:
            self._master_fd = serial_fd
            os.set_blocking(serial_fd, False)
            await self._register_reader()

        async def _on_stop(self) -> None:
            self._master_fd = None

    log = RotatingLog(log_path) if log_path else None
    bridge = Bridge(
        device.cdc,
        device.simulator,
        on_quit=lambda code: stop.set(),
        on_data=(lambda data: log.write(bytes(data))) if log else None,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Bytes the host typed while the board boots wait in the pty, as in a USB
    # host's buffer before the port exists.
    await device.astart(timeout=None)
    await bridge.start()
    print("ioc-rp2040 up", file=sys.stderr, flush=True)
    while device.simulator.executing and not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    device.stop()
    if device.simulator.engine_room_error is not None:
        raise device.simulator.engine_room_error
    if bootsel:
        print("ioc-rp2040 bootsel", file=sys.stderr, flush=True)
        return EXIT_BOOTSEL
    return 0


#: rp2040py ticks its clock once per instruction unless told to add up this many first
#: (``RP2040PY_CLOCK_TICK_BATCH``); an alarm then fires at most that many instructions
#: late. Measured here: 2.7x faster for bigint-free loops, device time within 0.1 %,
#: still the same from run to run. Set the variable to 1 for exact per-instruction alarms.
CLOCK_TICK_BATCH = "64"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ioconnect_sim.rp2040_chip")
    parser.add_argument("--image", type=Path, required=True, help="MicroPython UF2 for the RP2040")
    parser.add_argument("--flash", type=Path, required=True, help="littlefs image (mirrored)")
    parser.add_argument("--serial-fd", type=int, required=True, help="pty master for USB CDC")
    parser.add_argument("--log", type=Path, help="append what the board prints here")
    parser.add_argument("--faults", type=Path, help="the board's faults.json (sim fault)")
    parser.add_argument(
        "--temperature-c", type=float, default=27.0, help="what the on-chip sensor reads"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("RP2040PY_CLOCK_TICK_BATCH", CLOCK_TICK_BATCH)  # read per batch
    if not args.flash.exists():
        blank_image(args.flash)
    faults = ChipFaults(args.faults)
    return asyncio.run(
        _run(args.image, args.flash, args.serial_fd, args.log, faults, args.temperature_c)
    )


if __name__ == "__main__":
    raise SystemExit(main())
