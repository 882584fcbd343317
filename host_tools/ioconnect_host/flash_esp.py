"""Flash an ESP32-family board through esptool's v5 Python API (a library, not a subprocess).

The steps a careful user takes by hand, in order:

1. check the image before touching the board: an ESP image (magic 0xE9) built
   for the board's chip (the chip id in its extended header) that fits in its flash;
2. put the board in download mode: esptool's DTR/RTS reset for a real board, or
   ask the running MicroPython (``machine.bootloader()``), or guide the user
   through the BOOT/EN buttons; a virtual board gets its buttons pressed through
   its state folder;
3. detect the chip and refuse a board of another chip;
4. with ``erase``, or an image reaching into the filesystem partition: refuse
   while that partition holds an identity key, unless ``erase_identity`` (a board
   refused in step 3 or 4 is reset back into the firmware it runs);
5. write at the board's firmware offset (compressed), verify the MD5 the chip
   computes against the image's, then reset into the firmware;
6. on a failed transfer, try again at the next lower baud rate.

Example:
    >>> from ioconnect_host.boards import load_board
    >>> from ioconnect_host.ports import select_port
    >>> result = flash_esp(load_board("esp32"), Path("firmware.bin").read_bytes(),
    ...                    select_port("sim:dev1"))
    >>> result.verified
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .boards import Board
from .errors import IoconnectError
from .ports import BoardRef

__all__ = [
    "CHIP_IDS",
    "FlashError",
    "FlashResult",
    "check_image",
    "firmware_part",
    "flash_esp",
    "image_chip",
]

#: esptool's IMAGE_CHIP_ID per --chip name: the chip id in an image's extended header.
CHIP_IDS = {
    "esp32": 0,
    "esp32s2": 2,
    "esp32c3": 5,
    "esp32s3": 9,
    "esp32c2": 12,
    "esp32c6": 13,
    "esp32h2": 16,
}
_NAMES = {v: k for k, v in CHIP_IDS.items()}
_IMAGE_MAGIC = 0xE9
_ROM_BAUD = 115200
#: Baud rates tried, from the one asked for down: a long or noisy cable fails fast ones.
BAUD_STEPS = (921600, 460800, 230400, 115200)
_IDENTITY_FILES = ("identity.key",)

Progress = Callable[[int, int], None]
Ask = Callable[[str], None]


class FlashError(IoconnectError):
    """The image does not suit the board, or the board could not be flashed."""


@dataclass
class FlashResult:
    """What ``flash_esp`` did (``to_json`` for ``--json``)."""

    port: str
    board: str
    chip: str
    mac: str
    offset: int
    size: int
    md5: str
    verified: bool
    erased: bool
    baud: int
    seconds: float
    virtual: bool
    attempts: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def image_chip(image: bytes) -> int:
    """The chip id an ESP image was built for.

    Raises:
        FlashError: not an ESP image (too short, or no 0xE9 magic).
    """
    if len(image) < 24 or image[0] != _IMAGE_MAGIC:
        first = f"0x{image[0]:02x}" if image else "nothing"
        raise FlashError(
            f"not an ESP firmware image: it starts with {first}, not 0xe9",
            hint="give a MicroPython .bin for the board (or one from `ioconnect image build`)",
        )
    # 8-byte image header, then the extended header: WP pin, 3 drive bytes, chip id.
    return int(struct.unpack_from("<H", image, 12)[0])


def firmware_part(board: Board, data: bytes) -> bytes:
    """What goes at the board's firmware offset: the file itself (a MicroPython
    download, which starts with its image header), or, for a merged image from
    flash offset 0 (``ioconnect image build``, ``esptool merge-bin``), the file
    from that offset on (erased flash before it)."""
    start = board.flash.firmware_offset
    merged = data[:1] != bytes([_IMAGE_MAGIC]) and start and len(data) > start
    if merged and data[start] == _IMAGE_MAGIC and data[:start] == b"\xff" * start:
        return data[start:]
    return data


def check_image(board: Board, data: bytes) -> bytes:
    """Refuse an image that was built for another chip or does not fit the flash;
    return the bytes to write at the board's firmware offset (:func:`firmware_part`).

    Raises:
        FlashError: wrong chip, no ESP image, or too large.
    """
    if board.flash.firmware_format != "bin":
        raise FlashError(f"{board.name} is not flashed with an ESP .bin image")
    image = firmware_part(board, data)
    want = CHIP_IDS.get(board.chip)
    got = image_chip(image)
    if want is None:
        raise FlashError(f"no chip id known for {board.chip}")
    if got != want:
        raise FlashError(
            f"the image is for {_NAMES.get(got, f'chip id {got}')}, "
            f"not {board.chip} (--board {board.name})",
            hint="download the firmware built for this board",
        )
    end = board.flash.firmware_offset + len(image)
    if end > board.flash.size:
        raise FlashError(
            f"the image ({len(image)} bytes at 0x{board.flash.firmware_offset:x}) does not "
            f"fit in the {board.flash.size // 1024 // 1024} MiB flash of {board.name}"
        )
    return image


class _Log:
    """esptool's log, kept off the terminal: progress goes to our bar, lines to a list."""

    def __init__(self, progress: Progress | None) -> None:
        self.lines: list[str] = []
        self._progress = progress

    def logger(self) -> Any:
        from esptool.logger import TemplateLogger

        outer = self

        class Logger(TemplateLogger):  # type: ignore[misc]
            def print(self, *args: Any, **kwargs: Any) -> None:
                outer.lines.append(" ".join(str(a) for a in args))

            def note(self, message: str) -> None:
                outer.lines.append(f"note: {message}")

            def warning(self, message: str) -> None:
                outer.lines.append(f"warning: {message}")

            def error(self, message: str) -> None:
                outer.lines.append(f"error: {message}")

            def stage(self, finish: bool = False) -> None:
                pass

            def progress_bar(
                self,
                cur_iter: int,
                total_iters: int,
                prefix: str = "",
                suffix: str = "",
                bar_length: int = 30,
            ) -> None:
                if outer._progress is not None:
                    outer._progress(cur_iter, total_iters)

            def set_verbosity(self, verbosity: str) -> None:
                pass

        return Logger()


