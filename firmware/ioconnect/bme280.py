# Bosch BME280 pressure/humidity/temperature sensor (datasheet BST-BME280-DS002):
# chip id 0x60 at 0xD0, calibration at 0x88..0xA1 and 0xE1..0xE7, one forced
# measurement (x1 oversampling), raw data at 0xF7..0xFE, integer compensation
# of datasheet 4.2.3 (32-bit T and H, 64-bit P).
# Driver interface: read(i2c, address) -> {"temp_c", "rh", "hpa"}; raises
# SensorError("id"|"range"); bus faults stay OSError.
import struct
import time

from micropython import const

from ioconnect.sensors import SensorError

_REG_ID = const(0xD0)
_CHIP_ID = const(0x60)
_REG_CALIB_TP = const(0x88)  # 26 bytes: T1..T3, P1..P9, (0xA0 unused), H1 at 0xA1
_REG_CALIB_H = const(0xE1)  # 7 bytes: H2..H6
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_DATA = const(0xF7)
_HUM_X1 = b"\x01"
_MEAS_FORCED_X1 = b"\x25"  # osrs_t x1, osrs_p x1, forced mode
_MEASURE_MS = const(10)  # x1/x1/x1: 9.3 ms max (datasheet 9.1)
_SKIPPED_20 = const(0x80000)  # raw value of a measurement that was not made

_data = bytearray(8)


class Calibration:
    def __init__(self, tp, h):
        (self.t1, self.t2, self.t3, self.p1, self.p2, self.p3, self.p4, self.p5, self.p6,
         self.p7, self.p8, self.p9) = struct.unpack("<HhhHhhhhhhhh", tp)
        self.h1 = tp[25]
        self.h2 = struct.unpack("<h", h[0:2])[0]
        self.h3 = h[2]
        e4 = h[3] - 256 if h[3] > 127 else h[3]  # signed msb of H4 and H5
        e6 = h[5] - 256 if h[5] > 127 else h[5]
        self.h4 = (e4 << 4) | (h[4] & 0x0F)
        self.h5 = (e6 << 4) | (h[4] >> 4)
        self.h6 = h[6] - 256 if h[6] > 127 else h[6]


def _t_fine(c, adc_t):
    v1 = (((adc_t >> 3) - (c.t1 << 1)) * c.t2) >> 11
    v2 = (((((adc_t >> 4) - c.t1) * ((adc_t >> 4) - c.t1)) >> 12) * c.t3) >> 14
    return v1 + v2


def _pressure_pa256(c, adc_p, t_fine):
    # Q24.8 Pa (datasheet BME280_compensate_P_int64).
    v1 = t_fine - 128000
    v2 = v1 * v1 * c.p6
    v2 = v2 + ((v1 * c.p5) << 17)
    v2 = v2 + (c.p4 << 35)
    v1 = ((v1 * v1 * c.p3) >> 8) + ((v1 * c.p2) << 12)
    v1 = (((1 << 47) + v1) * c.p1) >> 33
    if v1 == 0:
        raise SensorError("range")  # avoids a division by zero on a blank part
    p = 1048576 - adc_p
    p = (((p << 31) - v2) * 3125)
    p = p // v1 if p >= 0 else -((-p) // v1)  # C's int64 division truncates
    v1 = (c.p9 * (p >> 13) * (p >> 13)) >> 25
    v2 = (c.p8 * p) >> 19
    return ((p + v1 + v2) >> 8) + (c.p7 << 4)


def _humidity_1024(c, adc_h, t_fine):
    # Q22.10 %RH (datasheet bme280_compensate_H_int32).
    v = t_fine - 76800
    x = ((adc_h << 14) - (c.h4 << 20) - (c.h5 * v) + 16384) >> 15
    y = (((((v * c.h6) >> 10) * (((v * c.h3) >> 11) + 32768)) >> 10) + 2097152) * c.h2 + 8192
    v = x * (y >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c.h1) >> 4)
    v = 0 if v < 0 else v
    v = 419430400 if v > 419430400 else v
    return v >> 12


def compensate(cal, data):
    # Raw data registers 0xF7..0xFE -> (degrees C, hPa, %RH).
    adc_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
    adc_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
    adc_h = (data[6] << 8) | data[7]
    if adc_t == _SKIPPED_20 or adc_p == _SKIPPED_20:
        raise SensorError("range")  # the measurement did not run
    tf = _t_fine(cal, adc_t)
    temp_c = ((tf * 5 + 128) >> 8) / 100
    hpa = _pressure_pa256(cal, adc_p, tf) / 25600
    rh = _humidity_1024(cal, adc_h, tf) / 1024
    # Operating range (datasheet table 1): -40..85 C, 300..1100 hPa.
    if not -40 <= temp_c <= 85 or not 300 <= hpa <= 1100:
        raise SensorError("range")
    return temp_c, hpa, rh


def read(i2c, address):
    if i2c.readfrom_mem(address, _REG_ID, 1)[0] != _CHIP_ID:
        raise SensorError("id")
    cal = Calibration(i2c.readfrom_mem(address, _REG_CALIB_TP, 26), i2c.readfrom_mem(address, _REG_CALIB_H, 7))
    i2c.writeto_mem(address, _REG_CTRL_HUM, _HUM_X1)  # takes effect with ctrl_meas
    i2c.writeto_mem(address, _REG_CTRL_MEAS, _MEAS_FORCED_X1)
    time.sleep_ms(_MEASURE_MS)
    for _ in range(10):
        if not i2c.readfrom_mem(address, _REG_STATUS, 1)[0] & 0x08:  # measuring
            break
        time.sleep_ms(2)
    i2c.readfrom_mem_into(address, _REG_DATA, _data)
    temp_c, hpa, rh = compensate(cal, _data)
    return {"temp_c": round(temp_c, 2), "rh": round(rh, 2), "hpa": round(hpa, 2)}
