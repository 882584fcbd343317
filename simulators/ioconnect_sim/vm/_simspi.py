# machine.SPI and SoftSPI of the virtual board (machine.py imports this module
# on first use).
#
# No SPI device is modelled, so the bus behaves as bare pins do: MISO floats
# high (a pull-up, or nothing driving it), and every byte read is 0xFF. Give
# MOSI and MISO the same pin (a wire between them) and the bus loops back:
# reads return what was written in the same transfer. Clock rate and mode are
# kept and reported, not enforced (nothing on the bus could tell).
from machine import _RP2, _pin_id

# Bus ids as the ports number them: esp32 SPI(1) = HSPI, SPI(2) = VSPI (SPI(0)
# is the flash's); rp2 SPI(0) and SPI(1).
_IDS = (0, 1) if _RP2 else (1, 2)
_FLOAT = 0xFF


class SoftSPI:
    MSB = 0  # extmod/machine_spi.c, also the esp32's hardware SPI
    LSB = 1

    def __init__(self, baudrate=500000, *, polarity=0, phase=0, bits=8, firstbit=MSB, **pins):
        self.init(baudrate, polarity=polarity, phase=phase, bits=bits, firstbit=firstbit, **pins)

    def init(
        self,
        baudrate=500000,
        *,
        polarity=0,
        phase=0,
        bits=8,
        firstbit=0,
        sck=None,
        mosi=None,
        miso=None,
    ):
        if polarity not in (0, 1) or phase not in (0, 1) or bits != 8:
            raise ValueError("invalid SPI settings")
        self._baud = baudrate
        self._mode = (polarity, phase)
        self._firstbit = firstbit
        self._sck = None if sck is None else _pin_id(sck)
        self._mosi = None if mosi is None else _pin_id(mosi)
        self._miso = None if miso is None else _pin_id(miso)

    def deinit(self):
        pass

    def _looped(self):
        return self._mosi is not None and self._mosi == self._miso

    def _transfer(self, out, into):
        # One full-duplex transfer: into[i] is what MISO carried while out[i] went out.
        if self._looped():
            for i in range(len(into)):
                into[i] = out[i]
        else:
            for i in range(len(into)):
                into[i] = _FLOAT

    def read(self, nbytes, write=0x00):
        buf = bytearray(nbytes)
        self._transfer(bytes((write,)) * nbytes, buf)
        return bytes(buf)

    def readinto(self, buf, write=0x00):
        self._transfer(bytes((write,)) * len(buf), buf)

    def write(self, buf):
        pass  # no device listens; MOSI toggles for nobody

    def write_readinto(self, write_buf, read_buf):
        if len(write_buf) != len(read_buf):
            raise ValueError("buffers must be the same length")
        self._transfer(bytes(write_buf), read_buf)

    def __repr__(self):
        return "SoftSPI(baudrate=%d, polarity=%d, phase=%d, sck=%s, mosi=%s, miso=%s)" % (
            (self._baud,) + self._mode + (self._sck, self._mosi, self._miso)
        )


class SPI(SoftSPI):
    # rp2's hardware SPI names the bit order as the pico-sdk does (SPI_MSB_FIRST = 1).
    MSB = 1 if _RP2 else 0
    LSB = 0 if _RP2 else 1

    def __init__(self, id, baudrate=1000000, *, firstbit=None, **kw):
        if id not in _IDS:
            raise ValueError("SPI(%d) doesn't exist" % id)
        self._id = id
        if firstbit is None:
            firstbit = SPI.MSB
        self.init(baudrate, firstbit=firstbit, **kw)

    def __repr__(self):
        return "SPI(%d, baudrate=%d, polarity=%d, phase=%d)" % ((self._id, self._baud) + self._mode)
