# os, as a board's: the unix port's functions plus uname(), which the unix
# port lacks, answering what the board's port answers.
import usys
from uos import *  # noqa: F403 - the port's functions, as `os` has them


def uname():
    import _simboard

    return _simboard.uname


# `import uos` names the same module on a board.
usys.modules["uos"] = usys.modules["os"]
