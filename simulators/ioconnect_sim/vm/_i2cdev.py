# I2C devices of the virtual board: register-level models of the sensors in the
# board file's [[i2c]] list. Imported on the first I2C access (see
# _sensors.load), so boards that never touch I2C do not carry it in their heap.
import struct

from _sensors import board, digest, elapsed, signal


def crc8(data):
    # Sensirion CRC-8: polynomial 0x31, init 0xFF (SHT3x datasheet 4.12).
    c = 0xFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = ((c << 1) ^ 0x31) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


def _word(v):
    b = bytes((v >> 8, v & 0xFF))
    return b + bytes((crc8(b),))


class SHT3x:
    # Sensirion SHT3x-DIS: 16-bit commands; a measurement is read as
    # T msb, lsb, CRC, RH msb, lsb, CRC. Reading with nothing to send is NACKed.
    def __init__(self, name):
        self.name = name
        self.t = signal(name + ".t", 22.0, 3.0)
        self.rh = signal(name + ".rh", 45.0, 10.0)
        self.out = b""
        self.periodic = False
        self.status = 0x8010  # alert pending + reset detected, as after power-up

    def measure(self):
        t = elapsed()
        st = int((self.t.at(t) + 45) * 65535 / 175 + 0.5)
        srh = int(self.rh.at(t) * 65535 / 100 + 0.5)
        return _word(min(max(st, 0), 0xFFFF)) + _word(min(max(srh, 0), 0xFFFF))

    def write(self, buf):
        # Returns False to NACK the command.
        if len(buf) < 2:
            return len(buf) == 0  # address-only write (a scan) is ACKed
        cmd = buf[0] << 8 | buf[1]
        hi = buf[0]
        if hi in (0x24, 0x2C):  # single shot, any repeatability / clock stretching
            self.out = self.measure()
        elif cmd == 0xE000:  # fetch data (periodic mode)
            self.out = self.measure() if self.periodic else b""
        elif hi in (0x20, 0x21, 0x22, 0x23, 0x27):  # start periodic mode
            self.periodic = True
        elif cmd == 0x3093:  # break
            self.periodic = False
        elif cmd == 0x30A2:  # soft reset
            self.__init__(self.name)
        elif cmd == 0xF32D:  # read status
            self.out = _word(self.status)
        elif cmd == 0x3041:  # clear status
            self.status = 0
        elif cmd == 0x3780:  # read serial number
            d = digest(self.name + ".sn")
            self.out = _word(d[0] << 8 | d[1]) + _word(d[2] << 8 | d[3])
        else:
            return False
        return True

    def read(self, n):
        if not self.out:
            return None  # NACK: no data ready
        out = self.out[:n]
        self.out = b""
        return out + b"\xff" * (n - len(out))  # the bus idles high


# Calibration of the modelled BME280 (the worked example values of Bosch's
# BMP280 datasheet 3.12, humidity from a typical BME280 part).
_T1, _T2, _T3 = 27504, 26435, -1000
_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
_H1, _H2, _H3, _H4, _H5, _H6 = 75, 362, 0, 313, 50, 30


def bme_t_fine(adc):
    # BME280 datasheet 4.2.3, integer compensation: t_fine; T = (t_fine*5+128)>>8
    v1 = (((adc >> 3) - (_T1 << 1)) * _T2) >> 11
    d = (adc >> 4) - _T1
    return v1 + ((((d * d) >> 12) * _T3) >> 14)


def bme_p(adc, t_fine):
    # Pressure in Pa * 256 (datasheet 64-bit formula).
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = _P
    v1 = t_fine - 128000
    v2 = v1 * v1 * p6 + ((v1 * p5) << 17) + (p4 << 35)
    v1 = ((v1 * v1 * p3) >> 8) + ((v1 * p2) << 12)
    v1 = (((1 << 47) + v1) * p1) >> 33
    if v1 == 0:
        return 0
    p = (((1048576 - adc) << 31) - v2) * 3125
    p = p // v1 if p >= 0 else -(-p // v1)  # C division truncates
    v1 = (p9 * (p >> 13) * (p >> 13)) >> 25
    v2 = (p8 * p) >> 19
    return ((p + v1 + v2) >> 8) + (p7 << 4)


