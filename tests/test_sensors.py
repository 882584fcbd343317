"""Sensor drivers (ioconnect.sensors, sht3x, bme280).

On every board type, through the virtual board's I2C models and on-chip
sensors: the driver's reading equals what host-side datasheet formulas make of
the raw bytes read in the same second. On the bare VM, a scripted I2C bus
answers with crafted bytes: bad CRC, wrong chip id, values out of range, the
Bosch calibration example; every fault is a field, never an exception.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunDevice
from ioconnect_host.boards import Board, board_json, list_boards, load_board
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board
from ioconnect_sim.supervisor import VirtualBoard
from sensorrefs import bme280_float, crc8

BOARDS = list_boards()


class Sim:
    def __init__(self, name: str, state: Path) -> None:
        self.board: Board = load_board(name)
        (state / "flash").mkdir(parents=True)
        (state / "flash" / "board.json").write_bytes(board_json(name))
        self.vb: VirtualBoard = start_board(name, name=f"sens-{name}", state_dir=state)
        self.t = SerialTransport(self.vb.port)

    def run(self, code: str) -> Any:
        return json.loads(self.t.exec(code).decode().strip().splitlines()[-1])

    def close(self) -> None:
        self.t.close()
        self.vb.stop()


@pytest.fixture(scope="module", params=BOARDS)
def sim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    s = Sim(request.param, tmp_path_factory.mktemp(request.param))
    yield s
    s.close()


# Read the driver, then the raw bytes; the models hold a value for one second,
# so the pair is retried until both fell in the same second.
READ_SHT = """
import json, time, machine
from ioconnect import sensors
s = sensors.Sensors(sensors.load_board())
for _ in range(5):
    t0 = time.time()
    got = s.read_one(%(name)r)
    i2c = machine.I2C(%(bus)d, sda=machine.Pin(%(sda)d), scl=machine.Pin(%(scl)d))
    i2c.writeto(%(addr)d, b"\\x24\\x00")
    time.sleep_ms(16)
    raw = list(i2c.readfrom(%(addr)d, 6))
    if time.time() == t0:
        break
print(json.dumps([got, raw]))
"""

READ_BME = """
import json, time, machine
from ioconnect import sensors
s = sensors.Sensors(sensors.load_board())
for _ in range(5):
    t0 = time.time()
    got = s.read_one(%(name)r)
    i2c = machine.I2C(%(bus)d, sda=machine.Pin(%(sda)d), scl=machine.Pin(%(scl)d))
    cal = i2c.readfrom_mem(%(addr)d, 0x88, 26) + i2c.readfrom_mem(%(addr)d, 0xE1, 7)
    i2c.writeto_mem(%(addr)d, 0xF2, b"\\x01")
    i2c.writeto_mem(%(addr)d, 0xF4, b"\\x25")
    data = i2c.readfrom_mem(%(addr)d, 0xF7, 8)
    if time.time() == t0:
        break
print(json.dumps([got, list(cal), list(data)]))
"""


def test_i2c_drivers_match_the_datasheet(sim: Sim) -> None:
    for dev in sim.board.i2c:
        args = {
            "name": dev.name,
            "bus": dev.bus,
            "sda": dev.sda,
            "scl": dev.scl,
            "addr": dev.address,
        }
        if dev.model == "sht3x":
            got, raw = sim.run(READ_SHT % args)
            raw = bytes(raw)
            assert crc8(raw[:2]) == raw[2] and crc8(raw[3:5]) == raw[5]
            temp = -45 + 175 * int.from_bytes(raw[:2], "big") / 65535
            rh = 100 * int.from_bytes(raw[3:5], "big") / 65535
            assert got == {"temp_c": round(temp, 2), "rh": round(rh, 2)}
        else:
            got, cal, data = sim.run(READ_BME % args)
            temp, hpa, rh = bme280_float(bytes(cal), bytes(data))
            # Integer (device) and floating-point (host) datasheet formulas.
            assert set(got) == {"temp_c", "hpa", "rh"}
            assert abs(got["temp_c"] - temp) <= 0.011
            assert abs(got["hpa"] - hpa) <= 0.02
            assert abs(got["rh"] - rh) <= 0.02
        assert 10 <= got["temp_c"] <= 35 and 0 <= got["rh"] <= 100


def test_chip_temperature_and_adc(sim: Sim) -> None:
    got = sim.run(
        "import json\nfrom ioconnect import sensors\n"
        "s = sensors.Sensors(sensors.load_board())\n"
        "print(json.dumps([s.names(), s.read_one('temperature'), s.read_one('adc')]))"
    )
    names, temp, adc = got
    assert names == ["temperature", "adc"] + [d.name for d in sim.board.i2c]
    chip = sim.board.sensors[0]
    # The model's signal, as each chip reports it (ESP32: whole degrees F).
    assert abs(temp["temp_c"] - chip.mean_c) <= chip.swing_c + 1.5
    assert sorted(adc) == sorted(str(p) for p in sim.board.pins.adc)
    assert all(0 < v < 65536 for v in adc.values())


def test_failed_sensors_are_fields(sim: Sim) -> None:
    names = ["temperature"] + [d.name for d in sim.board.i2c]
    sim.vb.set_fault(sensors={n: "fail" for n in names})
    try:
        got = sim.run(
            "import json\nfrom ioconnect import sensors\n"
            "s = sensors.Sensors(sensors.load_board())\n"
            f"print(json.dumps(s.read({[*names, 'nosuch']!r})))"
        )
    finally:
        sim.vb.set_fault(sensors={})
    assert got == {**{n: {"error": "eio"} for n in names}, "nosuch": {"error": "missing"}}


# -- crafted bytes on the bare VM ------------------------------------------------

FAKE_BUS = """
import json, sys
from ioconnect import sensors

