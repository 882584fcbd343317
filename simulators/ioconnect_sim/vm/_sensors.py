# The virtual board's sensors: deterministic signals and I2C device models.
#
# A reading is a function of (seed, device name, sensor, board time) only: the
# same seed and elapsed time give the same value, another seed or device another.
# Board time counts from the board's start (sim.json "started_at", else the
# time sim.json was written), so it runs on across resets as the room does.
# Values hold for one second, as a sensor's own update rate would.
#
# A sensor set to "fail" by the host (set_fault(sensors={name: "fail"})) raises
# OSError(EIO) on every access, whatever the port would have done.
import hashlib
import math
import os
import struct
import sys
import time

import _simboard as _b

_EIO = 5
_TAU = 6.283185307179586
_DRIFT_S = 900  # slow drift period (a room warming and cooling)
_WOBBLE_S = 97  # faster component, unrelated to the drift

board = _b.cfg.get("board", {})


def _start():
    t = _b.cfg.get("started_at")
    if t:
        return t
    try:
        return os.stat(os.getenv("IOCONNECT_SIM"))[8]
    except (OSError, TypeError):
        return time.time()


_T0 = _start()


def digest(label):
    # 32 bytes unique to this seed, device and label.
    text = "%s|%s|%s" % (_b.cfg.get("seed", 0), _b.cfg.get("name", ""), label)
    return hashlib.sha256(text.encode()).digest()


def elapsed():
    return time.time() - _T0


def check(name):
    if _b.faults().get("sensors", {}).get(name) == "fail":
        raise OSError(_EIO)


def _mix(x):
    # 32-bit integer hash (per-second noise without allocating)
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return x ^ (x >> 16)


class Signal:
    # mean +/- swing: 80% slow drift, 15% wobble, 5% per-second noise.
    def __init__(self, label, mean, swing):
        d = digest(label)
        self.mean = mean
        self.swing = swing
        self.p1 = d[0] * _TAU / 256
        self.p2 = d[1] * _TAU / 256
        self.key = struct.unpack("<I", d[4:8])[0]

    def at(self, t):
        k = int(t)
        noise = _mix(self.key ^ k) / 0xFFFFFFFF - 0.5
        wave = 0.8 * math.sin(_TAU * k / _DRIFT_S + self.p1)
        wave += 0.15 * math.sin(_TAU * k / _WOBBLE_S + self.p2)
        return self.mean + self.swing * (wave + 0.1 * noise)

    def now(self):
        return self.at(elapsed())


_signals = {}


def signal(label, mean, swing):
    s = _signals.get(label)
    if s is None:
        s = _signals[label] = Signal(label, mean, swing)
    return s


def temperature_at(t):
    spec = board.get("sensors", {}).get("temperature", {})
    return signal("temperature", spec.get("mean_c", 25.0), spec.get("swing_c", 2.0)).at(t)


def temperature():
    # The on-chip sensor, in degrees Celsius.
    check("temperature")
    return temperature_at(elapsed())


_LIB = (os.getenv("MICROPYPATH") or ".").split(":")[
    0
]  # the shims' folder, hidden once the flash is mounted


def load(name):
    # Import a shim that was not preloaded: mount its folder for a moment at a
    # path the firmware does not use, as the flash now covers "/".
    mod = sys.modules.get(name)
    if mod is None:
        os.mount(os.VfsPosix(_LIB), "/.simlib")
        sys.path.append("/.simlib")
        try:
            mod = __import__(name)
        finally:
            sys.path.remove("/.simlib")
            os.umount("/.simlib")
    return mod
