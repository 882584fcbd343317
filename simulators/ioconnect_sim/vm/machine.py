# machine, as the virtual board's firmware sees it. Shadows the unix port's
# own (weaker) machine module: the supervisor preloads this file before the
# flash is mounted, so `import machine` finds it in sys.modules.
# Resets never return: they tell the supervisor (a control line) and block
# until it kills the VM and boots a new one with the matching reset cause.
import time

import _sensors as _s
import _simboard as _b
from micropython import const

PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)
PIN_WAKE = const(2)
EXT0_WAKE = const(2)
EXT1_WAKE = const(3)
TIMER_WAKE = const(4)
TOUCHPAD_WAKE = const(5)
ULP_WAKE = const(6)

_board = _s.board
_pins = _board.get("pins", {})
_RP2 = _board.get("port") == "rp2"
# errno of an I2C transfer the device NACKs: ENODEV from the esp32 port's
# hardware I2C, EIO from rp2's (ports/rp2/machine_i2c.c); SoftI2C says ENODEV.
_NACK = 5 if _RP2 else 19
_freq = _board.get("cpu_freq_hz", 160000000)


def _halt():
    while True:
        time.sleep(1)


def reset():
    _b.ctl("reset")
    _halt()


def soft_reset():
    _b.ctl("soft")
    _halt()


def bootloader(value=None):
    # rp2: the boot ROM's USB drive (BOOTSEL); esp32: the ROM's serial download
    # mode (ioconnect_sim/romboot.py). The supervisor shows either.
    _b.ctl("bootloader")
    _halt()


def deepsleep(time_ms=0):
    _b.ctl("deepsleep %d" % time_ms)
    _halt()


def lightsleep(time_ms=None):
    if time_ms is None:
        _halt()
    time.sleep_ms(time_ms)


def reset_cause():
    return _b.reset_cause


def wake_reason():
    return TIMER_WAKE if _b.reset_cause == DEEPSLEEP_RESET else 0


def unique_id():
    n = _board.get("unique_id_bytes", 6)
    if n == 6:  # the ESP32 base MAC: Espressif OUI + 3 device bytes
        oui = bytes(int(x, 16) for x in _board.get("mac_oui", "24:0a:c4").split(":"))
        return oui + _s.digest("mac")[:3]
    return _s.digest("uid")[:n]


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    _freq = hz


def idle():
    time.sleep_ms(1)


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


class WDT:
    # Started for good, as on the chips; the supervisor resets the board when
    # feed() stops coming.
    def __init__(self, id=0, timeout=5000):
        if _RP2 and timeout > 8388:
            raise ValueError("timeout exceeds 8388ms")  # rp2 hardware limit
        _b.ctl("wdt %d" % timeout)

    def feed(self):
        _b.ctl("feed")


def _pin_id(p):
    if isinstance(p, Pin):
        return p._id
    if isinstance(p, str):
        named = _pins.get("named", {})
        if p not in named:
            raise ValueError('unknown named pin "%s"' % p)
        return named[p]
    if not 0 <= p < _pins.get("gpio_count", 40):
        raise ValueError("invalid pin")
    return p


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    ALT = 3
    PULL_UP = 1
    PULL_DOWN = 2
    # esp32: GPIO_INTR_POSEDGE/NEGEDGE; rp2: GPIO_IRQ_EDGE_RISE/FALL
    IRQ_RISING = 8 if _RP2 else 1
    IRQ_FALLING = 4 if _RP2 else 2
    _levels = {}  # driven/external level per pin, for this boot

    def __init__(self, id, mode=-1, pull=-1, *, value=None, **kw):
        self._id = _pin_id(id)
        self._mode = 0
        self._pull = None
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None, **kw):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            Pin._levels[self._id] = 1 if value else 0

    def value(self, v=None):
        if v is None:
            if self._mode == Pin.IN:
                level = _host_level(self._id)  # `ioconnect sim pin` drives inputs
                if level is not None:
                    return level
            if self._id in Pin._levels:
                return Pin._levels[self._id]
            return 1 if self._pull == Pin.PULL_UP else 0
        Pin._levels[self._id] = 1 if v else 0

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    high = on
    low = off

    def toggle(self):
        self.value(1 - self.value())

    def mode(self, m=None):
        if m is None:
            return self._mode
        self._mode = m

    def pull(self, p=None):
        if p is None:
            return self._pull
        self._pull = p

    def irq(self, handler=None, trigger=None, *, priority=1, wake=None, hard=False):
        # Edges come from the host (`ioconnect sim pin`); handlers run through
        # micropython.schedule (also for hard=True: Python never runs in an ISR here).
        return _s.load("_simtimer").pin_irq(self, handler, trigger)

    def __repr__(self):
        return "Pin(%s)" % self._id


