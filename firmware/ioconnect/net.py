# Wi-Fi station and retry pacing for the delivery layer.
#
# Losing the access point and getting it back is normal life for a board in
# the field: wifi_up() is cheap when the link is up, waits (bounded) while the
# driver rejoins, and Station paces new attempts with exponential backoff and
# jitter so a fleet does not hammer an AP that just came back.
#
# Boards without a `network` module (Raspberry Pi Pico, the unix port that
# runs device tests) have no station to bring up: wifi_up() returns True and
# the caller's sockets are whatever the platform has (none on a Pico: deliver
# over the serial agent there; the host's on the unix port).
import os
import time

from micropython import const

_POLL_MS = const(50)


class Backoff:
    """Exponential backoff with jitter: first_ms, 2x, 4x ... up to max_ms."""

    def __init__(self, first_ms=1000, max_ms=60000):
        self.first_ms = first_ms
        self.max_ms = max_ms
        self.delay_ms = 0  # the current delay; 0 after a success
        self._at = time.ticks_ms()

    def ready(self):
        return time.ticks_diff(time.ticks_ms(), self._at) >= 0

    def wait_ms(self):
        return max(0, time.ticks_diff(self._at, time.ticks_ms()))

    def failed(self):
        d = self.delay_ms * 2 if self.delay_ms else self.first_ms
        self.delay_ms = min(d, self.max_ms)
        # Jitter: wait between 1/2 and all of the delay.
        j = os.urandom(1)[0]
        self._at = time.ticks_add(time.ticks_ms(), self.delay_ms // 2 + self.delay_ms * j // 512)

    def reset(self):
        self.delay_ms = 0
        self._at = time.ticks_ms()


def wifi_up(ssid, password, timeout_ms=15000):
    """True when the station is connected (joining if needed, waiting up to timeout_ms).

    False on timeout or a join that cannot succeed (no such AP, wrong
    password). True at once on boards without a network module (see above).
    """
    try:
        import network
    except ImportError:
        return True
    w = network.WLAN(network.STA_IF)
    if w.isconnected():
        return True
    if not w.active():
        w.active(True)
    connecting = getattr(network, "STAT_CONNECTING", None)
    if w.status() != connecting:
        w.connect(ssid, password)
    deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
    hopeless = (
        getattr(network, "STAT_WRONG_PASSWORD", None),
        getattr(network, "STAT_NO_AP_FOUND", None),
    )
    while not w.isconnected():
        if w.status() in hopeless or time.ticks_diff(deadline, time.ticks_ms()) <= 0:
            return False
        time.sleep_ms(_POLL_MS)
    return True


class Station:
    """Keeps the station up: up(timeout_ms) tries now, or after a failure when backoff allows."""

    def __init__(self, ssid, password, backoff=None):
        self.ssid = ssid
        self.password = password
        self.backoff = backoff or Backoff(1000, 60000)
        self.failures = 0

    def up(self, timeout_ms=15000):
        if not self.backoff.ready():
            return _connected()
        if wifi_up(self.ssid, self.password, timeout_ms):
            self.backoff.reset()
            return True
        self.failures += 1
        self.backoff.failed()
        return False


def station_up():
    """True while the Wi-Fi station is joined (always on boards without a radio)."""
    return _connected()


def _connected():
    try:
        import network
    except ImportError:
        return True
    return network.WLAN(network.STA_IF).isconnected()
