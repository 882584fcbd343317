# The device's main loop: every sample.interval_s, read the sensors, take the
# next nonce, sign the reading (ioconnect.attest) and queue it in the outbox;
# then deliver. Delivery is MQTT (ioconnect.deliver, imported only when
# mqtt.host is set and the board has Wi-Fi) or, without a network, the serial
# fallback: each pending message is printed on the console as an agent frame
#     \x1eIOC1 <len> <crc32> {"event": "task", "nonce": N, "body": "<request>"}
# oldest first, again each cycle until the host acknowledges it through the
# agent's `ack` op (see agent.py), or inline while the loop runs (check_console).
#
# Started by main.py once the device is provisioned (identity + project id).
# Ctrl-C stops it into the REPL. A sensor fault is a field of the message; a
# nonce store that cannot write stops signing (reported every cycle, the loop
# keeps feeding the watchdog and delivering, and signs again once the store
# can reserve); nothing here ends in a reboot
# loop. The outbox and the nonce mark live in flash, so deep sleep and power
# cuts lose neither.
import binascii
import gc
import json
import sys
import time

from micropython import const

_WINDOW = const(8)  # unacknowledged messages sent per cycle, oldest first (serial)
_RP2_WDT_MAX_MS = const(8388)  # rp2 hardware limit
_WIFI_TIMEOUT_MS = const(15000)
_LINE_MAX = const(240)  # longest request line read while the loop runs


class AppError(ValueError):
    pass


def emit(obj):
    # One agent frame on the console (the format of ioconnect.agent).
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    body = json.dumps(obj).encode()
    head = "\x1eIOC1 %d %08x " % (len(body), binascii.crc32(body) & 0xFFFFFFFF)
    out.write(head.encode())
    out.write(body)
    out.write(b"\n")


