# SHA-512 (FIPS 180-4) for MicroPython, whose hashlib has no sha512 (Ed25519 needs it).
#
# 64-bit words are kept as (hi, lo) pairs of 32-bit words in bytearrays and the
# compression function runs under @micropython.viper: no heap ints on 32-bit
# boards. Viper rules kept here (correct on 32- and 64-bit machine words):
# values are cast to uint before right shifts (logical shift); low-half sums
# are masked to 32 bits before the carry test (lo < addend), the mask being a
# word loaded from memory (0xFFFFFFFF is no small int on a 32-bit board); high
# halves may carry junk above bit 31 on the 64-bit port, but are only stored
# through ptr32, which truncates. Tail padding is done in viper too.
import micropython
from micropython import const


class SHA512Error(ValueError):
    pass


_MASK = const(160)  # word index of 0xFFFFFFFF in _WK
_WI = const(162)  # message schedule W[0..79], (hi, lo) pairs
_AI = const(322)  # A[0..83]: A[t + 3] is "a" at round t (b, c, d follow below it)
_EI = const(490)  # E[0..83]: the same for e, f, g, h
_WK_WORDS = const(658)

# _WK words 0..159: round constants K[0..79] as (hi, lo); then the mask, then
# the schedule and the a/e histories (no state rotation: round t writes t + 4).
_WK = bytearray(4 * _WK_WORDS)
_IV = bytearray(64)


@micropython.viper
def _be_words(dst: ptr32, src: ptr8, n: int):
    # n big-endian 32-bit words from bytes (endianness-independent)
    i = 0
    while i < n:
        p = 4 * i
        dst[i] = (src[p] << 24) | (src[p + 1] << 16) | (src[p + 2] << 8) | src[p + 3]
        i += 1


def _init():
    # H0: fractional parts of the square roots of the first 8 primes
    _be_words(_IV, bytes.fromhex(
        "6a09e667f3bcc908bb67ae8584caa73b3c6ef372fe94f82ba54ff53a5f1d36f1510e527fade682d19b05688c2b3e6c1f"
        "1f83d9abfb41bd6b5be0cd19137e2179"
    ), 16)
    # K: fractional parts of the cube roots of the first 80 primes
    _be_words(_WK, bytes.fromhex(
        "428a2f98d728ae227137449123ef65cdb5c0fbcfec4d3b2fe9b5dba58189dbbc3956c25bf348b53859f111f1b605d019"
        "923f82a4af194f9bab1c5ed5da6d8118d807aa98a303024212835b0145706fbe243185be4ee4b28c550c7dc3d5ffb4e2"
        "72be5d74f27b896f80deb1fe3b1696b19bdc06a725c71235c19bf174cf692694e49b69c19ef14ad2efbe4786384f25e3"
        "0fc19dc68b8cd5b5240ca1cc77ac9c652de92c6f592b02754a7484aa6ea6e4835cb0a9dcbd41fbd476f988da831153b5"
        "983e5152ee66dfaba831c66d2db43210b00327c898fb213fbf597fc7beef0ee4c6e00bf33da88fc2d5a79147930aa725"
        "06ca6351e003826f142929670a0e6e7027b70a8546d22ffc2e1b21385c26c9264d2c6dfc5ac42aed53380d139d95b3df"
        "650a73548baf63de766a0abb3c77b2a881c2c92e47edaee692722c851482353ba2bfe8a14cf10364a81a664bbc423001"
        "c24b8b70d0f89791c76c51a30654be30d192e819d6ef5218d69906245565a910f40e35855771202a106aa07032bbd1b8"
        "19a4c116b8d2d0c81e376c085141ab532748774cdf8eeb9934b0bcb5e19b48a8391c0cb3c5c95a634ed8aa4ae3418acb"
        "5b9cca4f7763e373682e6ff3d6b2b8a3748f82ee5defb2fc78a5636f43172f6084c87814a1f0ab728cc702081a6439ec"
        "90befffa23631e28a4506cebde82bde9bef9a3f7b2c67915c67178f2e372532bca273eceea26619cd186b8c721c0c207"
        "eada7dd6cde0eb1ef57d4f7fee6ed17806f067aa72176fba0a637dc5a2c898a6113f9804bef90dae1b710b35131c471b"
        "28db77f523047d8432caab7b40c724933c9ebe0a15c9bebc431d67c49c100d4c4cc5d4becb3e42b6597f299cfc657e2a"
        "5fcb6fab3ad6faec6c44198c4a475817"
    ), 160)
    _WK[4 * _MASK:4 * _MASK + 4] = b"\xff\xff\xff\xff"


