# os, as a board's: the unix port's functions plus uname(), which the unix
# port lacks, answering what the board's port answers.
from uos import *  # noqa: F403 - the port's functions, as `os` has them


def uname():
    import _simboard

    return _simboard.uname


import usys as _usys  # noqa: E402

_usys.modules["uos"] = _usys.modules["os"]  # `import uos` names this module on a board
del _usys  # keep the module's names those of a board's os