class Loop:
    def __init__(self, attestor, nonces, outbox, cfg, delivery=None, cose_outbox=None):
        self.attestor = attestor
        self.nonces = nonces
        self.outbox = outbox
        self.cose_outbox = cose_outbox
        self.delivery = delivery
        self.interval_ms = cfg.get("sample.interval_s", 60) * 1000
        self.deep_sleep = cfg.get("sample.deep_sleep", 0) == 1
        self.halted = None  # why signing is stopped now (a nonce store fault), or None
        self.cycles = 0
        self.wdt = None
        self.feed_ms = self.interval_ms
        wd_ms = cfg.get("watchdog_s", 0) * 1000
        if wd_ms:
            if sys.platform == "rp2" and wd_ms > _RP2_WDT_MAX_MS:
                wd_ms = _RP2_WDT_MAX_MS
            import machine

            self.wdt = machine.WDT(timeout=wd_ms)
            self.feed_ms = wd_ms // 2
        # Time split of the last cycle (us): read, sign, store.
        self.last_us = (0, 0, 0)
        self.console = None
        self._stdin = getattr(sys.stdin, "buffer", sys.stdin)
        self._line = bytearray(_LINE_MAX)  # one request line, preallocated
        self._n = -1  # bytes of it so far; -1: not inside a frame
        try:
            import select

            self.console = select.poll()
            self.console.register(sys.stdin, select.POLLIN)
        except (ImportError, OSError, TypeError, ValueError):
            self.console = None  # no pollable console: Ctrl-C still interrupts

    def check_console(self):
        # Host input while the loop runs. A Ctrl-C typed before the loop started
        # (during boot) sits here as the byte 0x03 (a port only turns it into
        # KeyboardInterrupt while code runs): it still stops us. A framed line
        # \x1eIOC1 <len> <crc32> <json>\n is a request; only `ack` is served
        # here (agent.ack_inline on the host), so acks need not stop the loop.
        # Status "queued" (as over MQTT): a relay stored it durably, owns it now.
        p = self.console
        while p is not None and p.poll(0):
            c = self._stdin.read(1)
            if not c:
                return
            b = c[0] if isinstance(c, bytes) else ord(c)
            if b == 3:
                raise KeyboardInterrupt
            if b == 0x1E:
                self._n = 0
            elif self._n >= 0:
                if b == 0x0A:
                    n, self._n = self._n, -1
                    self._request(bytes(memoryview(self._line)[:n]))
                elif self._n < _LINE_MAX:
                    self._line[self._n] = b
                    self._n += 1
                else:
                    self._n = -1  # too long for an ack: dropped

    def _request(self, raw):
        # raw: b"IOC1 <len> <crc32> <json>"; answered with an agent frame.
        rid = None
        try:
            parts = raw.split(b" ", 3)
            if len(parts) != 4 or parts[0] != b"IOC1":
                return  # not a request: ignore, as a board ignores noise
            body = parts[3]
            if int(parts[1]) != len(body) or int(parts[2], 16) != binascii.crc32(body) & 0xFFFFFFFF:
                return  # damaged: the host retries
            req = json.loads(body)
            rid = req.get("id")
            nonce = req.get("nonce")
            status = req.get("status")
            if req.get("v") != 1 or req.get("op") != "ack":
                raise AppError("only ack is served while the loop runs (Ctrl-C for the agent)")
            if not isinstance(nonce, int) or status not in ("queued", "accepted", "rejected"):
                raise AppError("ack needs an int nonce and status queued, accepted or rejected")
        except (ValueError, KeyError, AttributeError) as e:
            emit({"id": rid, "ok": False, "error": {"code": "bad_request", "message": str(e)}})
            return
        removed = self.outbox.remove(nonce)
        if self.cose_outbox is not None:
            self.cose_outbox.remove(nonce)
        emit({"id": rid, "ok": True, "result": {"nonce": nonce, "removed": removed, "pending": len(self.outbox)}})

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def cycle(self):
        # One reading: read, nonce, sign, store, deliver. Never raises for a
        # sensor, signing or storage fault; each becomes an event.
        t0 = time.ticks_us()
        readings = self.attestor.read()
        t1 = time.ticks_us()
        fresh = 0
        t2 = t3 = t1
        from ioconnect.nonce import NonceError

        # Asked again every cycle: a store that failed to reserve (flash full,
        # EIO) hands out nothing above its committed mark, so a retry cannot
        # reuse a nonce, and signing resumes once the flash takes writes again.
        try:
            fresh = self.nonces.next()
            self.halted = None
        except NonceError as e:
            self.halted = "nonce store: %s" % e
        if fresh:
            data, body, token = self.attestor.sign(fresh, readings)
            t2 = time.ticks_us()
            data = None
            gc.collect()  # a flash write wants a whole buffer: give it the best heap
            dropped = self.outbox.dropped
            try:
                self.outbox.put(fresh, body)
                if token is not None and self.cose_outbox is not None:
                    self.cose_outbox.put(fresh, token)
            except (OSError, ValueError) as e:
                emit({"event": "error", "reason": "outbox: %s" % e, "nonce": fresh})
                fresh = 0
            t3 = time.ticks_us()
            body = token = None
            if self.outbox.dropped != dropped:
                # The bounded outbox let its oldest go: say which, for the count.
                emit({"event": "dropped", "nonce": self.outbox.last_dropped, "count": self.outbox.dropped})
            if fresh and self.delivery is not None:
                # Over MQTT the console would say nothing: tell a watching host
                # (the demo, `ioconnect monitor`) what was signed.
                emit({"event": "signed", "nonce": fresh})
        if self.halted is not None:
            emit({"event": "halted", "reason": self.halted})
        self.last_us = (time.ticks_diff(t1, t0), time.ticks_diff(t2, t1), time.ticks_diff(t3, t2))
        self.cycles += 1
        self.feed()
        return fresh

    def send_serial(self, fresh):
        # The oldest unacknowledged messages, in nonce order, at most _WINDOW: a
        # relay refuses a nonce below one it has stored (a replay or reorder),
        # so a fresh reading must never overtake an older one still pending.
        # A fresh reading outside the window waits its turn in the outbox.
        gc.collect()
        shown = False
        for n in self.outbox.pending()[:_WINDOW]:
            self._send_one(n)
            shown = shown or n == fresh
        if fresh and not shown:
            emit({"event": "signed", "nonce": fresh})

    def _send_one(self, n):
        try:
            msg = {"event": "task", "nonce": n, "body": self.outbox.get(n).decode()}
            if self.cose_outbox is not None:
                try:
                    msg["cose"] = binascii.hexlify(self.cose_outbox.get(n)).decode()
                except (OSError, ValueError):
                    pass  # signed before attest.cose was set
        except (OSError, ValueError) as e:
            emit({"event": "error", "reason": "outbox: %s" % e, "nonce": n})
            return
        emit(msg)

    def wait(self, start_ms):
        # Until the next reading: feed the watchdog, let MQTT run.
        deadline = time.ticks_add(start_ms, self.interval_ms)
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return
            step = left if left < self.feed_ms else self.feed_ms
            if self.delivery is not None:
                self.delivery.step(step)
            else:
                time.sleep_ms(step if step < 200 else 200)
            self.check_console()
            self.feed()

    def run(self, cycles=0):
        while not cycles or self.cycles < cycles:
            self.check_console()
            start = time.ticks_ms()
            try:
                fresh = self.cycle()
                if self.delivery is None:
                    self.send_serial(fresh)
            except MemoryError:
                gc.collect()
                emit({"event": "error", "reason": "out of memory", "free_heap": gc.mem_free()})
            except Exception as e:  # a bug must not turn into a reboot loop
                emit({"event": "error", "reason": "%s: %s" % (type(e).__name__, e)})
            gc.collect()
            if cycles and self.cycles >= cycles:
                return
            if self.deep_sleep:
                if self.delivery is not None:
                    self.delivery.step(1000)  # flush what was queued before sleeping
                import machine

                machine.deepsleep(self.interval_ms)
            self.wait(start)


