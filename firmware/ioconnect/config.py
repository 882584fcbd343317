# Device settings: a small JSON file, every key typed and bounded, written to a
# temp file and renamed so a power cut leaves the old or the new settings.
import json
import os

from ioconnect import jsonin

PATH = "config.json"

# key: (kind, min, max) — length bounds for text, value bounds for ints (bool: 0, 1).
SCHEMA = {
    "device.name": ("str", 1, 32),
    "wifi.ssid": ("str", 0, 32),
    "wifi.password": ("secret", 0, 64),
    "mqtt.host": ("str", 0, 253),
    "mqtt.port": ("int", 1, 65535),
    "mqtt.topic": ("str", 1, 128),
    "mqtt.tls": ("bool", 0, 1),
    "mqtt.ca": ("str", 1, 64),  # path of the CA certificate (PEM or DER) on the device
    "mqtt.user": ("str", 0, 64),
    "mqtt.password": ("secret", 0, 64),
    "mqtt.keepalive_s": ("int", 10, 3600),
    "mqtt.resend_s": ("int", 1, 86400),  # no relay ack this long: publish again
    "outbox.capacity": ("int", 1, 1024),
    "w3bstream.project_id": ("decimal", 1, 20),
    "w3bstream.project_version": ("str", 0, 32),
    "sample.interval_s": ("int", 1, 86400),
    # Attestation (ioconnect.attest, ioconnect.app). Lists: (kind, min, max items),
    # each item a name of 1..32 characters.
    "w3bstream.fields": ("list", 0, 16),
    "w3bstream.signed_keys": ("list", 0, 8),
    "attest.cose": ("int", 0, 1),
    "sample.deep_sleep": ("int", 0, 1),
    "watchdog_s": ("int", 0, 3600),
}


class ConfigError(ValueError):
    pass


def load(path=PATH):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    try:
        # Strict UTF-8, surrogate pairs joined; also as CESU-8, which earlier
        # firmware wrote for text outside the BMP (kept, not lost as corrupt).
        data = jsonin.loads(raw, True)
    except ValueError as e:
        raise ConfigError("config file is corrupt: %s: %s" % (path, e))
    if not isinstance(data, dict):
        raise ConfigError("config file is corrupt: " + path)
    return data


def check(key, value):
    spec = SCHEMA.get(key)
    if spec is None:
        raise ConfigError("unknown setting %r" % (key,))
    kind, lo, hi = spec
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError("%s must be true or false" % key)
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError("%s must be an integer in %d..%d" % (key, lo, hi))
        return value
    if kind == "list":  # of names, 1..32 characters each
        ok = isinstance(value, list) and lo <= len(value) <= hi
        for item in value if ok else ():
            ok = ok and isinstance(item, str) and 1 <= len(item) <= 32
        if not ok:
            raise ConfigError("%s must be a list of %d..%d names of 1..32 characters" % (key, lo, hi))
        return value
    if not isinstance(value, str) or not lo <= len(value) <= hi:
        raise ConfigError("%s must be text of %d..%d characters" % (key, lo, hi))
    # Digits checked as bytes: iterating a str interns each character for good.
    if kind == "decimal" and not all(0x30 <= c <= 0x39 for c in value.encode()):
        raise ConfigError("%s must be a decimal number" % key)
    return value


def get(key=None, path=PATH):
    # Secrets are reported as set or not, never read back.
    data = load(path)
    shown = {}
    for k in data:
        shown[k] = "<set>" if SCHEMA.get(k, ("",))[0] == "secret" else data[k]
    if key is None:
        return shown
    if key not in SCHEMA:
        raise ConfigError("unknown setting %r" % (key,))
    return shown.get(key)


def value(key, default=None, path=PATH):
    # For firmware use (secrets included).
    return load(path).get(key, default)


def put(key, val, path=PATH):
    # val None removes the setting.
    if key not in SCHEMA:
        raise ConfigError("unknown setting %r" % (key,))
    try:
        data = load(path)
    except ConfigError:
        # A corrupt file must not lock the settings: keep it aside, start afresh.
        os.rename(path, path + ".bad")
        data = {}
    if val is None:
        data.pop(key, None)
    else:
        data[key] = check(key, val)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)
    return get(key, path)
