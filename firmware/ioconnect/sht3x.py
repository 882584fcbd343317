# Sensirion SHT3x-DIS humidity/temperature sensor (datasheet v7, 2019):
# single-shot measurement, high repeatability, no clock stretching (0x2400),
# then six bytes: T msb, T lsb, CRC, RH msb, RH lsb, CRC.
# Driver interface: read(i2c, address) -> {"temp_c", "rh"}; raises
# SensorError("crc"|"range") on bad data; bus faults stay OSError.
import time

from micropython import const

from ioconnect.sensors import SensorError

_MEASURE_HIGH = b"\x24\x00"
_MEASURE_MS = const(16)  # high repeatability: 15.5 ms max (datasheet table 4)
_buf = bytearray(6)


def crc8(buf, start, end):
    # CRC-8, polynomial 0x31, init 0xFF, no reflection (datasheet 4.12).
    c = 0xFF
    for i in range(start, end):
        c ^= buf[i]
        for _ in range(8):
            c = ((c << 1) ^ 0x31) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


def convert(buf):
    # Raw words -> (degrees C, %RH), datasheet 4.13.
    if crc8(buf, 0, 2) != buf[2] or crc8(buf, 3, 5) != buf[5]:
        raise SensorError("crc")
    temp_c = -45 + 175 * ((buf[0] << 8) | buf[1]) / 65535
    rh = 100 * ((buf[3] << 8) | buf[4]) / 65535
    # Specified ranges: -40..125 C, 0..100 %RH; -45 and 130 C are the raw
    # extremes a stuck or floating bus produces.
    if not -40 <= temp_c <= 125:
        raise SensorError("range")
    return temp_c, rh


def read(i2c, address):
    i2c.writeto(address, _MEASURE_HIGH)
    time.sleep_ms(_MEASURE_MS)
    i2c.readfrom_into(address, _buf)
    temp_c, rh = convert(_buf)
    return {"temp_c": round(temp_c, 2), "rh": round(rh, 2)}
