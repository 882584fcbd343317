# esp32, as the virtual board's firmware sees it (ESP32-family boards only).
# The temperature function is the one the chip's MicroPython offers:
# raw_temperature() on the ESP32 (degrees Fahrenheit, uncalibrated), and
# mcu_temperature() on the S2/S3/C3 (degrees Celsius, rounded to an int).
# A sensor set to "fail" by the host raises OSError(EIO).
import _sensors as _s

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True
HEAP_DATA = 4  # MALLOC_CAP_8BIT
HEAP_EXEC = 1  # MALLOC_CAP_EXEC

if _s.board.get("chip", "esp32") == "esp32":

    def raw_temperature():
        return int(_s.temperature() * 9 / 5 + 32 + 0.5)

else:

    def mcu_temperature():
        return int(_s.temperature() + 0.5)


def wake_on_touch(wake):
    pass


def wake_on_ulp(wake):
    pass


def wake_on_ext0(pin, level=False):
    pass


def wake_on_ext1(pins, level=False):
    pass


def gpio_deep_sleep_hold(enable):
    pass


def idf_heap_info(capabilities):
    # One IDF data heap region: (total, free, largest free block, minimum free).
    return [(131072, 65536, 57344, 49152)] if capabilities & HEAP_DATA else []
