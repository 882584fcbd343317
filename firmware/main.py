# Device entry point. Says who the device is; host tools then work through the
# agent over the raw REPL (ioconnect.agent), which loads only when called.
# A provisioned device (identity + w3bstream.project_id) then runs the
# attestation loop (ioconnect.app) until Ctrl-C, which leaves it in the REPL.
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


def _attest():
    from ioconnect import app

    if app.provisioned():
        gc.collect()
        app.run()


from ioconnect import forget

try:
    try:
        _hello()
    except Exception as e:  # a broken identity must not keep the REPL from the user
        print("ioconnect: startup failed:", e)
    forget(_keep | {"ioconnect"})
    gc.collect()
    _attest()
except KeyboardInterrupt:
    pass  # a host took the console (Ctrl-C): the REPL is next
except Exception as e:  # never a traceback loop at boot: the REPL stays reachable
    print("ioconnect: attestation loop failed:", e)
finally:
    # Whatever was interrupted, the REPL gets the RAM back.
    forget(_keep | {"ioconnect"})
del _keep, _hello, _attest, forget
gc.collect()
