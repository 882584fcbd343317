"""Power cuts inside the VM, shared by the key store, nonce and outbox tests.

``HARNESS`` is device code: a module's ``open`` and ``os`` are replaced by
``cut_open`` and ``CutOs()`` so that its own writes, renames and removes stop
after ``budget[0]`` steps (one per byte written, one per rename or remove),
raising ``PowerCut``. The bytes written before the cut stay on the real
filesystem; a fresh VM then shows what a board would find after the cut. Set
``record[0] = True`` to collect every attempted write (hex) in ``attempted``.
"""

HARNESS = """
class PowerCut(Exception):
    pass

budget = [0]
record = [False]
attempted = []
_open = open

class CutFile:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
    def write(self, b):
        if record[0]:
            attempted.append(bytes(b).hex())
        n = min(len(b), budget[0])
        self.f.write(b[:n])
        budget[0] -= n
        if n < len(b):
            raise PowerCut()
        return n
    def flush(self):
        self.f.flush()

def cut_open(path, mode="r"):
    f = _open(path, mode)
    return CutFile(f) if "w" in mode else f

class CutOs:
    def _step(self):
        if budget[0] <= 0:
            raise PowerCut()
        budget[0] -= 1
    def rename(self, a, b):
        self._step()
        os.rename(a, b)
    def remove(self, p):
        self._step()
        os.remove(p)
    def __getattr__(self, name):
        return getattr(os, name)  # reads, stat, mkdir, urandom: as they are
"""
