# Device entry point. Says who the device is; host tools then work through the
# agent over the raw REPL (ioconnect.agent), which loads only when called.
# A provisioned device then runs the attestation loop (ioconnect.start, .app)
# until Ctrl-C, which leaves it in the REPL.
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


try:
    _hello()
except Exception as e:  # a broken identity must not keep the REPL from the user
    print("ioconnect: startup failed:", e)
from ioconnect import forget

forget(_keep | {"ioconnect"})
try:
    __import__("ioconnect.start").start.main()
except Exception as e:  # never a traceback loop at boot: the REPL stays reachable
    print("ioconnect: attestation loop failed:", e)
finally:
    forget(_keep | {"ioconnect"})
del _keep, _hello, forget
gc.collect()
