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


# Calibration words, in a tuple (a class instance would be a dict of 18 names:
# about 1.3 KB, allocated on every reading on a loop's fragmented heap).
_T1, _T2, _T3 = const(0), const(1), const(2)
_P1, _P2, _P3, _P4, _P5, _P6, _P7, _P8, _P9 = (
    const(3), const(4), const(5), const(6), const(7), const(8), const(9), const(10), const(11),
)
_H1, _H2, _H3, _H4, _H5, _H6 = const(12), const(13), const(14), const(15), const(16), const(17)

_cals = {}  # type: dict  # address -> calibration: fixed in the chip NVM, read once


def calibration(tp, h):
    # tp: 26 bytes from 0x88, h: 7 bytes from 0xE1 -> the 18 calibration words.
    e4 = h[3] - 256 if h[3] > 127 else h[3]  # signed msb of H4 and H5
    e6 = h[5] - 256 if h[5] > 127 else h[5]
    return struct.unpack("<HhhHhhhhhhhh", tp) + (
        tp[25],
        struct.unpack("<h", h[0:2])[0],
        h[2],
        (e4 << 4) | (h[4] & 0x0F),
        (e6 << 4) | (h[4] >> 4),
        h[6] - 256 if h[6] > 127 else h[6],
    )


def _t_fine(c, adc_t):
    v1 = (((adc_t >> 3) - (c[_T1] << 1)) * c[_T2]) >> 11
    v2 = (((((adc_t >> 4) - c[_T1]) * ((adc_t >> 4) - c[_T1])) >> 12) * c[_T3]) >> 14
    return v1 + v2


def _pressure_pa256(c, adc_p, t_fine):
    # Q24.8 Pa (datasheet BME280_compensate_P_int64).
    v1 = t_fine - 128000
    v2 = v1 * v1 * c[_P6]
    v2 = v2 + ((v1 * c[_P5]) << 17)
    v2 = v2 + (c[_P4] << 35)
    v1 = ((v1 * v1 * c[_P3]) >> 8) + ((v1 * c[_P2]) << 12)
    v1 = (((1 << 47) + v1) * c[_P1]) >> 33
    if v1 == 0:
        raise SensorError("range")  # avoids a division by zero on a blank part
    p = 1048576 - adc_p
    p = (((p << 31) - v2) * 3125)
    p = p // v1 if p >= 0 else -((-p) // v1)  # C's int64 division truncates
    v1 = (c[_P9] * (p >> 13) * (p >> 13)) >> 25
    v2 = (c[_P8] * p) >> 19
    return ((p + v1 + v2) >> 8) + (c[_P7] << 4)


def _humidity_1024(c, adc_h, t_fine):
    # Q22.10 %RH (datasheet bme280_compensate_H_int32).
    v = t_fine - 76800
    x = ((adc_h << 14) - (c[_H4] << 20) - (c[_H5] * v) + 16384) >> 15
    y = (((((v * c[_H6]) >> 10) * (((v * c[_H3]) >> 11) + 32768)) >> 10) + 2097152) * c[_H2] + 8192
    v = x * (y >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c[_H1]) >> 4)
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
    cal = _cals.get(address)
    if cal is None:
        cal = calibration(i2c.readfrom_mem(address, _REG_CALIB_TP, 26), i2c.readfrom_mem(address, _REG_CALIB_H, 7))
        _cals[address] = cal
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
