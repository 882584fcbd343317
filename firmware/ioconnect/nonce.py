# Reading nonces: 1, 2, 3 ... strictly increasing across resets and power
# cuts, never repeated. W3bstream and the relay take (device, nonce) as the
# identity of a reading, so a repeated nonce would be a replay or a lost reading.
#
# Write-ahead reservation: before handing out n, the store makes sure a
# high-water mark >= n is on flash; when it runs out it persists
# n - 1 + reserve and then hands out up to that. After a reboot it continues
# from the persisted mark + 1, so a crash skips at most `reserve` values and
# never goes back. One flash write per `reserve` readings (and one per boot).
#
# File (24 bytes): b"IONC", version 1, 3 zero bytes, high-water mark (u64,
# big-endian), first 8 bytes of sha256 of the 16 before. Written to
# <path>.tmp, read back, then renamed over <path> (atomic on LittleFS and
# POSIX). A committed file wins; a complete temp file with no committed one
# (FAT's unlink+rename cut short) is adopted; a corrupt or unreadable
# committed file is NonceError, never a restart from 1.
import hashlib
import os
import struct

from micropython import const

_MAGIC = b"IONC"
_VERSION = const(1)
_LEN = const(24)
_MAX = const(0xFFFFFFFFFFFFFFFF)  # W3bstream nonces are uint64
_ENOENT = const(2)


class NonceError(ValueError):
    pass


def _encode(high):
    head = _MAGIC + struct.pack(">B3xQ", _VERSION, high)
    return head + hashlib.sha256(head).digest()[:8]


def _decode(blob):
    if len(blob) != _LEN:
        raise NonceError("length %d, expected %d" % (len(blob), _LEN))
    if blob[:4] != _MAGIC:
        raise NonceError("bad magic")
    if hashlib.sha256(blob[:16]).digest()[:8] != blob[16:]:
        raise NonceError("checksum mismatch")
    if blob[4] != _VERSION:
        raise NonceError("unsupported format version %d" % blob[4])
    return struct.unpack(">Q", blob[8:16])[0]


def _read(path):
    # -> bytes, or None if the file does not exist.
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        if e.errno == _ENOENT:
            return None
        raise NonceError("%s: cannot read (errno %s): signing stopped" % (path, e.errno))


class NonceStore:
    def __init__(self, path="nonce.dat", reserve=32):
        if not 1 <= reserve <= 1 << 20:
            raise NonceError("reserve must be 1..1048576")
        self.path = path
        self._tmp = path + ".tmp"
        self.reserve = reserve
        self._next = 0  # 0: not loaded yet
        self._limit = 0  # highest nonce known to be persisted

    def high_water(self):
        """The persisted reservation (loads it if needed)."""
        self._load()
        return self._limit

    def _load(self):
        if self._next:
            return
        blob = _read(self.path)
        high = 0
        if blob is not None:
            try:
                high = _decode(blob)
            except NonceError as e:
                raise NonceError("%s: %s (file corrupt): signing stopped" % (self.path, e))
        else:
            blob = _read(self._tmp)
            if blob is not None:
                try:
                    high = _decode(blob)
                except NonceError:
                    high = 0  # a first write cut short: nothing was handed out yet
                else:
                    try:
                        self._commit()
                    except OSError as e:
                        raise NonceError("%s: cannot commit (errno %s)" % (self.path, e.errno))
        self._limit = high
        self._next = high + 1

    def next(self):
        """The next nonce; NonceError if it cannot be made durable first."""
        self._load()
        n = self._next
        if n > self._limit:
            if n > _MAX:
                raise NonceError("nonce space exhausted")
            self._persist(min(n - 1 + self.reserve, _MAX))
        self._next = n + 1
        return n

    def _persist(self, high):
        blob = _encode(high)
        tmp = self._tmp
        try:
            with open(tmp, "wb") as f:
                n = f.write(blob)
                f.flush()
            if n != _LEN:
                raise NonceError("%s: short write (%d of %d bytes)" % (tmp, n, _LEN))
            sync = getattr(os, "sync", None)
            if sync:
                sync()
            if _read(tmp) != blob:
                raise NonceError("%s: read-back differs: signing stopped" % tmp)
            self._commit()
        except OSError as e:
            # The committed mark is unchanged (or, past the rename, higher):
            # values above self._limit stay unused until a write succeeds.
            raise NonceError("%s: cannot write (errno %s): signing stopped" % (self.path, e.errno))
        self._limit = high

    def _commit(self):
        os.rename(self._tmp, self.path)
