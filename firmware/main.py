# Device entry point. Says who the device is; host tools then work through the
# agent over the raw REPL (ioconnect.agent), which loads only when called.
# A provisioned device (identity + w3bstream.project_id) runs the attestation
# loop instead (ioconnect.start, .app) until Ctrl-C, which leaves it in the REPL.
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


def _boot():
    # A provisioned board goes straight to the attestation loop: it needs the
    # heap whole (the identity line would load, and leave scattered, the DID
    # code first). Otherwise: say who the device is, and wait for the host.
    start = __import__("ioconnect.start").start
    if start.provisioned():
        from ioconnect import VERSION

        print("ioconnect", VERSION, "attesting (Ctrl-C for the REPL)")
        start.main()
        return
    start = None
    try:
        _hello()
    except Exception as e:  # a broken identity must not keep the REPL from the user
        print("ioconnect: startup failed:", e)


from ioconnect import forget

try:
    _boot()
except KeyboardInterrupt:
    pass  # a host took the console: the REPL is next
except Exception as e:  # never a traceback loop at boot: the REPL stays reachable
    print("ioconnect: attestation loop failed:", e)
finally:
    forget(_keep | {"ioconnect"})
del _keep, _hello, _boot, forget
gc.collect()
