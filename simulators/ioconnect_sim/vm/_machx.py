# machine.I2C and SoftI2C of the virtual board, on the sensor models of
# _i2cdev (see machine.py, which imports this module the first time one of
# them is asked for).
import _sensors as _s
from machine import _NACK, _RP2, _pin_id, _pins


class I2C:
    # Hardware I2C on the modelled devices of the board file (its [[i2c]]).
    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        buses = _pins.get("i2c", ())
        if not 0 <= id < len(buses):
            raise ValueError("I2C(%d) doesn't exist" % id)
        self._sda = buses[id]["sda"] if sda is None else _pin_id(sda)
        self._scl = buses[id]["scl"] if scl is None else _pin_id(scl)
        if _RP2 and (self._scl & 3 != 1 + 2 * id):
            raise ValueError("bad SCL pin")  # rp2 pin mux: SCL on pin 4k+1 (I2C0), 4k+3 (I2C1)
        if _RP2 and (self._sda & 3 != 2 * id):
            raise ValueError("bad SDA pin")
        self._nack = _NACK
        self.freq = freq

    def init(self, *a, **kw):
        pass

    def deinit(self):
        pass

    def _devs(self):
        return _s.load("_i2cdev").devices(self._sda, self._scl)

    def _dev(self, addr):
        dev = self._devs().get(addr)
        if dev is None:
            raise OSError(self._nack)
        _s.check(dev.name)
        return dev

    def scan(self):
        return sorted(a for a in self._devs() if 0x08 <= a <= 0x77)

    def writeto(self, addr, buf, stop=True):
        if not self._dev(addr).write(bytes(buf)):
            raise OSError(self._nack)
        return len(buf)

    def writevto(self, addr, vector, stop=True):
        return self.writeto(addr, b"".join(bytes(v) for v in vector), stop)

    def readfrom(self, addr, nbytes, stop=True):
        data = self._dev(addr).read(nbytes)
        if data is None:
            raise OSError(self._nack)
        return data

    def readfrom_into(self, addr, buf, stop=True):
        data = self.readfrom(addr, len(buf), stop)
        for i in range(len(buf)):
            buf[i] = data[i]

    def _mem(self, memaddr, addrsize):
        return memaddr.to_bytes(addrsize // 8, "big")

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self.writeto(addr, self._mem(memaddr, addrsize) + bytes(buf))

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        self.writeto(addr, self._mem(memaddr, addrsize), False)
        return self.readfrom(addr, nbytes)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        self.writeto(addr, self._mem(memaddr, addrsize), False)
        self.readfrom_into(addr, buf)


class SoftI2C(I2C):
    def __init__(self, scl, sda, *, freq=400000, timeout=50000):
        self._sda = _pin_id(sda)
        self._scl = _pin_id(scl)
        self._nack = 19  # extmod's bit-banged I2C: ENODEV on any NACK
        self.freq = freq
