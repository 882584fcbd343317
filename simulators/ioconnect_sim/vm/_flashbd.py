# The flashed filesystem partition of a virtual board's flash file, as the
# block device MicroPython's VfsLfs2 mounts (extended block protocol: the
# ports' rp2.Flash and esp32.Partition take these same calls). Every write
# goes straight to the file (the unix port's files are unbuffered), so a
# power cut keeps what littlefs had committed, as NOR flash does.
_ERASED = b"\xff" * 256
_EIO = 5
_ENOSPC = 28


class FlashBlocks:
    def __init__(self, f, offset, size, block, faults):
        self._f = f
        self._off = offset
        self._count = size // block
        self._bs = block
        self._faults = faults  # callable -> dict; "flash": "eio"|"enospc" fails every write

    def readblocks(self, n, buf, off=0):
        self._f.seek(self._off + n * self._bs + off)
        self._f.readinto(buf)

    def _check(self):
        fail = self._faults().get("flash")
        if fail == "eio":
            raise OSError(_EIO)
        if fail == "enospc":
            raise OSError(_ENOSPC)

    def writeblocks(self, n, buf, off=None):
        self._check()
        if off is None:  # the simple protocol: erase, then write whole blocks
            for i in range(len(buf) // self._bs):
                self._erase(n + i)
            off = 0
        self._f.seek(self._off + n * self._bs + off)
        self._f.write(buf)

    def _erase(self, n):
        self._f.seek(self._off + n * self._bs)
        for _ in range(self._bs // len(_ERASED)):
            self._f.write(_ERASED)

    def ioctl(self, op, arg):
        if op == 4:  # MP_BLOCKDEV_IOCTL_BLOCK_COUNT
            return self._count
        if op == 5:  # MP_BLOCKDEV_IOCTL_BLOCK_SIZE
            return self._bs
        if op == 6:  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE
            self._check()
            self._erase(arg)
            return 0
        return 0  # init, deinit, sync: nothing buffered here


def mount(spec, faults):
    # Mount the partition as the rp2 port's _boot.py does: littlefs v2, and a
    # fresh one when the partition holds none (erased, or never formatted).
    import os

    f = open(spec["path"], "r+b")
    bdev = FlashBlocks(f, spec["offset"], spec["size"], spec["block_size"], faults)
    try:
        fs = os.VfsLfs2(bdev, progsize=256)
    except OSError:
        os.VfsLfs2.mkfs(bdev, progsize=256)
        fs = os.VfsLfs2(bdev, progsize=256)
    return fs