@contextlib.contextmanager
def _esptool_log(progress: Progress | None) -> Iterator[_Log]:
    from esp_pylib.logger import EspLog
    from esptool.logger import log

    saved = EspLog.instance
    sink = _Log(progress)
    log.set_logger(sink.logger())
    try:
        yield sink
    finally:
        EspLog.instance = saved


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _steps(baud: int) -> list[int]:
    return [b for b in BAUD_STEPS if b <= baud] or [_ROM_BAUD]


def _enter_download_virtual(ref: BoardRef, timeout_s: float = 20.0) -> None:
    """Press a virtual board's BOOT and EN buttons; return once its ROM says it waits."""
    import serial
    from ioconnect_sim.launch import reset_running

    assert ref.sim_name is not None
    with serial.Serial(ref.port, _ROM_BAUD, timeout=0.2) as line:
        line.reset_input_buffer()
        reset_running(ref.sim_name, download=True)
        seen = b""
        deadline = time.monotonic() + timeout_s
        while b"waiting for download" not in seen:
            if time.monotonic() > deadline:
                raise FlashError(f"virtual board {ref.sim_name} did not enter download mode")
            seen = (seen + line.read(256))[-256:]


def _ask_bootloader(port: str) -> bool:
    """Ask the MicroPython on ``port`` to reset into the ROM loader; True if it answered."""
    from .transport import SerialTransport

    try:
        # machine.bootloader() never returns: the board resets under us.
        with SerialTransport(port) as t, contextlib.suppress(IoconnectError, OSError):
            t.exec("import machine; machine.bootloader()", timeout_s=2.0)
    except (IoconnectError, OSError):
        return False
    return True