def _host_level(pin_id):
    # The level the host drives on an input pin, or None (see supervisor.drive_pin).
    return _b.faults().get("pins", {}).get(str(pin_id))


# Peripherals in their own shims, imported on first use (machine.Timer, ...).
_LAZY = {
    "Timer": "_simtimer",
    "UART": "_simuart",
    "SPI": "_simspi",
    "SoftSPI": "_simspi",
    "PWM": "_simpwm",
    "time_pulse_us": "_simpwm",
    "Signal": "_simpwm",
}


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3
    CORE_TEMP = 4

    def __init__(self, pin, *, atten=None):
        adc = _pins.get("adc", ())
        if _RP2 and isinstance(pin, int) and 0 <= pin <= 4:
            ch = pin  # ADC(0..3) or ADC(4), the temperature sensor
        elif _RP2:
            ch = _pin_id(pin) - 26
            if _pin_id(pin) not in adc:
                raise ValueError("Pin doesn't have ADC capabilities")
        else:
            ch = _pin_id(pin)
            if ch not in adc:
                raise ValueError("invalid pin")
        self._ch = ch
        self._rp2_temp = _RP2 and ch == 4

    def read_u16(self):
        if self._rp2_temp:
            # RP2040 datasheet 4.9.5: V = 0.706 - (T - 27) * 0.001721, 12-bit ADC
            # at 3.3 V, scaled to 16 bits as the port does.
            v = 0.706 - (_s.temperature() - 27) * 0.001721
            raw = min(max(int(v / 3.3 * 4095 + 0.5), 0), 4095)
            return raw << 4 | raw >> 8
        v = _s.signal("adc%d" % self._ch, 1.2, 0.3).now()
        return int(v / 3.3 * 65535)

    def read(self):
        return self.read_u16() >> 4

    def read_uv(self):
        return self.read_u16() * 3300000 // 65535

    def atten(self, a):
        pass

    def width(self, w):
        pass


def _days(y, m, d):
    # Days since 1970-01-01 of a proleptic Gregorian date.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


class RTC:
    # The unix clock (UTC) plus whatever offset datetime() was set to.
    _offset = 0

    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        if dt is not None:
            secs = _days(dt[0], dt[1], dt[2]) * 86400 + dt[4] * 3600 + dt[5] * 60 + dt[6]
            RTC._offset = secs - time.time()
            return None
        t = time.time() + RTC._offset
        s = int(t)
        g = time.gmtime(s)
        sub = 0 if _RP2 else int((t - s) * 1000000)  # esp32 counts microseconds
        return (g[0], g[1], g[2], g[6], g[3], g[4], g[5], sub)

    def init(self, dt):
        self.datetime(dt)


def _make_signals():
    # The signals behind every ADC channel and the on-chip temperature sensor
    # are shim state (a board reads them with C code that keeps nothing on the
    # heap): made now, with the shims, whose heap the supervisor counts as the
    # board's own. Made at the firmware's first reading instead, they landed
    # wherever its garbage left room, high in its heap, and stayed.
    for pin in _pins.get("adc", ()):
        _s.signal("adc%d" % (pin - 26 if _RP2 else pin), 1.2, 0.3)
    spec = _board.get("sensors", {}).get("temperature", {})
    _s.signal("temperature", spec.get("mean_c", 25.0), spec.get("swing_c", 2.0))


_make_signals()


def __getattr__(name):
    if name in _LAZY:
        return getattr(_s.load(_LAZY[name]), name)
    # I2C and SoftI2C live in _machx, imported on first use (with the sensor
    # models of _i2cdev) unless the supervisor preloaded them.
    if name in ("I2C", "SoftI2C"):
        return getattr(_s.load("_machx"), name)
    # The VM's own wording for a module without the name (py/runtime.c).
    raise AttributeError("module 'machine' has no attribute '%s'" % name)
