# The device key store: one identity key on the device filesystem, written so
# that a power cut at any instant leaves either the old or the new key.
#
# File format, version 1 (binary, big-endian, 104..137 bytes):
#   0   4  magic b"IOKY"
#   4   1  version = 1
#   5   1  curve id: 1 secp256k1, 2 p256, 3 ed25519
#   6   1  S = secret length (32)
#   7   1  P = public key length (65: 04||X||Y, or 32 for Ed25519)
#   8   S  secret: ECDSA scalar d (big-endian), or the RFC 8032 Ed25519 seed
#   8+S P  public key, stored so boot and DID derivation need no curve math
#   ..  32 sha256 of every byte before it
#
# Writes: the new file goes to <path>.tmp, is flushed, read back and compared,
# then renamed over <path> (atomic on LittleFS and POSIX). rotate() first
# renames the old key to <path>.bak (one generation kept: an ioID-registered
# device that loses its key is orphaned; delete the .bak to drop the old key).
# If <path> is missing but <path>.tmp is complete (power cut between the two
# renames, or FAT's unlink+rename), load() finishes the commit. A committed
# file always wins over a leftover temp file.
#
# The private key lives only inside a closure made by _signer() (behind a
# holder whose repr hides it): no attribute and no method hands it out.
import hashlib
import os

from micropython import const

_MAGIC = b"IOKY"
_VERSION = const(1)
_HDR = const(8)
_SUM = const(32)
_SECRET = const(32)

CURVES = ("secp256k1", "p256", "ed25519")
_PUB_LEN = (65, 65, 32)
DEFAULT_PATH = "identity.key"


class KeyStoreError(ValueError):
    pass


class NoIdentityError(KeyStoreError):
    pass


def _curve_index(curve):
    for i in range(len(CURVES)):
        if CURVES[i] == curve:
            return i
    raise KeyStoreError("unknown curve %r (expected secp256k1, p256 or ed25519)" % (curve,))


class _Secret:
    # Holder whose repr hides the value: MicroPython prints a closure's cells
    # in its repr, so a bare int or bytes in the closure would show there.
    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return "<secret>"


def _signer(curve, secret):
    # Returns sign(data, prehashed) -> (sig64, recid or None). The secret is
    # captured here and nowhere else.
    if curve == "ed25519":
        seed = _Secret(bytes(secret))

        def sign_ed(data, prehashed):
            if prehashed:
                raise KeyStoreError("sign_digest needs an ECDSA key, not ed25519")
            from ioconnect import ed25519

            return ed25519.sign(seed.value, data), None

        return sign_ed
    d = _Secret(int.from_bytes(secret, "big"))

    def sign_ec(data, prehashed):
        from ioconnect import ecdsa

        digest = data if prehashed else hashlib.sha256(data).digest()
        return ecdsa.sign_digest(ecdsa.curve_by_name(curve), d.value, digest)

    return sign_ec


class Key:
    """A loaded identity key: public key and signing, never the secret."""

    def __init__(self, curve, pub, sign):
        self.curve = curve
        self._pub = pub
        self._sign = sign

    def public_key(self, compressed=False):
        pub = self._pub
        if not compressed or self.curve == "ed25519":
            return pub
        return bytes([2 + (pub[64] & 1)]) + pub[1:33]

    def sign(self, msg):
        """64-byte signature: ECDSA r||s over sha256(msg), or Ed25519 of msg."""
        return self._sign(msg, False)[0]

    def sign_digest(self, digest):
        """(r||s, recid) over a 32-byte digest; ECDSA keys only."""
        if len(digest) != 32:
            raise KeyStoreError("digest must be 32 bytes")
        return self._sign(digest, True)

    def __repr__(self):
        return "<Key %s>" % self.curve


def _encode(ci, secret, pub):
    body = _MAGIC + bytes((_VERSION, ci + 1, len(secret), len(pub))) + secret + pub
    return body + hashlib.sha256(body).digest()