def _has_modem_lines(port: str) -> bool:
    """True if the port has DTR/RTS lines esptool can reset the chip with."""
    if "://" in port:
        return True  # rfc2217 carries them; esptool itself skips socket://
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return True  # let esptool say what is wrong with the port
    try:
        fcntl.ioctl(fd, termios.TIOCMGET, b"\0\0\0\0")
    except OSError:
        return False  # a pty: ENOTTY/EINVAL
    finally:
        os.close(fd)
    return True


def _connect(ref: BoardRef, ask: Ask | None) -> Any:
    """An esptool loader talking to the board's ROM (download mode)."""
    from esptool.cmds import detect_chip
    from esptool.util import FatalError

    def attempt(mode: str, tries: int) -> Any:
        return detect_chip(ref.port, baud=_ROM_BAUD, connect_mode=mode, connect_attempts=tries)

    if ref.sim_name:
        _enter_download_virtual(ref)
        try:
            return attempt("no-reset", 10)
        except (FatalError, OSError) as exc:
            raise FlashError(
                f"virtual board {ref.sim_name} did not answer as an ESP ROM loader: "
                f"{_one_line(exc)}"
            ) from None
    errors: list[str] = ["no answer"]
    if _has_modem_lines(ref.port):
        try:  # the USB-serial bridge's DTR/RTS auto-reset (DevKit boards)
            return attempt("default-reset", 2)
        except (FatalError, OSError) as exc:
            errors.append(_one_line(exc))
    else:  # no DTR/RTS to reset with (a pty, a bridge): maybe it waits in the loader now
        try:
            return attempt("no-reset", 2)
        except (FatalError, OSError) as exc:
            errors.append(_one_line(exc))
    if _ask_bootloader(ref.port):  # native USB (S3/C3): MicroPython resets itself into it
        time.sleep(1.0)
        try:
            return attempt("no-reset", 5)
        except (FatalError, OSError) as exc:
            errors.append(_one_line(exc))
    steps = (
        "hold the BOOT button, press and release EN/RESET, then release BOOT "
        "(the board is then in download mode)"
    )
    if ask is None:
        raise FlashError(f"no ESP ROM loader answered on {ref.port}: {errors[-1]}", hint=steps)
    ask(f"The board on {ref.port} needs a button press: {steps}. Press Enter when done.")
    try:
        return attempt("no-reset", 5)
    except (FatalError, OSError) as exc:
        raise FlashError(f"no ESP ROM loader answered on {ref.port}: {_one_line(exc)}") from None


def _holds_identity(esp: Any, board: Board) -> bool:
    """True if the board's filesystem partition holds an identity key (read over the wire)."""
    from ioconnect_sim.flashfs import FlashFsError, lfs_read

    fs = board.filesystem
    data = esp.read_flash(fs.offset, fs.size)
    try:
        files = lfs_read(bytes(data), block_size=fs.block_size)
    except FlashFsError:  # erased or not littlefs: no identity there
        return False
    return any(path.rsplit("/", 1)[-1] in _IDENTITY_FILES for path in files)


def _reset_into_firmware(esp: Any, ref: BoardRef) -> None:
    from esptool.cmds import reset_chip

    if ref.sim_name:
        # A pty has no RTS line: the stub goes back to the ROM, then EN is pressed.
        reset_chip(esp, "no-reset")
        esp._port.close()
        from ioconnect_sim.launch import reset_running

        reset_running(ref.sim_name)
    else:
        reset_chip(esp, "hard-reset")
        esp._port.close()