def _delivery(cfg, outbox, key):
    # MQTT when configured and the board has Wi-Fi; None means serial.
    if not _mqtt(cfg):
        return None
    from ioconnect import deliver, net

    if net.wifi_up(cfg.get("wifi.ssid", ""), cfg.get("wifi.password", ""), _WIFI_TIMEOUT_MS):
        try:
            import ntptime

            ntptime.settime()  # the RTC in UTC: timestamps become real
        except (ImportError, OSError):
            pass  # no NTP: the payload says "clock": "unset" until it is set
    from ioconnect import forget

    keep = set(sys.modules)
    d = deliver.from_config(outbox, eth_address(key), cfg["w3bstream.project_id"])
    forget(keep)  # from_config reads the settings: config and jsonin (11 KB) go again
    return d


def _mqtt(cfg):
    if not cfg.get("mqtt.host"):
        return False
    try:
        import network  # noqa: F401  (boards without a radio have none)
    except ImportError:
        return False
    return True


def eth_address(key):
    # did.eth_address without loading did and encoding (9 KB on the 96 KB heap,
    # for one line): "0x" + hex of the last 20 bytes of keccak256(X||Y).
    from ioconnect.keccak import keccak256

    return "0x" + binascii.hexlify(keccak256(key.public_key()[1:])[12:]).decode()


# Modules the loop keeps for good, loaded first and in one go: loaded on first
# use instead, mid-cycle, each landed between the cycle's garbage and left the
# 96 KB heap in pieces too small to sign (measured: 21 KB free, largest 1.3 KB).
_RESIDENT = (
    "ioconnect.keccak",  # viper: loaded first, while the heap is whole
    "ioconnect.keys",
    "ioconnect.nonce",
    "ioconnect.outbox",
    "ioconnect.sensors",
    "ioconnect.attest",
    "ioconnect.hmac",
    "ioconnect.ec",
    "ioconnect.ecdsa",
    "ioconnect.utf8",
    "ioconnect.gojson",
    "ioconnect.w3btask",
)
_RESIDENT_COSE = ("ioconnect.cbor", "ioconnect.cose")


