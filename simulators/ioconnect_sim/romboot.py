"""The ESP32-family ROM serial bootloader ("download mode") of a virtual board.

Speaks enough of the protocol for real esptool (``--before no-reset``) to
detect the chip, read its MAC, upload its flasher stub and then write, verify,
read and erase the board's flash, which is a file as large as the board's chip.

Facts from esptool's serial-protocol documentation and its loader source:
SLIP framing (0xC0 ends, 0xDB 0xDC / 0xDB 0xDD escapes); a request is
``<BBHI`` (0, opcode, data length, checksum) + data, a response
``<BBHI`` (1, opcode, data length, value) + data + status bytes (the ROM sends
4, the stub 2; the first is 0 on success, the second the error code).

The stub is not executed: once esptool has uploaded it and asked the ROM to run
it, this class greets with "OHAI" and answers as esptool's stub does from then on.
"""

from __future__ import annotations

import hashlib
import os
import struct
import termios
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHIPS", "Chip", "FlashFile", "RomBootloader", "chip_for", "slip_frame"]

_END, _ESC, _ESC_END, _ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD

# Opcodes (esptool loader ESP_CMDS).
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
SPI_FLASH_MD5, GET_SECURITY_INFO = 0x13, 0x14
ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3

# ROM error codes (second status byte; esptool prints "0x1XX").
_ROM_BAD_MESSAGE, _ROM_FAILED, _ROM_BAD_CRC = 0x05, 0x06, 0x07
_ROM_DEFLATE = 0x0B
# Stub error codes (first status byte; esptool prints "0xCX00").
_STUB_BAD_LEN, _STUB_BAD_CSUM, _STUB_BAD_BLOCKSIZE = 0xC0, 0xC1, 0xC2
_STUB_BAD_CMD, _STUB_NOT_IN_FLASH_MODE, _STUB_INFLATE = 0xC3, 0xC6, 0xC7
_STUB_TOO_MUCH = 0xC9

_CHECKSUM_SEED = 0xEF
_SECTOR = 0x1000
_SPI_CMD_USR = 1 << 18
_XTAL_HZ = 40_000_000
_READ_WINDOW = 64  # READ_FLASH packets in flight at most (esptool asks for 64)


@dataclass(frozen=True)
class Chip:
    """What esptool reads from one chip model (its ``targets/<chip>.py``)."""

    name: str  # boards/*.toml `chip`
    magic: int  # value at CHIP_DETECT_MAGIC_REG_ADDR (0x40001000)
    chip_id: int | None  # GET_SECURITY_INFO chip id; None: the ROM lacks the command
    mac_reg: int  # eFuse word with MAC bytes 2..5 (big-endian); the next, bytes 0..1
    spi_base: int
    spi_usr2: int  # offset of SPI_USR2 (holds the command byte)
    spi_w0: int  # offset of SPI_W0 (data read back)
    uart_clkdiv: int
    wdt_config0: int | None  # RTC watchdog config: enabling it resets (S3/C3 only)
    banner: bytes  # what the ROM prints on entering download mode


CHIPS: dict[str, Chip] = {
    "esp32": Chip(
        "esp32",
        magic=0x00F01D83,
        chip_id=None,
        mac_reg=0x3FF5A004,  # EFUSE_BLK0_RDATA1
        spi_base=0x3FF42000,
        spi_usr2=0x24,
        spi_w0=0x80,
        uart_clkdiv=0x3FF40014,
        wdt_config0=None,  # esptool has no watchdog reset for the ESP32
        banner=b"ets Jul 29 2019 12:21:46\r\n\r\n"
        b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
        b"waiting for download\r\n",
    ),
    "esp32s3": Chip(
        "esp32s3",
        magic=0x9,
        chip_id=9,
        mac_reg=0x60007044,
        spi_base=0x60002000,
        spi_usr2=0x20,
        spi_w0=0x58,
        uart_clkdiv=0x60000014,
        wdt_config0=0x60008098,
        banner=b"ESP-ROM:esp32s3-20210327\r\nBuild:Mar 27 2021\r\n"
        b"rst:0x1 (POWERON),boot:0x0 (DOWNLOAD(USB/UART0))\r\nwaiting for download\r\n",
    ),
    "esp32c3": Chip(
        "esp32c3",
        magic=0x1B31506F,
        chip_id=5,
        mac_reg=0x60008844,
        spi_base=0x60002000,
        spi_usr2=0x20,
        spi_w0=0x58,
        uart_clkdiv=0x60000014,
        wdt_config0=0x60008090,
        banner=b"ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n"
        b"rst:0x1 (POWERON),boot:0x0 (DOWNLOAD(USB/UART0/1))\r\nwaiting for download\r\n",
    ),
}


