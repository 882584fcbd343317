# The virtual board's flash: a host folder mounted over "/" through a Python VFS.
# It keeps paths inside the folder, lists sizes as littlefs does (mpremote's
# `fs ls` shows them), reports the board's partition size from statvfs, and
# can fail on demand (ENOSPC, EIO) so firmware error paths are tested through
# a real filesystem. Writes are counted against the partition: a file that
# would grow past the free blocks gets OSError(ENOSPC), as littlefs answers
# LFS_ERR_NOSPC, and nothing of that write lands (earlier data stays intact).
import io
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
        self._used = None  # blocks in use; None: count again (after a remove, rename...)

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
        if "w" not in mode and "a" not in mode and "+" not in mode:
            return self._v.open(self._abs(path), mode)  # reads (imports!) stay native
        self._check_write()
        self._used = None  # "w" truncates: its blocks come free
        return _File(self, self._v.open(self._abs(path), mode), "a" in mode)

    def blocks(self, size):
        # littlefs gives every file at least one block (see _used_blocks)
        return (size + self._block - 1) // self._block or 1

    def used(self):
        if self._used is None:
            self._used = self._used_blocks("/")
        return self._used

    def grow(self, old_size, new_size):
        # Claim the blocks a file needs to reach new_size, or raise ENOSPC.
        need = self.blocks(new_size) - self.blocks(old_size)
        if need > 0:
            if self.used() + need > self._size // self._block:
                raise OSError(_ENOSPC)
            self._used += need

    def stat(self, path):
        return self._v.stat(self._abs(path))

    def statvfs(self, path):
        blocks = self._size // self._block
        used = self.used()
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
        self._used = None
        self._v.mkdir(self._abs(path))

    def remove(self, path):
        self._check_write()
        self._used = None
        self._v.remove(self._abs(path))

    def rmdir(self, path):
        self._check_write()
        self._used = None
        self._v.rmdir(self._abs(path))

    def rename(self, old, new):
        self._check_write()
        self._used = None  # a replaced file's blocks come free
        # VfsPosix(root).rename joins both paths into one shared buffer, so the
        # second overwrites the first (MicroPython 1.29): rename on host paths.
        self._host.rename(self._root + self._abs(old), self._root + self._abs(new))


class _File(io.IOBase):
    # A file open for writing: every write that grows it is counted against
    # the partition first. A stream (io.IOBase), so json.dump(obj, f) works.
    def __init__(self, fs, f, append):
        self._fs = fs
        self._f = f
        f.seek(0, 2)
        self._size = f.tell()  # 0 after "w"; the current size for "a", "r+"
        if not append:
            f.seek(0)

    def write(self, buf):
        end = self._f.tell() + len(buf)
        if end > self._size:
            self._fs.grow(self._size, end)
            self._size = end
        return self._f.write(buf)

    def readinto(self, buf):
        return self._f.readinto(buf)

    def read(self, n=-1):
        return self._f.read(n)

    def readline(self):
        return self._f.readline()

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def flush(self):
        return self._f.flush()

    def close(self):
        self._f.close()

    def ioctl(self, req, arg):
        if req == 4:  # MP_STREAM_CLOSE
            self._f.close()
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return self

    def __next__(self):
        line = self._f.readline()
        if not line:
            raise StopIteration
        return line
