# Signed readings waiting for the relay's ack: one file per reading in a
# folder, named by its nonce (decimal), content = the exact POST /v1/task
# body. Bounded: when more than `capacity` are held the OLDEST are dropped and
# counted, so a board that is offline for weeks keeps its newest readings and
# says how many it lost.
#
# Writes are atomic: <dir>/<nonce>.tmp then rename, so a power cut mid-write
# loses at most that reading (a leftover .tmp is deleted on open). The drop
# counter lives in <dir>/dropped as "<count> <last dropped nonce>\n", written
# the same way BEFORE the dropped file is removed: a cut between the two
# leaves a file at or below the last dropped nonce, which the next open
# removes without counting it twice.
import os

from micropython import const

_ENOENT = const(2)
_EEXIST = const(17)
_DIR = const(0x4000)


class OutboxError(ValueError):
    pass


class Outbox:
    def __init__(self, path="outbox", capacity=64, max_body=1024):
        if capacity < 1:
            raise OutboxError("capacity must be at least 1")
        self.path = path
        self.capacity = capacity
        self.max_body = max_body
        self.dropped = 0
        self.last_dropped = 0
        try:
            os.mkdir(path)
        except OSError as e:
            if e.errno != _EEXIST:
                raise OutboxError("%s: cannot create (errno %s)" % (path, e.errno))
        self._load_counter()
        nonces = []
        for entry in os.ilistdir(path):
            name = entry[0]
            if entry[1] == _DIR:
                continue
            if name.endswith(".tmp"):
                self._unlink(name)  # a write cut short: that reading is lost
            elif _is_decimal(name):
                n = int(name)
                if n <= self.last_dropped:
                    self._unlink(name)  # dropped and counted before a power cut
                else:
                    nonces.append(n)
        nonces.sort()
        self._nonces = nonces
        while len(nonces) > capacity:
            self._drop_oldest()

    def __len__(self):
        return len(self._nonces)

    def pending(self):
        """Nonces waiting for an ack, ascending (a new list)."""
        return list(self._nonces)

    def count_upto(self, nonce):
        """How many pending nonces are <= ``nonce`` (no allocation)."""
        k = 0
        for n in self._nonces:
            if n > nonce:
                break
            k += 1
        return k

    def next_after(self, nonce):
        """The smallest pending nonce greater than ``nonce``, or None (no allocation)."""
        for n in self._nonces:
            if n > nonce:
                return n
        return None

    def put(self, nonce, body):
        """Store a reading; drops (and counts) the oldest when over capacity."""
        if not isinstance(nonce, int) or nonce < 1:
            raise OutboxError("nonce must be a positive integer")
        if nonce <= self.last_dropped:
            raise OutboxError("nonce %d is not newer than dropped %d" % (nonce, self.last_dropped))
        if len(body) > self.max_body:
            raise OutboxError("body of %d bytes exceeds %d" % (len(body), self.max_body))
        name = self._name(nonce)
        try:
            self._write(name, body)
        except OSError as e:
            raise OutboxError("%s: cannot store reading (errno %s)" % (name, e.errno))
        ns = self._nonces
        if nonce not in ns:
            i = len(ns)
            while i and ns[i - 1] > nonce:
                i -= 1
            ns.insert(i, nonce)
        while len(ns) > self.capacity:
            self._drop_oldest()

    def get(self, nonce):
        try:
            with open(self._name(nonce), "rb") as f:
                return f.read()
        except OSError as e:
            raise OutboxError("reading %d: cannot read (errno %s)" % (nonce, e.errno))

    def read_into(self, nonce, buf):
        """Read the body into ``buf``; returns its length (no allocation for the body)."""
        try:
            with open(self._name(nonce), "rb") as f:
                n = f.readinto(buf)
                if n == len(buf) and f.read(1):
                    raise OutboxError("reading %d larger than the buffer" % nonce)
                return n
        except OSError as e:
            raise OutboxError("reading %d: cannot read (errno %s)" % (nonce, e.errno))

    def remove(self, nonce):
        """Forget a reading (the relay acked it); False if it was not held."""
        if nonce not in self._nonces:
            return False
        try:
            os.remove(self._name(nonce))
        except OSError as e:
            if e.errno != _ENOENT:
                raise OutboxError("reading %d: cannot remove (errno %s)" % (nonce, e.errno))
        self._nonces.remove(nonce)
        return True

    # -- internals ------------------------------------------------------
    def _name(self, nonce):
        return "%s/%d" % (self.path, nonce)

    def _write(self, name, data):
        tmp = name + ".tmp"
        with open(tmp, "wb") as f:
            n = f.write(data)
        if n != len(data):
            raise OSError(28)  # short write: the flash is full
        os.rename(tmp, name)

    def _unlink(self, name):
        try:
            os.remove(self.path + "/" + name)
        except OSError:
            pass  # tried again on the next open

    def _drop_oldest(self):
        victim = self._nonces[0]
        self.dropped += 1
        self.last_dropped = victim
        try:
            self._write(self.path + "/dropped", ("%d %d\n" % (self.dropped, victim)).encode())
        except OSError:
            pass  # counted in RAM; persisted with the next drop
        self._unlink(str(victim))
        self._nonces.pop(0)

    def _load_counter(self):
        try:
            with open(self.path + "/dropped", "rb") as f:
                parts = f.read().split()
            self.dropped = int(parts[0])
            self.last_dropped = int(parts[1])
        except (OSError, ValueError, IndexError):
            pass  # none yet, or unreadable: the count starts again


def _is_decimal(name):
    if not name or len(name) > 20:
        return False
    for c in name:
        if not "0" <= c <= "9":
            return False
    return True
