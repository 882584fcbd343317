# Ed25519 (RFC 8032, pure Ed25519) for MicroPython.
#
#   public_key(seed32) -> bytes32
#   sign(seed32, msg) -> bytes64
#   verify(pub32, msg, sig64) -> bool
#
# Wrong argument lengths or types raise Ed25519Error (a caller bug); everything
# that can go wrong with a signature itself (S >= L, a public key or R that is
# not a canonical point encoding, a mismatch) makes verify() return False.
# Verification is cofactorless, [S]B == R + [k]A compared as encodings, the
# same rule as OpenSSL (so as the `cryptography` package).
#
# Field elements are Python ints mod p = 2^255 - 19, points are extended
# twisted Edwards coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, xy = T/Z.
# k*B reads one precomputed point per w-bit signed window from
# tables/ed25519.bin beside this file (built by ioconnect_host.ectables_ed25519):
# additions only, no doublings. The table is read entry by entry with
# seek/readinto into one 96-byte buffer, never loaded onto the heap, and its
# SHA-256 is checked once, on first use; without a good table k*B falls back
# to the generic windowed double-and-add (about 5x slower). The public key of
# the last seed used is cached (keyed by SHA-512(seed)), so sign() needs one
# k*B, not two.
# Not constant-time (Python ints, table lookups by secret digits): fine against
# remote attackers, not against someone measuring the board's power or timing.
import hashlib

from ioconnect.sha512 import SHA512, sha512


class Ed25519Error(ValueError):
    pass


_P = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED
_L = 0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED
_D = 0x52036CEE2B6FFE738CC740797779E89800700A4D4141D8AB75EB4DCA135978A3
_D2 = 0x2406D9DC56DFFCE7198E80F2EEF3D13000E0149A8283B156EBD69B9426B2F159
_SQRTM1 = 0x2B8324804FC1DF0B2B4D00993DFBD7A72F431806AD2FE478C4EE1B274A0EA0B0
_BX = 0x216936D3CD6E53FEC0A4E231FDD6DC5C692CC7609525A7B2C9562D608F25D51A
_BY = 0x6666666666666666666666666666666666666666666666666666666666666658
_B = (_BX, _BY, 1, _BX * _BY % _P)

_HDR = b"IOED\x01"
_HDR_LEN = 40  # 8-byte header, then the SHA-256 of the entries
_ENTRY = 96  # (y + x) || (y - x) || 2dxy, 32 bytes little-endian each


def _inv(x):
    # extended Euclid: ~10x faster than pow(x, p - 2, p) on MicroPython
    r0, r1 = _P, x % _P
    t0, t1 = 0, 1
    while r1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        t0, t1 = t1, t0 - q * t1
    return t0 % _P


def _dbl(p):
    # dbl-2008-hwcd with a = -1 (inlined without T in _var_mul's main loop)
    X, Y, Z, _ = p
    P = _P
    a = X * X % P
    b = Y * Y % P
    c = 2 * Z * Z % P
    e = (X + Y) * (X + Y) % P - a - b
    g = b - a
    f = g - c
    h = -a - b
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _cached(p):
    # (Y + X, Y - X, 2dT, 2Z): what _add needs of its second operand
    X, Y, Z, T = p
    return (Y + X, Y - X, _D2 * T % _P, 2 * Z)


