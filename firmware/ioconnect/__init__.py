# ioconnect device library. Modules are imported one by one (ioconnect.keccak,
# ioconnect.ecdsa, ...) so a board only pays RAM for what it uses, and gives it
# back with forget() once a job is done.
import sys

VERSION = "0.1.0"

_warm = False  # intern_names() has run since this package was loaded
# Modules with @micropython.viper code stay loaded once imported. Their machine
# code is copied out of the heap into executable memory, which MicroPython
# frees only at a soft reset (ESP32: IRAM, esp_native_code_commit; unix port:
# an mmap plus a 32-byte list node on the heap). Unloaded and imported again
# per request, each import would take another copy, for good.
RESIDENT = ("ioconnect.keccak", "ioconnect.sha512", "ioconnect.k1field")


def forget(keep):
    # Unload every module not named in `keep` (a set of sys.modules names) nor
    # RESIDENT, so the heap they hold comes back (about 35 KB for the signing
    # stack).
    pkg = sys.modules.get("ioconnect")
    for name in list(sys.modules):
        if name in keep or name in RESIDENT:
            continue
        del sys.modules[name]
        if pkg is not None and name.startswith("ioconnect."):
            try:
                delattr(pkg, name[10:])
            except (AttributeError, KeyError):
                # MicroPython raises KeyError for a missing module attribute: a
                # submodule whose import failed (MemoryError) never got one.
                pass


# The attestation loop's own modules (and the agent's attest/ack ops, rarely
# used, in attest_ops): the loop loads them at its start, on the quiet heap of
# a boot, so agent requests need not carry their names (a 96 KB board has no
# room for every module's names and an agent request beside them).
_LOOP_ONLY = ("app", "start", "attest", "attest_ops", "sensors", "sht3x", "bme280")


def intern_names():
    # Load each module of this package once, one at a time, and unload it again.
    #
    # Why: loading a .mpy interns its names (functions, attributes, strings)
    # into MicroPython's qstr table, which lives on the heap and is never freed.
    # The table grows by doubling: once full, the next name needs one new pool
    # of twice the size in a single block (640 entries: about 4.5 KB with
    # 32-bit pointers, 7 KB with 64-bit ones), and the names' text goes into
    # 128-byte chunks wherever the heap has a gap. Left to chance, that
    # happens in the middle of some request (a rotate to ed25519 loading
    # sha512), when the request's own objects cut the free heap into pieces:
    # MemoryError with 60 KB free, and every retry fails the same way; and
    # each chunk stays as an island in what was free. Done here, on a quiet
    # heap, it happens once, and later requests intern nothing new: the heap
    # is the same after every request, however many there are.
    # Frozen modules need none of this (their names are in flash); without a
    # listing of the package folder nothing is done.
    global _warm
    if _warm:
        return
    try:
        _intern_all()
    except MemoryError:
        return  # not warm: the next call tries again, on its own collected heap
    except Exception:  # noqa: BLE001 - an optimisation: requests work without it
        pass
    # Not set when a Ctrl-C cut it short either (main.py calls it again).
    _warm = True


def _intern_all():
    try:
        base = __file__
    except NameError:
        return
    import gc
    import os

    i = base.rfind("/")
    keep = set(sys.modules)
    names = os.listdir(base[:i] if i > 0 else ".")
    mods = [n[: n.rfind(".")] for n in names if n.endswith(".mpy") or n.endswith(".py")]
    mods = [m for m in mods if m != "__init__" and m not in _LOOP_ONLY]
    for m in mods:
        try:
            __import__("ioconnect." + m)
        except Exception as e:  # noqa: BLE001 - a broken module fails where it is used, not here
            if isinstance(e, MemoryError):
                raise
        finally:
            forget(keep)
            gc.collect()
    # sys.modules and this package's namespace never shrink, and grow (a new,
    # larger table) the first time a request holds more modules than any
    # before. Size both now for all of ours at once, while the heap is quiet.
    # (Placeholders, gone again before anything can import.)
    pkg = sys.modules["ioconnect"]
    absent = [m for m in mods if not hasattr(pkg, m)]
    for m in absent:
        sys.modules["ioconnect." + m] = pkg
        setattr(pkg, m, None)
    for m in absent:
        del sys.modules["ioconnect." + m]
        delattr(pkg, m)
    gc.collect()
