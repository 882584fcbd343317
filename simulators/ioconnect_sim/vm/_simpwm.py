# machine.PWM, Signal and time_pulse_us of the virtual board (machine.py
# imports this module on first use).
#
# A PWM output is a waveform of board time: high for the first duty part of
# every period, counted from init. time_pulse_us on that pin measures it (a
# program can check its own PWM), on any other pin it times the levels of
# Pin.value(): pull-ups, the program's own outputs, or what the host drives
# with `ioconnect sim pin` (a pulse of a few milliseconds or more).
import time

from machine import _RP2, Pin, _pin_id

# Power-on defaults: esp32 LEDC 5 kHz at 50 %; rp2 a slice at its reset
# divider (125 MHz / 65536 = 1907 Hz), output low.
_DEFAULT_FREQ = 1907 if _RP2 else 5000
_DEFAULT_DUTY = 0 if _RP2 else 32768
_waves = {}  # pin id -> running PWM


class PWM:
    def __init__(self, dest, *, freq=None, duty_u16=None, duty_ns=None, invert=False):
        self._pin = _pin_id(dest)
        self._freq = _DEFAULT_FREQ
        self._duty = _DEFAULT_DUTY
        self._invert = 1 if invert else 0
        self.init(freq=freq, duty_u16=duty_u16, duty_ns=duty_ns)

    def init(self, *, freq=None, duty_u16=None, duty_ns=None, invert=None):
        if freq is not None:
            self.freq(freq)
        if duty_u16 is not None:
            self.duty_u16(duty_u16)
        if duty_ns is not None:
            self.duty_ns(duty_ns)
        if invert is not None:
            self._invert = 1 if invert else 0
        self._t0 = time.ticks_us()
        _waves[self._pin] = self

    def deinit(self):
        if _waves.get(self._pin) is self:
            del _waves[self._pin]

    def freq(self, value=None):
        if value is None:
            return self._freq
        if not 1 <= value <= 40000000:
            raise ValueError("freq out of range")
        self._freq = int(value)

    def duty_u16(self, value=None):
        if value is None:
            return self._duty
        if not 0 <= value <= 65535:
            raise ValueError("duty_u16 out of range")
        self._duty = int(value)

    def duty_ns(self, value=None):
        period_ns = 1000000000 // self._freq
        if value is None:
            return self._duty * period_ns // 65535
        self.duty_u16(min(max(value, 0), period_ns) * 65535 // period_ns)

    def _level(self, now_us):
        period_us = 1000000 / self._freq
        t = time.ticks_diff(now_us, self._t0) % period_us
        return (1 if t < period_us * self._duty / 65535 else 0) ^ self._invert

    def __repr__(self):
        return "PWM(Pin(%d), freq=%d, duty_u16=%d)" % (self._pin, self._freq, self._duty)


class Signal:
    # A pin with an optional inversion (active-low LEDs, buttons to ground).
    def __init__(self, pin, *args, invert=False, **kw):
        self._pin = pin if isinstance(pin, Pin) else Pin(pin, *args, **kw)
        self._invert = 1 if invert else 0

    def value(self, v=None):
        if v is None:
            return self._pin.value() ^ self._invert
        self._pin.value((1 if v else 0) ^ self._invert)

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


def time_pulse_us(pin, pulse_level, timeout_us=1000000):
    # -2: the pin never reached pulse_level; -1: the pulse outlasted timeout_us.
    # (extmod/machine_pulse.c: the same timeout for both waits)
    wave = _waves.get(_pin_id(pin))
    if not isinstance(pin, Pin):
        pin = Pin(pin)

    def level():
        if wave is not None:
            return wave._level(time.ticks_us())
        time.sleep_us(50)  # a host-driven level changes at millisecond pace
        return pin.value()

    start = time.ticks_us()
    while level() != pulse_level:
        if time.ticks_diff(time.ticks_us(), start) >= timeout_us:
            return -2
    start = time.ticks_us()
    while level() == pulse_level:
        if time.ticks_diff(time.ticks_us(), start) >= timeout_us:
            return -1
    return time.ticks_diff(time.ticks_us(), start)