def _add(p, c):
    # add-2008-hwcd-3 (unified, complete for a = -1 and non-square d)
    X, Y, Z, T = p
    ypx, ymx, t2d, z2 = c
    P = _P
    a = (Y - X) * ymx % P
    b = (Y + X) * ypx % P
    c = T * t2d % P
    d = Z * z2 % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _encode(p):
    X, Y, Z, _ = p
    zi = _inv(Z)
    x = X * zi % _P
    y = Y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(s):
    # RFC 8032 5.1.3; None for a non-canonical y or a value off the curve
    P = _P
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (_D * y * y + 1) % P
    v3 = v * v % P * v % P
    x = u * v3 % P * pow(u * v3 % P * v3 % P * v % P, (P - 5) // 8, P) % P
    vx2 = v * x % P * x % P
    if vx2 != u:
        if vx2 != P - u:
            return None
        x = x * _SQRTM1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _var_mul(k, p):
    # k*p for 0 <= k < 2^253 (so the top digit takes the last carry): signed
    # 4-bit windows over cached 1p .. 8p, doublings inlined (most of verify)
    tab = [_cached(p)]
    q = _dbl(p)
    tab.append(_cached(q))
    for _ in range(6):
        q = _add(q, tab[0])
        tab.append(_cached(q))
    digits = bytearray(64)  # signed digits -7 .. 8, stored mod 256
    kb = k.to_bytes(32, "little")
    carry = 0
    for i in range(64):
        d = ((kb[i >> 1] >> (4 * (i & 1))) & 15) + carry
        carry = 0
        if d > 8:
            d -= 16
            carry = 1
        digits[i] = d & 255
    P = _P
    X, Y, Z, T = 0, 1, 1, 0
    started = False
    for i in range(63, -1, -1):
        if started:
            for _ in range(4):
                a = X * X % P
                b = Y * Y % P
                c = 2 * Z * Z % P
                e = X + Y
                e = e * e % P - a - b
                g = b - a
                f = g - c
                h = -a - b
                X = e * f % P
                Y = g * h % P
                Z = f * g % P
            T = e * h % P
        d = digits[i]
        if d:
            started = True
            if d > 128:
                ymx, ypx, t2d, z2 = tab[255 - d]
                t2d = -t2d
            else:
                ypx, ymx, t2d, z2 = tab[d - 1]
            a = (Y - X) * ymx % P
            b = (Y + X) * ypx % P
            c = T * t2d % P
            d = Z * z2 % P
            e = b - a
            f = d - c
            g = d + c
            h = b + a
            X = e * f % P
            Y = g * h % P
            Z = f * g % P
            T = e * h % P
    return (X, Y, Z, T)


# --- fixed-base table ---------------------------------------------------

_checked = False  # the table file has been looked at
_tbl = None  # type: tuple | None  # (path, w, n) of a good table
_buf = bytearray(_ENTRY)
_mv = memoryview(_buf)
_f0, _f1, _f2 = _mv[0:32], _mv[32:64], _mv[64:96]


def _table_path():
    try:
        here = __file__
    except NameError:  # frozen into firmware without a file
        return None
    i = here.rfind("/")
    return here[: i + 1] + "tables/ed25519.bin"


def _load_table():
    # Check the header, size and SHA-256 once; any fault means "no table".
    global _checked, _tbl
    _checked = True
    _tbl = None
    path = _table_path()
    if path is None:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(_HDR_LEN)
            if len(head) != _HDR_LEN or head[:5] != _HDR:
                return
            w, n = head[5], head[6]
            if not 2 <= w <= 8 or n != (253 + w - 1) // w:
                return
            want = n * (_ENTRY << (w - 1))
            h = hashlib.sha256()
            chunk = bytearray(1536)
            got = 0
            while True:
                m = f.readinto(chunk)
                if not m:
                    break
                h.update(chunk if m == len(chunk) else memoryview(chunk)[:m])
                got += m
            if got != want or h.digest() != head[8:40]:
                return
    except OSError:
        return
    _tbl = (path, w, n)


def table_info():
    """(window bits, windows) of the fixed-base table in use, or None."""
    if not _checked:
        _load_table()
    return _tbl[1:] if _tbl else None


def _base_mul(k):
    # k*B for 0 <= k < L
    if not _checked:
        _load_table()
    if _tbl is None:
        return _var_mul(k, _B)
    path, w, n = _tbl
    P = _P
    mask = (1 << w) - 1
    half = 1 << (w - 1)
    row = half * _ENTRY
    kb = k.to_bytes(34, "little")
    carry = 0
    acc = None
    with open(path, "rb") as f:
        for i in range(n):
            bit = i * w
            j = bit >> 3
            d = (((kb[j] | kb[j + 1] << 8) >> (bit & 7)) & mask) + carry
            carry = 0
            if d > half:
                d -= 1 << w
                carry = 1
            if d == 0:
                continue
            f.seek(_HDR_LEN + i * row + ((d if d > 0 else -d) - 1) * _ENTRY)
            f.readinto(_buf)
            ypx = int.from_bytes(_f0, "little")
            ymx = int.from_bytes(_f1, "little")
            xy2d = int.from_bytes(_f2, "little")
            if d < 0:  # -(x, y) = (-x, y)
                ypx, ymx, xy2d = ymx, ypx, -xy2d
            if acc is None:
                # (4x, 4y, 4, 4xy) from y + x and y - x, no inversion
                e = ypx - ymx
                h = ypx + ymx
                acc = (2 * e, 2 * h, 4, e * h % P)
                continue
            # mixed addition with an affine Niels point, 7 multiplications
            X, Y, Z, T = acc
            a = (Y - X) * ymx % P
            b = (Y + X) * ypx % P
            c = T * xy2d % P
            e = b - a
            f_ = 2 * Z - c
            g = 2 * Z + c
            h = b + a
            acc = (e * f_ % P, g * h % P, f_ * g % P, e * h % P)
    if carry:  # cannot happen for k < 2^253
        raise Ed25519Error("scalar out of range")
    return acc or (0, 1, 1, 0)


# --- RFC 8032 -------------------------------------------------------------

_cache = [None, None]  # (sha512(seed), public key) of the last key used


def _bytes_arg(v, n, what):
    try:
        size = len(v)
    except TypeError:
        size = -1
    if size < 0 or isinstance(v, str):
        raise Ed25519Error(what + " must be bytes")
    if n and size != n:
        raise Ed25519Error("%s must be %d bytes, not %d" % (what, n, size))


def _expand(seed):
    _bytes_arg(seed, 32, "seed")
    h = sha512(seed)
    a = bytearray(h[:32])
    a[0] &= 248
    a[31] = (a[31] & 127) | 64
    return h, int.from_bytes(a, "little")


def _public(h, s):
    if _cache[0] != h:
        _cache[1] = _encode(_base_mul(s % _L))
        _cache[0] = h
    return _cache[1]


def public_key(seed):
    """The 32-byte public key of a 32-byte secret seed."""
    h, s = _expand(seed)
    return _public(h, s)


def sign(seed, msg):
    """Pure Ed25519 signature (R || S, 64 bytes) of msg under seed."""
    h, s = _expand(seed)
    _bytes_arg(msg, 0, "message")
    pub = _public(h, s)
    r = int.from_bytes(SHA512(memoryview(h)[32:]).update(msg).digest(), "little") % _L
    R = _encode(_base_mul(r))
    k = int.from_bytes(SHA512(R).update(pub).update(msg).digest(), "little") % _L
    return R + ((r + k * s) % _L).to_bytes(32, "little")


def verify(pub, msg, sig):
    """True if sig is a valid signature of msg under pub (see the header)."""
    _bytes_arg(pub, 32, "public key")
    _bytes_arg(sig, 64, "signature")
    _bytes_arg(msg, 0, "message")
    sv = memoryview(sig)
    s = int.from_bytes(sv[32:], "little")
    if s >= _L:
        return False
    a = _decode(pub)
    if a is None:
        return False
    k = int.from_bytes(SHA512(sv[:32]).update(pub).update(msg).digest(), "little") % _L
    x, y, z, t = a
    q = _var_mul(k, (_P - x, y, z, _P - t))  # k * (-A)
    q = _add(_base_mul(s), _cached(q))
    return _encode(q) == bytes(sv[:32])