def _intern(names):
    # Intern the loop's names at the bottom of the boot's heap, before its code
    # is loaded. Loading a module interns its names first (in small chunks that
    # stay for good), then its code; loaded once for real, the loop's modules
    # would leave their names as islands between their code, and after a
    # Ctrl-C the agent would find the heap in pieces: its first request grows
    # the name table by one block (1280 entries: about 9 KB, 14 KB on the
    # 64-bit VM) and failed with most of the heap free. Loaded and unloaded one
    # by one, each module's names land where the one before had its code.
    from ioconnect import forget

    keep = set(sys.modules)
    for name in names:
        __import__(name)
        forget(keep)
        gc.collect()


def _preload(names):
    for name in names:
        __import__(name)
        gc.collect()


def build(key_path="identity.key"):
    # Everything the loop needs, from flash: key, settings, board file.
    from ioconnect import forget

    _intern(_RESIDENT + ("ioconnect.config",))
    keep = set(sys.modules)
    from ioconnect import config

    cfg = config.load()
    forget(keep)  # settings are read once: the schema need not stay in RAM
    gc.collect()
    if _mqtt(cfg):
        _intern(("ioconnect.deliver",))  # and mqtt, net: loaded by _delivery
    _preload(_RESIDENT)
    if cfg.get("attest.cose", 0) == 1:
        _preload(_RESIDENT_COSE)
    from ioconnect import attest, keys, sensors
    from ioconnect.nonce import NonceStore
    from ioconnect.outbox import Outbox

    board = sensors.load_board()
    probes = sensors.Sensors(board)
    board = None
    gc.collect()
    probes.prepare()  # drivers and buses, before the first reading
    key = keys.KeyStore(key_path).load()
    settings = attest.Settings(cfg)
    attestor = attest.Attestor(key, settings, probes)
    attestor.prepare()
    outbox = Outbox(capacity=cfg.get("outbox.capacity", 64))
    delivery = _delivery(cfg, outbox, key)
    cose_outbox = Outbox("outbox.cose") if settings.cose and delivery is None else None
    loop = Loop(attestor, NonceStore(), outbox, cfg, delivery, cose_outbox)
    gc.collect()
    return loop


def run(cycles=0):
    # main.py's entry point. Returns on Ctrl-C. A loop that cannot start (the
    # flash fails, a file is missing) reports why and tries again every
    # interval: a board in the field waits for its storage, it does not stop.
    while True:
        try:
            loop = build()
            break
        except KeyboardInterrupt:
            return
        except (ValueError, OSError, ImportError, MemoryError) as e:
            emit({"event": "halted", "reason": "%s: %s" % (type(e).__name__, e)})
        gc.collect()
        try:
            _wait_console(_retry_s() * 1000)
        except KeyboardInterrupt:
            return
    emit({"event": "started", "interval_s": loop.interval_ms // 1000, "serial": loop.delivery is None})
    try:
        loop.run(cycles)
    except KeyboardInterrupt:
        print("ioconnect: attestation loop stopped (Ctrl-C)")


def _wait_console(ms):
    # Sleep, but stop at a Ctrl-C typed before any code ran (see check_console).
    poll = None
    try:
        import select

        poll = select.poll()
        poll.register(sys.stdin, select.POLLIN)
    except (ImportError, OSError, TypeError, ValueError):
        poll = None
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    deadline = time.ticks_add(time.ticks_ms(), ms)
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        while poll is not None and poll.poll(0):
            c = stdin.read(1)
            if not c:
                break
            if (c[0] if isinstance(c, bytes) else ord(c)) == 3:
                raise KeyboardInterrupt
        time.sleep_ms(100)


def _retry_s():
    try:
        from ioconnect import config

        return config.value("sample.interval_s", 60)
    except (ValueError, OSError):
        return 60
