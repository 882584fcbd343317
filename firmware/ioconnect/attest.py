# Attestation: one sensor reading becomes the W3bstream request the device
# signs (POST /v1/task, w3btask.w3bstream_task), and optionally the same
# payload as a COSE_Sign1 token for consumers outside W3bstream.
#
# Payload (compact JSON, keys in this order):
#   {"timestamp": <RTC unix seconds>, ["clock": "unset", "uptime_ms": N,]
#    <reading name>: {<field>: value} | {"error": reason}, ...}
# The readings are the project's w3bstream.fields (default: every sensor of
# the board). A clock that was never set (no NTP yet) still gives its
# timestamp, so Pebble-style signed keys keep working, and says so.
import json
import sys
import time

from micropython import const

_UNIX_2000 = const(946684800)  # 2000-01-01 in unix seconds: some ports count from there
_CLOCK_SET_AFTER = const(1735689600)  # 2025-01-01: an RTC before that was never set


class AttestError(ValueError):
    pass


def unix_time():
    t = int(time.time())
    if time.gmtime(0)[0] == 2000:
        t += _UNIX_2000
    return t


def payload(readings, order, now, uptime_ms):
    # readings: {name: dict}; order: names in payload order.
    out = bytearray(b'{"timestamp":')
    out.extend(str(now).encode())
    if now < _CLOCK_SET_AFTER:
        out.extend(b',"clock":"unset","uptime_ms":')
        out.extend(str(uptime_ms).encode())
    for name in order:
        out.extend(b",")
        out.extend(json.dumps(name).encode())
        out.extend(b":")
        out.extend(json.dumps(readings[name]).encode())
    out.extend(b"}")
    return bytes(out)


class Settings:
    # What a project asks of the message, from the device settings.
    def __init__(self, cfg):
        pid = cfg.get("w3bstream.project_id")
        if not pid:
            raise AttestError("no project: set w3bstream.project_id")
        self.project_id = pid
        self.project_version = cfg.get("w3bstream.project_version", "")
        self.fields = cfg.get("w3bstream.fields") or None
        self.signed_keys = tuple(cfg.get("w3bstream.signed_keys") or ())
        self.cose = cfg.get("attest.cose", 0) == 1

    @staticmethod
    def load():
        from ioconnect import config

        return Settings(config.load())


class Attestor:
    # sensors may be None (signing only) when `order`, the payload's reading
    # names, is given.
    def __init__(self, key, settings, sensors, order=None):
        if key.curve != "secp256k1":
            raise AttestError("W3bstream tasks need a secp256k1 key, not %s" % key.curve)
        self.key = key
        self.settings = settings
        self.sensors = sensors
        self.order = order or settings.fields or sensors.names()
        self.kid = None  # the DID as COSE kid: made on first use (see prepare)

    def read(self):
        return self.sensors.read(self.order)

    def payload(self, readings, now=None):
        return payload(readings, self.order, unix_time() if now is None else now, time.ticks_ms())

    def task(self, nonce, data):
        # The POST /v1/task body for payload `data`.
        from ioconnect import w3btask

        s = self.settings
        return w3btask.w3bstream_task(self.key, nonce, s.project_id, data, s.project_version, s.signed_keys)

    def prepare(self):
        # Everything signing will need, made now (the loop calls this at start,
        # so no module is loaded mid-cycle).
        if self.settings.cose and self.kid is None:
            self.kid = _kid(self.key)

    def cose(self, data):
        # The same payload as COSE_Sign1, kid = the device's DID.
        self.prepare()
        from ioconnect import cose

        return cose.sign1(self.key, data, self.kid)

    def sign(self, nonce, readings, now=None):
        # -> (payload, request body, COSE token or None)
        data = self.payload(readings, now)
        body = self.task(nonce, data)
        token = self.cose(data) if self.settings.cose else None
        return data, body, token


def _kid(key):
    # The DID as COSE kid, computed once; the modules it needs (did, keccak,
    # encoding) are unloaded again: the loop has no other use for them.
    from ioconnect import forget

    keep = set(sys.modules)
    from ioconnect import did

    kid = did.did_of(key.curve, key.public_key()).encode()
    forget(keep)
    return kid
