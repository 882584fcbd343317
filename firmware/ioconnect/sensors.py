# The board's sensors, read as its board file (board.json on the device: the
# boards/<name>.toml the host tools provisioned, as JSON) describes them:
#   [sensors.temperature]  the chip's own sensor (source: how this chip reads it)
#   pins.adc               raw ADC channels, read_u16() per GPIO
#   [[i2c]]                I2C sensors; `model` names the driver module
# A driver is a module with read(i2c, address) -> dict, found as
# ioconnect.<model> (shipped: sht3x, bme280) or <model> on sys.path (a user's
# /lib/<model>.py). Readings are {name: {field: value}}; a sensor that fails
# reads {"error": reason} (eio, crc, range, id, no_driver, ...), never raises.
import json

from micropython import const

BOARD_PATH = "board.json"
_EIO = const(5)
_I2C_HZ = const(100000)


class SensorError(ValueError):
    # .reason is the short code that goes into the message.
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def load_board(path=BOARD_PATH):
    try:
        with open(path) as f:
            board = json.load(f)
    except OSError:
        raise SensorError("no_board")
    except ValueError:
        raise SensorError("board_corrupt")
    if not isinstance(board, dict):
        raise SensorError("board_corrupt")
    return board


def _reason(e):
    if isinstance(e, SensorError):
        return e.reason
    if isinstance(e, OSError):
        # A NACK (ENODEV on esp32, EIO on rp2) and a dead bus look alike here.
        return "eio" if e.errno in (_EIO, 19, 110, 116) else "os_%s" % e.errno
    return "internal"


def chip_temperature(source):
    # Degrees C from the chip's own sensor, by board file source.
    if source == "esp32_raw_temperature":
        import esp32

        return (esp32.raw_temperature() - 32) * 5 / 9  # the ESP32 reports Fahrenheit
    if source == "esp32_mcu_temperature":
        import esp32

        return esp32.mcu_temperature()  # type: ignore[attr-defined]  # S2/S3/C3 only
    if source == "rp2_adc4":
        import machine

        v = machine.ADC(4).read_u16() * 3.3 / 65535
        return 27 - (v - 0.706) / 0.001721  # RP2040 datasheet 4.9.5
    raise SensorError("no_driver")


def _driver(model):
    try:
        return __import__("ioconnect." + model, None, None, ("read",))
    except ImportError:
        pass
    try:
        return __import__(model)
    except ImportError:
        raise SensorError("no_driver")


class Sensors:
    def __init__(self, board):
        # Only what reading needs is kept of the board file (the rest, USB ids,
        # flash layout, would cost RAM for as long as the loop runs).
        self.temperature = board.get("sensors", {}).get("temperature")
        self.adc = board.get("pins", {}).get("adc") or ()
        self.i2c = board.get("i2c") or ()
        self._buses = {}

    def names(self):
        # Reading names in the board file's order (the payload keeps it).
        out = []
        if self.temperature:
            out.append("temperature")
        if self.adc:
            out.append("adc")
        for dev in self.i2c:
            out.append(dev["name"])
        return out

    def _bus(self, dev):
        key = (dev.get("bus", 0), dev["sda"], dev["scl"])
        bus = self._buses.get(key)
        if bus is None:
            import machine

            bus = machine.I2C(key[0], sda=machine.Pin(key[1]), scl=machine.Pin(key[2]), freq=_I2C_HZ)
            self._buses[key] = bus
        return bus

    def prepare(self):
        # Load the drivers and open the buses now (a long-running loop wants its
        # code in RAM before its first reading). A fault here shows up later as
        # the reading's error, not here.
        for dev in self.i2c:
            try:
                _driver(dev["model"])
                self._bus(dev)
            except (SensorError, OSError, ValueError):
                pass

    def _temperature(self):
        c = chip_temperature(self.temperature.get("source"))
        if not -40 <= c <= 125:  # outside every supported chip's range
            raise SensorError("range")
        return {"temp_c": round(c, 2)}

    def _adc(self):
        import machine

        out = {}
        for gpio in self.adc:
            out[str(gpio)] = machine.ADC(machine.Pin(gpio)).read_u16()
        return out

    def _i2c(self, dev):
        return _driver(dev["model"]).read(self._bus(dev), dev["address"])

    def read_one(self, name):
        try:
            if name == "temperature" and self.temperature:
                return self._temperature()
            if name == "adc" and self.adc:
                return self._adc()
            for dev in self.i2c:
                if dev["name"] == name:
                    return self._i2c(dev)
            raise SensorError("missing")
        except MemoryError:
            raise  # the loop's business, not a sensor fault
        except Exception as e:  # a failed sensor is a field, never a crash
            return {"error": _reason(e)}

    def read(self, names=None):
        out = {}
        for name in names or self.names():
            out[name] = self.read_one(name)
        return out
