"""Reference sensor math written from the datasheets, for tests of the virtual
board's sensor models and of the firmware's drivers (never their code)."""

from __future__ import annotations

import struct


def crc8(data: bytes) -> int:
    """Sensirion CRC-8 (polynomial 0x31, init 0xFF), written from the datasheet."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def bme280_float(calib: bytes, data: bytes) -> tuple[float, float, float]:
    """Bosch BME280 datasheet 8.1 floating-point compensation: (degC, hPa, %RH)."""
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack("<HhhHhhhhhhhh", calib[:24])
    h1 = calib[25]
    e = calib[26:]
    h2 = struct.unpack("<h", e[0:2])[0]
    h3 = e[2]
    h4 = (struct.unpack("b", e[3:4])[0] << 4) | (e[4] & 0x0F)
    h5 = (struct.unpack("b", e[5:6])[0] << 4) | (e[4] >> 4)
    h6 = struct.unpack("b", e[6:7])[0]
    adc_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
    adc_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
    adc_h = (data[6] << 8) | data[7]
    v1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
    v2 = ((adc_t / 131072.0 - t1 / 8192.0) ** 2) * t3
    t_fine = v1 + v2
    temp = t_fine / 5120.0
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * p6 / 32768.0 + v1 * p5 * 2.0
    v2 = v2 / 4.0 + p4 * 65536.0
    v1 = (p3 * v1 * v1 / 524288.0 + p2 * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * p1
    p = 1048576.0 - adc_p
    p = (p - v2 / 4096.0) * 6250.0 / v1
    v1 = p9 * p * p / 2147483648.0
    v2 = p * p8 / 32768.0
    p = p + (v1 + v2 + p7) / 16.0
    h = t_fine - 76800.0
    h = (adc_h - (h4 * 64.0 + h5 / 16384.0 * h)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * h * (1.0 + h3 / 67108864.0 * h))
    )
    h = h * (1.0 - h1 * h / 524288.0)
    return temp, p / 100.0, min(max(h, 0.0), 100.0)
