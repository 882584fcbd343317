# machine.Timer and Pin.irq of the virtual board (machine.py imports this
# module on first use).
#
# One thread, the ticker, stands in for the timer and GPIO interrupt hardware:
# it sleeps until the next timer is due (5 ms at most) and looks at the pin
# levels the host drives (`ioconnect sim pin`, kept in faults.json). It never
# runs a user callback itself: like a board's ISR it only calls
# micropython.schedule, and the VM runs the callback on the main thread at its
# next safe point (between bytecodes), so callbacks may allocate. A callback
# still queued when the next tick comes is not queued twice (a board's pending
# bit): a program that does not reach a safe point loses ticks, it is not
# flooded with them.
#
# Ctrl-C: the supervisor signals only the main thread (interrupt.py uses
# tgkill), so a KeyboardInterrupt never lands in the ticker; one that lands in
# a callback is sent again (see _run).
import _thread
import json
import micropython
import os
import time

import _simboard as _b
from machine import _RP2, Pin

_POLL_US = 5000  # longest ticker sleep: pin edges are seen within this
_MIN_PERIOD_US = 200  # faster timers coalesce into one callback per tick anyway

_timers = ()  # started Timers; only the main thread replaces this tuple
_irqs = ()  # _PinIrq objects with a handler; same rule
_by_id = {}  # esp32: one Timer object per hardware timer id
_started = False


def _start():
    global _started
    if not _started:
        _started = True
        _thread.start_new_thread(_tick, ())


def _tick():
    while True:
        now = time.ticks_us()
        wait = _POLL_US
        for t in _timers:
            w = t._due(now)
            if w < wait:
                wait = w
        if _irqs:
            _watch.poll()
        if wait > 0:
            time.sleep_us(wait)


def _run(callback, arg):
    # The scheduler prints and drops an exception from a callback, so a Ctrl-C
    # that lands here would never stop the program. Ask the supervisor to
    # interrupt again: the next one lands in the program (callbacks are short).
    try:
        callback(arg)
    except KeyboardInterrupt:
        _b.ctl("intr")


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, *args, **kw):
        if _RP2 and id != -1:
            raise ValueError("Timer doesn't exist")  # rp2: virtual timers only
        if not _RP2 and not 0 <= id <= 3:
            raise ValueError("invalid Timer number")  # esp32: hardware timers 0..3
        self._id = id
        self._on = False
        self._gen = 0  # bumped by init/deinit: a tick queued before is dropped
        self._queued = False
        self._cb = None
        self._mode = Timer.PERIODIC
        self._period_us = 0
        self._next = 0
        self._fire_ref = self._fire  # one bound method, not one per tick
        if args or kw:
            self.init(*args, **kw)

    def init(self, *, mode=PERIODIC, freq=-1, period=-1, callback=None, tick_hz=1000, hard=None):
        self.deinit()
        if freq > 0:
            period_us = 1000000 / freq
        elif period >= 0:
            period_us = period * 1000000 / tick_hz
        else:
            period_us = 0xFFFFFFFF * 1000  # as the ports: no period given, a very long one
        self._period_us = max(int(period_us), _MIN_PERIOD_US)
        self._mode = mode
        self._cb = callback
        self._next = time.ticks_add(time.ticks_us(), self._period_us)
        other = _by_id.get(self._id)
        if other is not None and other is not self and self._id >= 0:
            other.deinit()  # one hardware timer, one owner
        if self._id >= 0:
            _by_id[self._id] = self
        self._on = True  # last: the ticker reads the fields above once it sees this
        global _timers
        _timers = tuple(t for t in _timers if t is not self) + (self,)
        _start()

    def deinit(self):
        global _timers
        self._on = False
        self._gen += 1
        if self in _timers:
            _timers = tuple(t for t in _timers if t is not self)

    def value(self):
        # Microseconds until the next tick are all a program can learn here (ms).
        if not self._on:
            return 0
        return max(time.ticks_diff(self._next, time.ticks_us()), 0) // 1000

    def __repr__(self):
        mode = "PERIODIC" if self._mode == Timer.PERIODIC else "ONE_SHOT"
        return "Timer(%d, mode=%s, period=%dus)" % (self._id, mode, self._period_us)

    # -- ticker side (another thread): no allocation, no callbacks --------------
    def _due(self, now):
        # Microseconds until this timer wants the ticker again.
        if not self._on:
            return _POLL_US
        left = time.ticks_diff(self._next, now)
        if left > 0:
            return left
        if not self._queued:
            self._queued = True
            try:
                micropython.schedule(self._fire_ref, self._gen)
            except RuntimeError:
                self._queued = False  # queue full: this tick is lost, as on a board
        if self._mode != Timer.PERIODIC:
            self._on = False
            return _POLL_US
        self._next = time.ticks_add(self._next, self._period_us)
        if time.ticks_diff(self._next, now) <= 0:
            self._next = time.ticks_add(now, self._period_us)  # fell behind: skip, not burst
        return time.ticks_diff(self._next, now)

    # -- main thread, at a safe point -----------------------------------------
    def _fire(self, gen):
        self._queued = False
        if gen == self._gen and self._cb is not None:
            _run(self._cb, self)


