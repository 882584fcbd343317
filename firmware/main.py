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


def _provisioned():
    # Identity and project, checked with names the firmware has interned anyway
    # (loading ioconnect.start just to ask would add its names to the agent's
    # RAM on every board).
    import json
    import os

    try:
        os.stat("identity.key")
        with open("config.json") as f:
            return bool(json.load(f).get("w3bstream.project_id"))
    except (OSError, ValueError, AttributeError):
        return False


from ioconnect import forget, intern_names


def _boot():
    # True when the attestation loop was started (it returns on Ctrl-C).
    loop = False
    try:
        if _provisioned():
            loop = True
            # Straight to the attestation loop, on the heap of a fresh boot.
            print("ioconnect attesting (Ctrl-C for the REPL)")
            __import__("ioconnect.start").start.main()
        else:
            _hello()
    except KeyboardInterrupt:
        pass  # a host took the console: the REPL is next
    except Exception as e:  # never a traceback loop at boot: the REPL stays reachable
        print("ioconnect: startup failed:", e)
    return loop


def _after(loop):
    # Hosts send two Ctrl-Cs (a program may catch the first): the second may land
    # here, and a cleanup it cut short would leave the loop's modules loaded for
    # the agent's requests to squeeze beside. Finish it whatever arrives.
    while True:
        try:
            forget(_keep | {"ioconnect"})
            gc.collect()
            if loop:
                # The agent's names (interned by its first request on a board
                # that never ran the loop) go in now, on the collected heap:
                # past the loop's names they grow the name table by one block
                # (about 9 KB at 96 KB) that a request, with its own objects and
                # the REPL's garbage spread over the heap, failed to find whole.
                intern_names()
            return
        except KeyboardInterrupt:
            pass


_after(_boot())
del _keep, _hello, _provisioned, _boot, _after, forget, intern_names
gc.collect()
