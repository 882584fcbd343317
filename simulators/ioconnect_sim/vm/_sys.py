# sys, as a board's: the unix port's sys with the board port's platform,
# version and implementation._machine. sys is not extensible as os and time
# are, so _simboard.power_on imports this module, which takes the place of the
# VM's own in sys.modules: every later `import sys` (and `usys`) finds it.
# Whatever is not overridden here is read from the VM's sys.
import _simboard as _b
import usys as _sys

platform = _b.platform
version = "%s; MicroPython %s" % (_sys.version.split(";")[0], _b.uname.version)
_i = _sys.implementation
implementation = _b.Implementation(
    (
        _i.name,
        _i.version,
        _b.machine,
        _i._mpy,  # the VM's: mpremote mip picks native code by it, and the VM runs x64
        getattr(_i, "_build", ""),
        getattr(_i, "_thread", ""),
    )
)


def __getattr__(name):
    return getattr(_sys, name)


globals().pop("__file__", None)  # print(sys) shows <module 'sys'>, as on a board
__name__ = "sys"
_sys.modules["sys"] = _sys.modules["usys"] = _sys.modules["_sys"]