def _decode(blob):
    # -> (curve index, secret, pub); every check names what is wrong.
    if len(blob) < _HDR + _SUM:
        raise KeyStoreError("truncated (%d bytes)" % len(blob))
    if blob[:4] != _MAGIC:
        raise KeyStoreError("not a key file (bad magic)")
    if blob[4] != _VERSION:
        raise KeyStoreError("unsupported format version %d" % blob[4])
    ci = blob[5] - 1
    if not 0 <= ci < len(CURVES):
        raise KeyStoreError("unknown curve id %d" % blob[5])
    slen = blob[6]
    plen = blob[7]
    if slen != _SECRET or plen != _PUB_LEN[ci]:
        raise KeyStoreError("bad key lengths %d/%d for %s" % (slen, plen, CURVES[ci]))
    end = _HDR + slen + plen
    if len(blob) != end + _SUM:
        raise KeyStoreError("length %d, expected %d (truncated?)" % (len(blob), end + _SUM))
    if hashlib.sha256(blob[:end]).digest() != blob[end:]:
        raise KeyStoreError("checksum mismatch (file corrupt)")
    secret = blob[_HDR : _HDR + slen]
    if ci < 2:
        from ioconnect import ecdsa

        d = int.from_bytes(secret, "big")
        if not 0 < d < ecdsa.curve_by_name(CURVES[ci]).n:
            raise KeyStoreError("private key out of range")
        if blob[_HDR + slen] != 4:
            raise KeyStoreError("public key not uncompressed")
    return ci, secret, blob[_HDR + slen : end]


def _make(ci, secret, pub):
    curve = CURVES[ci]
    return Key(curve, bytes(pub), _signer(curve, secret))


def _generate(ci):
    # Fresh key from os.urandom: ecdsa.generate rejects out-of-range scalars;
    # any 32 bytes are a valid Ed25519 seed.
    if ci == 2:
        from ioconnect import ed25519

        seed = os.urandom(_SECRET)
        return seed, ed25519.public_key(seed)
    from ioconnect import ecdsa

    c = ecdsa.curve_by_name(CURVES[ci])
    d = ecdsa.generate(c)
    return d.to_bytes(_SECRET, "big"), ecdsa.public_key(c, d)


def _read(path):
    # -> bytes, or None if the file does not exist.
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise KeyStoreError("%s: cannot read (errno %s)" % (path, e.errno))


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class KeyStore:
    """Keeps the device identity key in one file, ``path`` (see format above)."""

    def __init__(self, path=DEFAULT_PATH):
        self.path = path
        self._tmp = path + ".tmp"
        self.backup_path = path + ".bak"

    def exists(self):
        """True if a key is stored; KeyStoreError if the file is unreadable."""
        try:
            self.load()
            return True
        except NoIdentityError:
            return False

    def load(self):
        """The stored Key. NoIdentityError if none, KeyStoreError if unreadable."""
        blob = _read(self.path)
        if blob is not None:
            try:
                return _make(*_decode(blob))
            except KeyStoreError as e:
                raise KeyStoreError("%s: %s" % (self.path, e))
        # No committed file: a complete temp file is a commit cut short
        # before its rename; finish it. A partial one is just discarded later.
        blob = _read(self._tmp)
        if blob is not None:
            try:
                parts = _decode(blob)
            except KeyStoreError:
                parts = None
            if parts is not None:
                os.rename(self._tmp, self.path)
                return _make(*parts)
        raise NoIdentityError("no identity in %s" % self.path)

    def create(self, curve="secp256k1", derive=None):
        """Generate and store a new key; refuses if an identity exists.

        Returns the Key, or ``derive(key)`` if given: it runs before anything is
        written, so what it raises (an import, out of memory) stores nothing,
        and what it returns is ready once the key is stored."""
        ci = _curve_index(curve)
        try:
            self.load()
        except NoIdentityError:
            return self._store(ci, False, derive)
        # A corrupt file also raised above: never overwrite what may be recoverable.
        raise KeyStoreError("identity exists; rotate to replace")

    def rotate(self, curve="secp256k1", derive=None):
        """Replace the key (even a corrupt one); the old file becomes backup_path.
        ``derive`` as for create()."""
        ci = _curve_index(curve)
        try:
            self.load()  # also finishes an interrupted commit first
        except KeyStoreError:
            pass
        return self._store(ci, True, derive)

    def _store(self, ci, backup, derive):
        secret, pub = _generate(ci)
        key = _make(ci, secret, pub)
        if derive is not None:
            key = derive(key)  # before the write: a failure here leaves the store as it was
        blob = _encode(ci, secret, pub)
        tmp = self._tmp
        try:
            with open(tmp, "wb") as f:
                n = f.write(blob)
                f.flush()
            if n != len(blob):
                raise KeyStoreError("%s: short write (%d of %d bytes)" % (tmp, n, len(blob)))
            sync = getattr(os, "sync", None)
            if sync:
                sync()
            if _read(tmp) != blob:
                raise KeyStoreError("%s: read-back differs from what was written" % tmp)
            if backup and _exists(self.path):
                os.rename(self.path, self.backup_path)
            os.rename(tmp, self.path)
        except OSError as e:
            # Full or failing flash: the committed file is untouched (or, past
            # the backup rename, the complete temp file is adopted by load()).
            raise KeyStoreError("%s: cannot write the key (errno %s)" % (self.path, e.errno))
        return key
