# time, as a board's: the tick counters start at zero when the board powers on
# (or is reset) and run on across a soft reset. The unix port counts from the
# host's boot instead, so the supervisor passes the moment of power-on
# (IOCONNECT_BOOT_US, on the same monotonic clock) and the ticks count from it.
# Everything else is the unix port's own time module.
import uos as _os
import usys as _sys
import utime as _t
from utime import *  # noqa: F403 - the port's functions, as `time` has them

_boot_us = int(_os.getenv("IOCONNECT_BOOT_US") or _t.ticks_us())
_boot_ms = _boot_us // 1000
_cpu_per_us = 1  # ticks_cpu rate: rp2 counts microseconds, esp32 CPU cycles (set at power-on)


def ticks_ms():
    return _t.ticks_add(_t.ticks_ms(), -_boot_ms)


def ticks_us():
    return _t.ticks_add(_t.ticks_us(), -_boot_us)


def ticks_cpu():
    return _t.ticks_add(_t.ticks_us(), -_boot_us) * _cpu_per_us


# `import utime` names the same module on a board.
_sys.modules["utime"] = _sys.modules["time"]
del _os, _sys  # keep the module's names those of a board's time