_init()


@micropython.viper
def _compress(h: ptr32, w: ptr32, data: ptr8, off: int):
    m = uint(w[_MASK])
    i = 0
    while i < 32:
        p = off + 4 * i
        w[_WI + i] = (data[p] << 24) | (data[p + 1] << 16) | (data[p + 2] << 8) | data[p + 3]
        i += 1
    # schedule: W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16]
    q = _WI + 32
    while q < _WI + 160:
        xh = uint(w[q - 4])
        xl = uint(w[q - 3])
        hi = ((xh >> 19) | (xl << 13)) ^ ((xl >> 29) | (xh << 3)) ^ (xh >> 6)
        lo = (((xl >> 19) | (xh << 13)) ^ ((xh >> 29) | (xl << 3)) ^ ((xl >> 6) | (xh << 26))) & m
        x = uint(w[q - 13])
        lo = (lo + x) & m
        hi += uint(w[q - 14])
        if lo < x:
            hi += 1
        xh = uint(w[q - 30])
        xl = uint(w[q - 29])
        hi += ((xh >> 1) | (xl << 31)) ^ ((xh >> 8) | (xl << 24)) ^ (xh >> 7)
        x = (((xl >> 1) | (xh << 31)) ^ ((xl >> 8) | (xh << 24)) ^ ((xl >> 7) | (xh << 25))) & m
        lo = (lo + x) & m
        if lo < x:
            hi += 1
        x = uint(w[q - 31])
        lo = (lo + x) & m
        hi += uint(w[q - 32])
        if lo < x:
            hi += 1
        w[q] = hi
        w[q + 1] = lo
        q += 2
    # A[0..3] = d, c, b, a and E[0..3] = h, g, f, e
    i = 0
    while i < 8:
        w[_AI + i] = h[6 - i + 2 * (i & 1)]
        w[_EI + i] = h[14 - i + 2 * (i & 1)]
        i += 1
    t = 0
    while t < 80:
        a = _AI + 2 * t
        e = _EI + 2 * t
        # T1 = h + S1(e) + Ch(e, f, g) + K[t] + W[t]
        eh = uint(w[e + 6])
        el = uint(w[e + 7])
        hi = uint(w[e])
        lo = uint(w[e + 1])
        hi += ((eh >> 14) | (el << 18)) ^ ((eh >> 18) | (el << 14)) ^ ((el >> 9) | (eh << 23))
        x = (((el >> 14) | (eh << 18)) ^ ((el >> 18) | (eh << 14)) ^ ((eh >> 9) | (el << 23))) & m
        lo = (lo + x) & m
        if lo < x:
            hi += 1
        gh = uint(w[e + 2])
        gl = uint(w[e + 3])
        hi += gh ^ (eh & (uint(w[e + 4]) ^ gh))
        x = gl ^ (el & (uint(w[e + 5]) ^ gl))
        lo = (lo + x) & m
        if lo < x:
            hi += 1
        x = uint(w[2 * t + 1])
        lo = (lo + x) & m
        hi += uint(w[2 * t])
        if lo < x:
            hi += 1
        x = uint(w[_WI + 2 * t + 1])
        lo = (lo + x) & m
        hi += uint(w[_WI + 2 * t])
        if lo < x:
            hi += 1
        # e' = d + T1
        x = (uint(w[a + 1]) + lo) & m
        w[e + 8] = uint(w[a]) + hi + (1 if x < lo else 0)
        w[e + 9] = x
        # a' = T1 + S0(a) + Maj(a, b, c)
        ah = uint(w[a + 6])
        al = uint(w[a + 7])
        hi += ((ah >> 28) | (al << 4)) ^ ((al >> 2) | (ah << 30)) ^ ((al >> 7) | (ah << 25))
        x = (((al >> 28) | (ah << 4)) ^ ((ah >> 2) | (al << 30)) ^ ((ah >> 7) | (al << 25))) & m
        lo = (lo + x) & m
        if lo < x:
            hi += 1
        bh = uint(w[a + 4])
        bl = uint(w[a + 5])
        ch = uint(w[a + 2])
        cl = uint(w[a + 3])
        hi += (ah & (bh | ch)) | (bh & ch)
        x = (al & (bl | cl)) | (bl & cl)
        lo = (lo + x) & m
        if lo < x:
            hi += 1
        w[a + 8] = hi
        w[a + 9] = lo
        t += 1
    # H[j] += a, b, c, d (A[83..80]) and e, f, g, h (E[83..80])
    j = 0
    while j < 16:
        s = _AI + 166 - j
        if j >= 8:
            s = _EI + 174 - j
        x = uint(w[s + 1])
        lo = (uint(h[j + 1]) + x) & m
        h[j] = uint(h[j]) + uint(w[s]) + (1 if lo < x else 0)
        h[j + 1] = lo
        j += 2