def flash_esp(
    board: Board,
    image: bytes,
    ref: BoardRef,
    *,
    erase: bool = False,
    erase_identity: bool = False,
    baud: int = 460800,
    progress: Progress | None = None,
    ask: Ask | None = None,
) -> FlashResult:
    """Write ``image`` at the board's firmware offset, verify it and boot it.

    Args:
        board: the board definition (its chip, flash size and firmware offset).
        image: the firmware (.bin) as written at ``board.flash.firmware_offset``, or a
            merged image from flash offset 0 (``ioconnect image build``).
        ref: the selected port (``ref.sim_name`` for a virtual board).
        erase: erase the whole flash first (refused while an identity is there).
        erase_identity: allow ``erase`` to destroy the device's identity key.
        baud: the fastest baud rate to try; slower ones follow on failure.
        progress: called with (bytes written, total) while writing.
        ask: shows a message and waits for the user (None: no one to ask).

    Raises:
        FlashError: wrong image, wrong chip, identity in the way, or the transfer
            failed at every baud rate.
    """
    from esptool.cmds import attach_flash, erase_flash, run_stub, write_flash
    from esptool.util import FatalError
    from serial import SerialException

    image = check_image(board, image)
    offset = board.flash.firmware_offset
    digest = hashlib.md5(image, usedforsecurity=False).hexdigest()
    started = time.monotonic()
    failures: list[str] = []
    with _esptool_log(progress):
        for attempt, rate in enumerate(_steps(baud), 1):
            esp = _connect(ref, ask)
            written = False
            try:
                chip = CHIP_IDS.get(board.chip)
                if chip != esp.IMAGE_CHIP_ID:
                    raise FlashError(
                        f"the board on {ref.port} is an {esp.CHIP_NAME}, not {board.chip} "
                        f"(--board {board.name})",
                        hint="give the --board of the board you have connected",
                    )
                mac = ":".join(f"{b:02x}" for b in esp.read_mac())
                esp = run_stub(esp)
                if ref.sim_name:
                    # A virtual board's pty does not come back: esptool's own
                    # reconnect would reopen the path, which another board may reuse.
                    esp.WRITE_FLASH_ATTEMPTS = 1
                if rate != _ROM_BAUD:
                    esp.change_baud(rate)
                attach_flash(esp)
                erased = False
                # The identity key lives in the filesystem partition: an erase, or an
                # image that brings its own filesystem, would destroy it.
                replaces_fs = offset + len(image) > board.filesystem.offset
                if (erase or replaces_fs) and not erase_identity and _holds_identity(esp, board):
                    what = "--erase" if erase else "this image (it holds a filesystem)"
                    raise FlashError(
                        f"{what} would DESTROY this device's identity key (its DID "
                        "and registrations): refused",
                        hint="an image without a filesystem keeps it; to lose it anyway "
                        "give --erase-identity",
                    )
                if erase:
                    erase_flash(esp)
                    erased = True
                written = True
                write_flash(esp, [(offset, image)], flash_size="keep", compress=True)
                verified = esp.flash_md5sum(offset, len(image)) == digest
                if not verified:
                    raise FlashError(f"verify failed: the flash at 0x{offset:x} differs")
                _reset_into_firmware(esp, ref)
            except FlashError:
                with contextlib.suppress(Exception):
                    if written:  # a failed verify: stay in the loader to flash again
                        esp._port.close()
                    else:  # refused before writing: the board runs what it ran
                        _reset_into_firmware(esp, ref)
                raise
            except (FatalError, SerialException, OSError) as exc:
                with contextlib.suppress(Exception):
                    esp._port.close()
                failures.append(f"{rate} baud: {_one_line(exc)}")
                if ref.sim_name and not _still_running(ref.sim_name):
                    raise FlashError(
                        f"virtual board {ref.sim_name} went away during the transfer: "
                        f"{_one_line(exc)}"
                    ) from None
                continue
            return FlashResult(
                port=ref.port,
                board=board.name,
                chip=esp.CHIP_NAME,
                mac=mac,
                offset=offset,
                size=len(image),
                md5=digest,
                verified=verified,
                erased=erased,
                baud=rate,
                seconds=round(time.monotonic() - started, 3),
                virtual=bool(ref.sim_name),
                attempts=attempt,
            )
    raise FlashError(
        f"flashing {board.name} on {ref.port} failed at every baud rate ({failures[-1]})",
        hint="check the cable and that no other program holds the port",
    )


def _still_running(name: str) -> bool:
    from ioconnect_sim.launch import list_running

    return any(rec.name == name for rec in list_running())