def chip_for(name: str) -> Chip | None:
    """The ROM model of esptool chip ``name`` (``"esp32s3"``), or None if there is none."""
    return CHIPS.get(name)


def slip_frame(packet: bytes) -> bytes:
    """``packet`` SLIP-encoded between two 0xC0 bytes."""
    body = packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class FlashFile:
    """The board's SPI flash chip: a file of ``size`` bytes, 0xFF where erased."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(b"\xff" * size)
            os.replace(tmp, path)  # a flash file is whole or absent
        self._fd = os.open(path, os.O_RDWR)
        have = os.fstat(self._fd).st_size
        if have < size:  # a short file: the rest of the chip is erased
            os.pwrite(self._fd, b"\xff" * (size - have), have)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def inside(self, offset: int, length: int) -> bool:
        return offset >= 0 and length >= 0 and offset + length <= self.size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self._fd, data, offset)

    def erase(self, offset: int, length: int) -> None:
        # Whole sectors, as the chip erases.
        start = offset - offset % _SECTOR
        end = min(self.size, -(-(offset + length) // _SECTOR) * _SECTOR)
        if end > start:
            os.pwrite(self._fd, b"\xff" * (end - start), start)

    def sync(self) -> None:
        os.fsync(self._fd)


def _checksum(data: bytes) -> int:
    state = _CHECKSUM_SEED
    for b in data:
        state ^= b
    return state


class _Failed(Exception):
    """A command the chip refuses: ``code`` is the ROM or stub error code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class RomBootloader:
    """One download-mode session: feed it the host's bytes, send back what it returns.

    ``on_exit(how)`` is called when the host leaves the loader: ``"run"`` (the
    ROM runs the firmware: FLASH_END/MEM_END asking for it) or ``"reset"``
    (a watchdog reset written by esptool's ``--after watchdog-reset``).
    """

    def __init__(
        self,
        chip: Chip,
        flash: FlashFile,
        mac: bytes,
        on_exit: Callable[[str], None],
        tty_fd: int = -1,
        max_baud: int = 0,
    ) -> None:
        self.chip = chip
        self.flash = flash
        self.stub = False  # esptool's stub "runs": its replies, its commands
        self._on_exit = on_exit
        self._tty_fd = tty_fd  # the pty: its baud rate is what the host set
        # A fault: above this baud rate the line garbles every byte (0: never),
        # as a long cable or a weak USB-serial bridge does.
        self._max_baud = max_baud
        self._garbled = False
        self._regs: dict[int, int] = {}
        self._in_frame = False
        self._escape = False
        self._frame = bytearray()
        self._out = bytearray()
        self._mem_loaded = 0
        self._write: _FlashWrite | None = None
        self._reading: _FlashRead | None = None
        self._set_mac(mac)

    # -- bytes in, bytes out ----------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Take bytes from the host; return the bytes the chip sends back."""
        if self._garbled:
            return b""
        for b in data:
            if b == _END:
                if self._in_frame and self._frame:
                    self._packet(bytes(self._frame))
                # An END also starts a frame: esptool begins and ends each with one.
                self._in_frame = True
                self._frame.clear()
                self._escape = False
            elif not self._in_frame:
                continue  # noise between frames: the ROM ignores it
            elif self._escape:
                self._escape = False
                if b == _ESC_END:
                    self._frame.append(_END)
                elif b == _ESC_ESC:
                    self._frame.append(_ESC)
                else:  # a broken escape: drop the frame
                    self._in_frame = False
                    self._frame.clear()
            elif b == _ESC:
                self._escape = True
            else:
                self._frame.append(b)
        out = bytes(self._out)
        self._out.clear()
        return out

    def banner(self) -> bytes:
        return self.chip.banner

    def _send(self, packet: bytes) -> None:
        self._out += slip_frame(packet)

    def _reply(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        if self.stub:
            status = bytes([error, 0]) if error else b"\x00\x00"
        else:
            status = bytes([1 if error else 0, error, 0, 0])
        body = data + status
        self._send(struct.pack("<BBHI", 1, op, len(body), value) + body)

    # -- packets -----------------------------------------------------------
    def _packet(self, pkt: bytes) -> None:
        if self._reading is not None and len(pkt) == 4:
            self._read_ack(struct.unpack("<I", pkt)[0])
            return
        if len(pkt) < 8 or pkt[0] != 0:
            return  # not a request: the ROM stays silent
        _, op, size, chk = struct.unpack("<BBHI", pkt[:8])
        data = pkt[8:]
        if size != len(data):
            self._reply(op, error=_STUB_BAD_LEN if self.stub else _ROM_BAD_MESSAGE)
            return
        handler = self._handlers().get(op)
        if handler is None or (op >= ERASE_FLASH and not self.stub):
            self._reply(op, error=_STUB_BAD_CMD if self.stub else _ROM_BAD_MESSAGE)
            return
        try:
            handler(op, data, chk)
        except _Failed as err:
            self._reply(op, error=err.code)
        except (struct.error, IndexError):
            self._reply(op, error=_STUB_BAD_LEN if self.stub else _ROM_BAD_MESSAGE)

    def _handlers(self) -> dict[int, Callable[[int, bytes, int], None]]:
        return {
            SYNC: self._sync,
            READ_REG: self._read_reg,
            WRITE_REG: self._write_reg,
            MEM_BEGIN: self._mem_begin,
            MEM_DATA: self._mem_data,
            MEM_END: self._mem_end,
            SPI_ATTACH: self._ok,
            SPI_SET_PARAMS: self._ok,
            CHANGE_BAUDRATE: self._change_baud,
            GET_SECURITY_INFO: self._security_info,
            FLASH_BEGIN: self._flash_begin,
            FLASH_DATA: self._flash_data,
            FLASH_END: self._flash_end,
            FLASH_DEFL_BEGIN: self._flash_begin,
            FLASH_DEFL_DATA: self._flash_data,
            FLASH_DEFL_END: self._flash_end,
            SPI_FLASH_MD5: self._md5,
            READ_FLASH_SLOW: self._read_slow,
            ERASE_FLASH: self._erase_flash,
            ERASE_REGION: self._erase_region,
            READ_FLASH: self._read_flash,
            RUN_USER_CODE: self._run_user_code,
        }

    def _failed(self, rom: int, stub: int) -> _Failed:
        return _Failed(stub if self.stub else rom)

    def _ok(self, op: int, data: bytes, chk: int) -> None:
        self._reply(op)

    def _change_baud(self, op: int, data: bytes, chk: int) -> None:
        (baud,) = struct.unpack("<I", data[:4])
        self._reply(op)  # sent at the old rate, then both ends switch
        if self._max_baud and baud > self._max_baud:
            self._garbled = True

    def _sync(self, op: int, data: bytes, chk: int) -> None:
        if data[:4] != b"\x07\x07\x12\x20" or data[4:] != b"\x55" * 32:
            raise self._failed(_ROM_BAD_MESSAGE, _STUB_BAD_CMD)
        # The ROM answers a SYNC eight times with a non-zero value; the stub with 0,
        # which is how esptool tells a running stub.
        for _ in range(8):
            self._reply(op, value=0 if self.stub else 0x20120707)

    # -- registers ---------------------------------------------------------
    def _set_mac(self, mac: bytes) -> None:
        hi = int.from_bytes(mac[:2], "big")
        lo = int.from_bytes(mac[2:6], "big")
        self._regs[self.chip.mac_reg] = lo
        self._regs[self.chip.mac_reg + 4] = hi  # (the ESP32 keeps its MAC CRC above: 0 here)
        self._regs[0x40001000] = self.chip.magic

    def _read_reg(self, op: int, data: bytes, chk: int) -> None:
        (addr,) = struct.unpack("<I", data[:4])
        if addr == self.chip.uart_clkdiv:
            value = _XTAL_HZ // self.baud()  # esptool estimates the crystal from this
        else:
            value = self._regs.get(addr, 0)
        self._reply(op, value=value)

    def baud(self) -> int:
        """The line's baud rate as the host set it on the pty (115200 if unknown)."""
        speeds = {getattr(termios, n): int(n[1:]) for n in dir(termios) if n[1:].isdigit()}
        try:
            return speeds.get(termios.tcgetattr(self._tty_fd)[4], 115200) or 115200
        except (termios.error, OSError):
            return 115200

    def _write_reg(self, op: int, data: bytes, chk: int) -> None:
        for i in range(0, len(data) - len(data) % 16, 16):
            addr, value, mask, _delay = struct.unpack("<IIII", data[i : i + 16])
            old = self._regs.get(addr, 0)
            self._regs[addr] = (old & ~mask) | (value & mask)
            if addr == self.chip.spi_base and value & _SPI_CMD_USR:
                self._spi_command()
        self._reply(op)
        wdt = self.chip.wdt_config0
        if wdt is not None and self._regs.get(wdt, 0) & 1 << 31:
            # esptool's --after watchdog-reset: the chip resets and, strapped
            # for a normal boot, runs its firmware.
            self._on_exit("reset")

    def _spi_command(self) -> None:
        # esptool's run_spiflash_command: the command byte in SPI_USR2, the answer
        # read from SPI_W0 once SPI_CMD's USR bit is clear.
        base = self.chip.spi_base
        command = self._regs.get(base + self.chip.spi_usr2, 0) & 0xFF
        if command == 0x9F:  # RDID: Winbond (0xEF), type 0x40, capacity log2(size)
            answer = 0xEF | 0x40 << 8 | (self.flash.size.bit_length() - 1) << 16
        elif command == 0x5A:  # RDSFDP: the "SFDP" signature
            answer = 0x50444653
        else:  # status registers and the rest: 0 (nothing protected, not busy)
            answer = 0
        self._regs[base + self.chip.spi_w0] = answer
        self._regs[base] = 0

    def _security_info(self, op: int, data: bytes, chk: int) -> None:
        if self.chip.chip_id is None:  # the ESP32 ROM predates the command
            raise self._failed(_ROM_BAD_MESSAGE, _STUB_BAD_CMD)
        # flags, flash_crypt_cnt, 7 key purposes, chip id, ROM API version
        info = struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0, self.chip.chip_id, 3)
        self._reply(op, data=info)

    # -- RAM download (esptool's stub) -----------------------------------
    def _mem_begin(self, op: int, data: bytes, chk: int) -> None:
        struct.unpack("<IIII", data[:16])
        self._reply(op)

    def _data_block(self, data: bytes, chk: int) -> tuple[int, bytes]:
        """A MEM_DATA or FLASH_DATA payload, its length and checksum checked: (seq, block)."""
        size, seq, _, _ = struct.unpack("<IIII", data[:16])
        block = data[16:]
        if size != len(block):
            raise self._failed(_ROM_BAD_MESSAGE, _STUB_BAD_LEN)
        if _checksum(block) != chk & 0xFF:
            raise self._failed(_ROM_BAD_CRC, _STUB_BAD_CSUM)
        return seq, block

    def _mem_data(self, op: int, data: bytes, chk: int) -> None:
        _seq, block = self._data_block(data, chk)
        self._mem_loaded += len(block)
        self._reply(op)

    def _mem_end(self, op: int, data: bytes, chk: int) -> None:
        no_entry, entry = struct.unpack("<II", data[:8])
        self._reply(op)
        if no_entry or not entry:
            return
        if not self.stub and self._mem_loaded:
            # esptool's stub starts and says hello; from here on we answer as it does.
            self.stub = True
            self._send(b"OHAI")
        else:
            self._on_exit("run")  # some other RAM program: the board leaves the loader

    # -- flash writes ------------------------------------------------------
    def _flash_begin(self, op: int, data: bytes, chk: int) -> None:
        size, blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        compressed = op == FLASH_DEFL_BEGIN
        if size == 0 and blocks == 0:  # esptool's "flash_begin(0, 0)" before an END
            self._write = None
            self._reply(op)
            return
        if not self.flash.inside(offset, size):
            raise self._failed(_ROM_FAILED, _STUB_TOO_MUCH)
        if block_size == 0:
            raise self._failed(_ROM_BAD_MESSAGE, _STUB_BAD_BLOCKSIZE)
        self.flash.erase(offset, size)
        self._write = _FlashWrite(offset, size, block_size, compressed)
        self._reply(op)

    def _flash_data(self, op: int, data: bytes, chk: int) -> None:
        w = self._write
        if w is None or w.compressed != (op == FLASH_DEFL_DATA):
            raise self._failed(_ROM_FAILED, _STUB_NOT_IN_FLASH_MODE)
        seq, block = self._data_block(data, chk)
        if seq != w.seq:  # a repeat of the block already written (esptool retries)
            if seq == w.seq - 1:
                self._reply(op)
                return
            raise self._failed(_ROM_FAILED, _STUB_BAD_LEN)
        if w.compressed:
            try:
                plain = w.inflate.decompress(block)
            except zlib.error:
                self._write = None
                raise self._failed(_ROM_DEFLATE, _STUB_INFLATE) from None
        else:
            plain = block
        room = w.offset + w.size - w.pos
        if len(plain) > room and (w.compressed or plain[room:].strip(b"\xff")):
            raise self._failed(_ROM_FAILED, _STUB_TOO_MUCH)
        self.flash.write(w.pos, plain[:room])  # esptool pads the last block with 0xFF
        w.pos += min(len(plain), room)
        w.seq += 1
        self._reply(op)

    def _flash_end(self, op: int, data: bytes, chk: int) -> None:
        run_user_code = bool(data) and struct.unpack("<I", data[:4])[0] != 0
        self.flash.sync()
        self._write = None
        self._reply(op)
        if not self.stub:
            # The ROM leaves the loader either way: reboot (0) or jump to the app (1).
            self._on_exit("run")
        elif not run_user_code:
            # The stub's reboot lands in the ROM loader again (esptool `--after
            # no-reset` with the stub: "exit the stub flasher back to ROM loader").
            self.stub = False
            self._mem_loaded = 0

    def _run_user_code(self, op: int, data: bytes, chk: int) -> None:
        self._on_exit("run")  # the stub sends no reply to this one

    # -- verify, read, erase ----------------------------------------------
    def _md5(self, op: int, data: bytes, chk: int) -> None:
        addr, size = struct.unpack("<II", data[:8])
        if not self.flash.inside(addr, size):
            raise self._failed(_ROM_FAILED, _STUB_TOO_MUCH)
        digest = hashlib.md5(self.flash.read(addr, size), usedforsecurity=False)
        # The ROM answers in 32 hex characters, the stub in 16 raw bytes.
        self._reply(op, data=digest.digest() if self.stub else digest.hexdigest().encode())

    def _read_slow(self, op: int, data: bytes, chk: int) -> None:
        addr, size = struct.unpack("<II", data[:8])
        if size > 64 or not self.flash.inside(addr, size):
            raise _Failed(_ROM_FAILED)
        self._reply(op, data=self.flash.read(addr, size).ljust(64, b"\xff"))

    def _erase_flash(self, op: int, data: bytes, chk: int) -> None:
        self.flash.erase(0, self.flash.size)
        self.flash.sync()
        self._reply(op)

    def _erase_region(self, op: int, data: bytes, chk: int) -> None:
        offset, size = struct.unpack("<II", data[:8])
        if offset % _SECTOR or size % _SECTOR or not self.flash.inside(offset, size):
            raise _Failed(_STUB_BAD_LEN)
        self.flash.erase(offset, size)
        self.flash.sync()
        self._reply(op)

    def _read_flash(self, op: int, data: bytes, chk: int) -> None:
        offset, length, packet, inflight = struct.unpack("<IIII", data[:16])
        if not self.flash.inside(offset, length) or packet == 0:
            raise _Failed(_STUB_BAD_LEN)
        self._reply(op)
        self._reading = _FlashRead(offset, length, packet, max(1, min(inflight, _READ_WINDOW)))
        self._read_more()

    def _read_more(self) -> None:
        r = self._reading
        assert r is not None
        while r.sent < r.length and r.sent - r.acked < r.window * r.packet:
            chunk = self.flash.read(r.offset + r.sent, min(r.packet, r.length - r.sent))
            r.md5.update(chunk)
            r.sent += len(chunk)
            self._send(chunk)

    def _read_ack(self, acked: int) -> None:
        r = self._reading
        assert r is not None
        r.acked = max(r.acked, acked)
        if r.acked >= r.length:
            self._reading = None
            self._send(r.md5.digest())
        else:
            self._read_more()


@dataclass
class _FlashWrite:
    offset: int
    size: int
    block_size: int
    compressed: bool
    pos: int = -1
    seq: int = 0

    def __post_init__(self) -> None:
        self.pos = self.offset
        self.inflate = zlib.decompressobj()


@dataclass
class _FlashRead:
    offset: int
    length: int
    packet: int
    window: int
    sent: int = 0
    acked: int = 0

    def __post_init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
