# Device entry point. Says who the device is; host tools then work through the
# agent over the raw REPL (ioconnect.agent), which loads only when called.
import gc
import sys

_keep = set(sys.modules)


def _hello():
    from ioconnect import VERSION, keys

    try:
        key = keys.KeyStore().load()
    except keys.NoIdentityError:
        who = "none"
    else:
        from ioconnect import did

        who = did.did_of(key.curve, key.public_key())
    print("ioconnect", VERSION, "identity:", who)


def _intern():
    # Import each agent module once, now, while the heap is in one piece. A
    # module's names become qstrs for good, and the qstr pool grows by doubling
    # (one block of several KB): done in the middle of an operation, after key
    # generation has split the heap, that block is not there and the operation
    # fails with no_memory (seen on the 96 KB virtual ESP32 in identity.create).
    # Only the modules' first import happens here; they are unloaded again.
    from ioconnect import forget

    for name in (
        "agent", "jsonin", "utf8", "config", "keys", "ecdsa", "ec", "hmac", "keccak",
        "identity", "did", "encoding", "gojson", "cbor", "cose", "profiles", "sha512", "ed25519",
    ):
        keep = set(sys.modules)
        __import__("ioconnect." + name)
        forget(keep)
        gc.collect()


try:
    _intern()
except Exception as e:  # the agent still runs; only this head start is lost
    print("ioconnect: preload failed:", e)
try:
    _hello()
except Exception as e:  # a broken identity must not keep the REPL from the user
    print("ioconnect: startup failed:", e)
from ioconnect import forget

forget(_keep | {"ioconnect"})
del _keep, _hello, _intern, forget
gc.collect()