class _PinIrq:
    # What Pin.irq() returns: flags() (the edge being handled) and trigger().
    def __init__(self, pin, handler, trigger):
        self._pin = pin
        self._handler = handler
        self._trigger = trigger
        self._flags = 0
        self._level = pin.value()
        self._fire_ref = self._fire

    def flags(self):
        return self._flags

    def trigger(self, new=None):
        if new is None:
            return self._trigger
        self._trigger = new

    def _edge(self, level):
        # Ticker side: a level seen in faults.json.
        if level == self._level:
            return
        self._level = level
        edge = Pin.IRQ_RISING if level else Pin.IRQ_FALLING
        if edge & self._trigger:
            try:
                micropython.schedule(self._fire_ref, edge)
            except RuntimeError:
                pass  # queue full: the edge is lost, as an overrun pending bit

    def _fire(self, edge):
        self._flags = edge
        if self._handler is not None:
            _run(self._handler, self._pin)


_pin_irqs = {}  # pin id -> _PinIrq
_watch = None


def pin_irq(pin, handler, trigger):
    # Pin.irq(): with no arguments, the pin's irq object as it is.
    global _irqs, _watch
    irq = _pin_irqs.get(pin._id)
    if handler is None and trigger is None and irq is not None:
        return irq
    if trigger is None:
        trigger = Pin.IRQ_RISING | Pin.IRQ_FALLING
    irq = _PinIrq(pin, handler, trigger)
    _pin_irqs[pin._id] = irq
    if handler is not None and _watch is None:
        _watch = _PinWatch()  # here, on the main thread: it mounts for a moment
    _irqs = tuple(i for i in _pin_irqs.values() if i._handler is not None)
    if _irqs:
        _start()
    return irq


class _PinWatch:
    # The ticker's view of faults.json: its own handle (the main thread's is
    # in use at any time), read into one buffer and parsed only when changed.
    def __init__(self):
        path = _b.cfg.get("faults_path", "")
        folder, _, name = path.rpartition("/")
        self._f = None
        if path:
            # The flash covers "/": reach the host folder through a short mount.
            os.mount(os.VfsPosix(folder), "/.simstate")
            try:
                self._f = open("/.simstate/" + name, "rb")
            finally:
                os.umount("/.simstate")
        self._buf = bytearray(1024)
        self._last = bytearray(1024)

    def poll(self):
        if self._f is None:
            return
        self._f.seek(0)
        n = self._f.readinto(self._buf)
        if not n or self._buf == self._last:
            return
        self._last[:] = self._buf
        try:
            levels = json.loads(bytes(self._buf[:n]).strip()).get("pins", {})
        except ValueError:
            return  # caught mid-write: the next poll sees it whole
        for irq in _irqs:
            level = levels.get(str(irq._pin._id))
            if level is not None:
                irq._edge(level)
