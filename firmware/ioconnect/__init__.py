# ioconnect device library. Modules are imported one by one (ioconnect.keccak,
# ioconnect.ecdsa, ...) so a board only pays RAM for what it uses, and gives it
# back with forget() once a job is done.
import sys

VERSION = "0.1.0"


def forget(keep):
    # Unload every module not named in `keep` (a set of sys.modules names), so
    # the heap they hold comes back (about 35 KB for the signing stack).
    pkg = sys.modules.get("ioconnect")
    for name in list(sys.modules):
        if name in keep:
            continue
        del sys.modules[name]
        if pkg is not None and name.startswith("ioconnect."):
            try:
                delattr(pkg, name[10:])
            except AttributeError:
                pass