@micropython.viper
def _pad(blk: ptr8, src: ptr8, off: int, n: int) -> int:
    # Last block(s) of an n-byte message whose n % 128 tail bytes are at
    # src[off:]: tail, 0x80, zeros, 128-bit big-endian bit length (n < 2**31).
    # Returns how many 128-byte blocks blk now holds (1 or 2).
    r = n & 127
    size = 128
    if r >= 112:
        size = 256
    i = 0
    while i < r:
        blk[i] = src[off + i]
        i += 1
    blk[r] = 0x80
    i = r + 1
    while i < size:
        blk[i] = 0
        i += 1
    blk[size - 1] = n << 3
    blk[size - 2] = n >> 5
    blk[size - 3] = n >> 13
    blk[size - 4] = n >> 21
    blk[size - 5] = n >> 29
    return size >> 7


@micropython.viper
def _out(dst: ptr8, h: ptr32):
    i = 0
    while i < 16:
        v = uint(h[i])
        dst[4 * i] = v >> 24
        dst[4 * i + 1] = v >> 16
        dst[4 * i + 2] = v >> 8
        dst[4 * i + 3] = v
        i += 1


def _check(data):
    if isinstance(data, str):
        raise SHA512Error("sha512 takes bytes, not str")


def _finish(h, blk, src, off, n):
    if _pad(blk, src, off, n) == 2:
        _compress(h, _WK, blk, 0)
        _compress(h, _WK, blk, 128)
    else:
        _compress(h, _WK, blk, 0)
    _out(blk, h)
    return bytes(memoryview(blk)[:64])


# Reused buffers: sha512() allocates only its 64-byte result. Not reentrant
# (the compression scratch in _WK is shared by every caller).
_H = bytearray(64)
_BLK = bytearray(256)


def sha512(data):
    """SHA-512 of bytes-like data -> 64 bytes."""
    _check(data)
    h = _H
    h[:] = _IV
    n = len(data)
    off = 0
    while n - off >= 128:
        _compress(h, _WK, data, off)
        off += 128
    return _finish(h, _BLK, data, off, n)


class SHA512:
    """Incremental SHA-512 (saves concatenating the parts of a message)."""

    def __init__(self, data=None):
        self._h = bytearray(_IV)
        self._buf = bytearray(128)
        self._n = 0
        if data is not None:
            self.update(data)

    def update(self, data):
        _check(data)
        n = len(data)
        fill = self._n & 127
        self._n += n
        off = 0
        if fill:
            off = min(128 - fill, n)
            self._buf[fill:fill + off] = memoryview(data)[:off]
            if fill + off < 128:
                return self
            _compress(self._h, _WK, self._buf, 0)
        while n - off >= 128:
            _compress(self._h, _WK, data, off)
            off += 128
        if off < n:
            self._buf[: n - off] = memoryview(data)[off:]
        return self

    def digest(self):
        # finish on copies, so update() may go on afterwards
        return _finish(bytearray(self._h), bytearray(256), self._buf, 0, self._n)
