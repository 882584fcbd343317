# The virtual board's flash: a host folder mounted over "/" through a Python VFS.
# It keeps paths inside the folder, lists sizes as littlefs does (mpremote's
# `fs ls` shows them), reports the board's partition size from statvfs, and
# can fail on demand (ENOSPC, EIO) so firmware error paths are tested through
# a real filesystem.
import os

_ENOENT = 2
_EIO = 5
_ENOSPC = 28
_DIR = 0x4000


class SimFlash:
    def __init__(self, root, size, block, faults):
        self._v = os.VfsPosix(root)
        self._host = os.VfsPosix()  # for rename: see there
        self._root = root.rstrip("/")
        self._cwd = "/"
        self._size = size
        self._block = block
        self._faults = faults  # callable -> dict; "flash": "eio"|"enospc" fails every write

    def _abs(self, path):
        # Resolve against our cwd; ".." never climbs out of the flash.
        if not path.startswith("/"):
            path = self._cwd + "/" + path
        parts = []
        for p in path.split("/"):
            if p == "..":
                if parts:
                    parts.pop()
            elif p and p != ".":
                parts.append(p)
        return "/" + "/".join(parts)

    def _check_write(self):
        fail = self._faults().get("flash")
        if fail == "eio":
            raise OSError(_EIO)
        if fail == "enospc":
            raise OSError(_ENOSPC)

    def __repr__(self):
        # As the esp32 and rp2 ports' littlefs v2 object prints (mpremote df).
        return "<VfsLfs2>"

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def ilistdir(self, path):
        base = self._abs(path)
        sep = "" if base == "/" else "/"
        for e in self._v.ilistdir(base):
            size = 0 if e[1] == _DIR else self._v.stat(base + sep + e[0])[6]
            yield (e[0], e[1], 0, size)

    def open(self, path, mode):
        if "w" in mode or "a" in mode or "+" in mode:
            self._check_write()
        return self._v.open(self._abs(path), mode)

    def stat(self, path):
        return self._v.stat(self._abs(path))

    def statvfs(self, path):
        blocks = self._size // self._block
        used = self._used_blocks("/")
        free = max(blocks - used, 0)
        return (self._block, self._block, blocks, free, free, 0, 0, 0, 0, 255)

    def _used_blocks(self, path):
        n = 1
        sep = "" if path == "/" else "/"
        for e in self._v.ilistdir(path):
            child = path + sep + e[0]
            if e[1] == _DIR:
                n += self._used_blocks(child)
            else:
                n += (self._v.stat(child)[6] + self._block - 1) // self._block or 1
        return n

    def chdir(self, path):
        target = self._abs(path)
        if self._v.stat(target)[0] & _DIR == 0:
            raise OSError(_ENOENT)
        self._cwd = target

    def getcwd(self):
        return self._cwd

    def mkdir(self, path):
        self._check_write()
        self._v.mkdir(self._abs(path))

    def remove(self, path):
        self._check_write()
        self._v.remove(self._abs(path))

    def rmdir(self, path):
        self._check_write()
        self._v.rmdir(self._abs(path))

    def rename(self, old, new):
        self._check_write()
        # VfsPosix(root).rename joins both paths into one shared buffer, so the
        # second overwrites the first (MicroPython 1.29): rename on host paths.
        self._host.rename(self._root + self._abs(old), self._root + self._abs(new))