def bme_h(adc, t_fine):
    # Relative humidity in % * 1024 (datasheet 32-bit formula).
    v = t_fine - 76800
    a = (((adc << 14) - (_H4 << 20) - (_H5 * v)) + 16384) >> 15
    b = (((((v * _H6) >> 10) * (((v * _H3) >> 11) + 32768)) >> 10) + 2097152) * _H2 + 8192
    v = a * (b >> 14)
    v -= ((((v >> 15) * (v >> 15)) >> 7) * _H1) >> 4
    return min(max(v, 0), 419430400) >> 12


def _solve(f, target, bits, rising):
    # Smallest raw reading whose compensated value reaches target (f is monotonic).
    lo, hi = 0, (1 << bits) - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if (f(mid) >= target) == rising:
            hi = mid
        else:
            lo = mid + 1
    return lo


class BME280:
    # Bosch BME280: 8-bit register map, chip id 0x60 at 0xD0, calibration at
    # 0x88..0xA1 and 0xE1..0xE7, raw data at 0xF7..0xFE (20-bit P and T, 16-bit H).
    def __init__(self, name):
        self.name = name
        self.t = signal(name + ".t", 22.0, 3.0)
        self.p = signal(name + ".p", 1013.0, 8.0)
        self.rh = signal(name + ".rh", 45.0, 10.0)
        r = self.regs = bytearray(256)
        r[0xD0] = 0x60
        r[0x88:0xA0] = struct.pack("<HhhHhhhhhhhh", _T1, _T2, _T3, *_P)
        r[0xA1] = _H1
        r[0xE1:0xE8] = struct.pack(
            "<hBBBBb", _H2, _H3, _H4 >> 4, (_H4 & 0xF) | (_H5 & 0xF) << 4, _H5 >> 4, _H6
        )
        r[0xF7:0xFF] = b"\x80\x00\x00\x80\x00\x00\x80\x00"  # reset values: "skipped"
        self.ptr = 0

    def measure(self):
        r = self.regs
        ctrl = r[0xF4]
        t = elapsed()
        adc_t = _solve(lambda a: (bme_t_fine(a) * 5 + 128) >> 8, int(self.t.at(t) * 100), 20, True)
        tf = bme_t_fine(adc_t)
        pa = int(self.p.at(t) * 100 * 256)
        adc_p = _solve(lambda a: bme_p(a, tf), pa, 20, False)
        adc_h = _solve(lambda a: bme_h(a, tf), int(self.rh.at(t) * 1024), 16, True)
        if not (ctrl >> 2) & 7:
            adc_p = 0x80000
        if not ctrl >> 5:
            adc_t = 0x80000
        if not r[0xF2] & 7:
            adc_h = 0x8000
        r[0xF7:0xFF] = bytes(
            (adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4)
            + (adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4)
            + (adc_h >> 8, adc_h & 0xFF)
        )

    def write(self, buf):
        # [register, value, register, value, ...]; a lone byte sets the pointer.
        if buf:
            self.ptr = buf[0]
        for i in range(0, len(buf) - 1, 2):
            reg, val = buf[i], buf[i + 1]
            if reg == 0xE0 and val == 0xB6:
                self.__init__(self.name)
            elif reg in (0xF2, 0xF4, 0xF5):
                self.regs[reg] = val
                if reg == 0xF4 and val & 3 in (1, 2):  # forced mode: one measurement
                    self.measure()
                    self.regs[0xF4] &= 0xFC  # back to sleep
        return True

    def read(self, n):
        if self.regs[0xF4] & 3 == 3 and self.ptr + n > 0xF7:  # normal mode
            self.measure()
        out = bytearray(n)
        for i in range(n):
            out[i] = self.regs[(self.ptr + i) & 0xFF]
        self.ptr = (self.ptr + n) & 0xFF
        return bytes(out)


_MODELS = {"sht3x": SHT3x, "bme280": BME280}
# (sda, scl) -> {address: device}; the devices are made when this module loads
# (at power-on when preloaded) and keep their state while powered. A bus asks
# for its devices on every transfer: that must allocate nothing.
_by_pins = {}
for _spec in board.get("i2c", ()):
    _by_pins.setdefault((_spec["sda"], _spec["scl"]), {})[_spec["address"]] = _MODELS[
        _spec["model"]
    ](_spec["name"])
_NONE = {}


def devices(sda, scl):
    # {address: device} wired to these pins.
    return _by_pins.get((sda, scl), _NONE)