class Bus:
    # Answers reads from a script: {register or "read": bytes}.
    def __init__(self, regs):
        self.regs = regs
        self.ptr = None
    def writeto(self, addr, buf):
        pass
    def readfrom_into(self, addr, buf):
        data = self.regs["read"]
        for i in range(len(buf)):
            buf[i] = data[i]
    def readfrom_mem(self, addr, reg, n):
        return bytes(self.regs.get(reg, b"\\x00" * n))[:n]
    def readfrom_mem_into(self, addr, reg, buf):
        data = self.regs[reg]
        for i in range(len(buf)):
            buf[i] = data[i]
    def writeto_mem(self, addr, reg, buf):
        pass

def reading(model, regs):
    board = {"i2c": [{"name": "x", "model": model, "bus": 0, "sda": 1, "scl": 2, "address": 0x44}]}
    s = sensors.Sensors(board)
    s._buses[(0, 1, 2)] = Bus(regs)
    return s.read_one("x")

for case in json.load(open("cases.json")):
    regs = {}
    for k, v in case["regs"].items():
        regs[k if k == "read" else int(k)] = bytes.fromhex(v)
    print(json.dumps(reading(case["model"], regs)))
"""


def sht_word(v: int, good: bool = True) -> str:
    b = v.to_bytes(2, "big")
    return (b + bytes([crc8(b) if good else crc8(b) ^ 1])).hex()


# Bosch BMP280 datasheet 3.12 worked example (T 25.08 C, p 100653.27 Pa); the
# humidity part of the calibration as a typical BME280 carries it.
BOSCH_TP = struct.pack(
    "<HhhHhhhhhhhh", 27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000
)
BOSCH_H = struct.pack("<hBBBBb", 362, 0, 313 >> 4, (313 & 0xF) | (50 & 0xF) << 4, 50 >> 4, 30)
BOSCH_DATA = bytes([415148 >> 12, (415148 >> 4) & 0xFF, (415148 & 0xF) << 4])
BOSCH_DATA += bytes([519888 >> 12, (519888 >> 4) & 0xFF, (519888 & 0xF) << 4])
BOSCH_DATA += (26000).to_bytes(2, "big")


def bme_regs(chip: int = 0x60, data: bytes = BOSCH_DATA) -> dict[str, str]:
    return {
        str(0xD0): bytes([chip]).hex(),
        str(0x88): (BOSCH_TP + b"\x00" + bytes([75])).hex(),
        str(0xE1): BOSCH_H.hex(),
        str(0xF3): "00",
        str(0xF7): data.hex(),
    }


def test_crafted_bytes(device: RunDevice, tmp_path: Path) -> None:
    cases = [
        {"model": "sht3x", "regs": {"read": sht_word(0x6666) + sht_word(0x8000)}},
        {"model": "sht3x", "regs": {"read": sht_word(0x6666, False) + sht_word(0x8000)}},
        {"model": "sht3x", "regs": {"read": sht_word(0x6666) + sht_word(0x8000, False)}},
        {"model": "sht3x", "regs": {"read": sht_word(0xFFFF) + sht_word(0x8000)}},  # 130 C
        {"model": "bme280", "regs": bme_regs()},
        {"model": "bme280", "regs": bme_regs(chip=0x58)},  # a BMP280 answers
        {"model": "bme280", "regs": bme_regs(data=bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0]))},
        {"model": "nosuch", "regs": {}},
    ]
    got = device(FAKE_BUS, cases, fs_dir=tmp_path)
    t = round(-45 + 175 * 0x6666 / 65535, 2)
    assert got[0] == {"temp_c": t, "rh": round(100 * 0x8000 / 65535, 2)}
    assert got[1] == {"error": "crc"} and got[2] == {"error": "crc"}
    assert got[3] == {"error": "range"}
    temp, hpa, rh = bme280_float(BOSCH_TP + b"\x00" + bytes([75]) + BOSCH_H, BOSCH_DATA)
    assert got[4]["temp_c"] == 25.08 and abs(temp - 25.08) < 0.01  # the datasheet's value
    assert abs(got[4]["hpa"] - 1006.53) <= 0.01 and abs(hpa - 1006.53) < 0.01
    assert abs(got[4]["rh"] - rh) <= 0.02
    assert got[5] == {"error": "id"}
    assert got[6] == {"error": "range"}
    assert got[7] == {"error": "no_driver"}


def test_user_driver_by_model(device: RunDevice, tmp_path: Path) -> None:
    (tmp_path / "lux9.py").write_text("def read(i2c, address):\n    return {'lux': address * 2}\n")
    code = (
        "import json\nfrom ioconnect import sensors\n"
        "b = {'i2c': [{'name': 'light', 'model': 'lux9', 'bus': 0, 'sda': 1, 'scl': 2,"
        " 'address': 35}]}\n"
        "s = sensors.Sensors(b)\ns._buses[(0, 1, 2)] = object()\n"
        "print(json.dumps(s.read()))"
    )
    assert device(code, fs_dir=tmp_path) == [{"light": {"lux": 70}}]
