# secp256k1 field arithmetic in MicroPython's viper emitter, for k*G.
#
# A bigint operation on an RP2040 costs 20-200 us, mostly allocation and
# dispatch; a Jacobian mixed addition made of 28 of them took 2.3 ms. Here a
# field element is a 32-byte buffer of sixteen 16-bit limbs, little-endian
# (so the buffer is also the number's little-endian bytes), and the addition
# works in place on preallocated buffers: no allocation at all.
#
# 16-bit limbs: a limb product fits 32 bits, so the code means the same on
# every viper target (armv6m, xtensa(win), rv32imc: 32-bit words; x64: 64-bit).
# p = 2^256 - C with C = 2^32 + 977, so 2^256 = C (mod p): a product's high
# half H folds back as H*977 + H*2^32.
#
# Every function keeps its results fully reduced (0 <= x < p) and may write
# its result over an operand.
import micropython


def buffers():
    """X, Y, Z, x2, y2, t1, t2, t3 (32 bytes each) and T (64) for madd."""
    out = [bytearray(32) for _ in range(8)]
    out.append(bytearray(64))
    return out


@micropython.viper
def _reduce_top(ro, c: uint):
    # ro holds a number below 2^256 + 2^68 as ro + c*2^256, c in {0, 1}: make
    # it fully reduced. ro + C carries out of 2^256 exactly when ro >= p.
    r = ptr16(ro)
    if not c:
        c = (uint(r[0]) + uint(977)) >> 16
        c = (c + uint(r[1])) >> 16
        c = (c + uint(r[2]) + uint(1)) >> 16
        i = 3
        while i < 16:
            c = (c + uint(r[i])) >> 16
            i += 1
        if not c:
            return
    # Subtract p: add C and drop the carry.
    c = uint(r[0]) + uint(977)
    r[0] = c & 0xFFFF
    c = (c >> 16) + uint(r[1])
    r[1] = c & 0xFFFF
    c = (c >> 16) + uint(r[2]) + uint(1)
    r[2] = c & 0xFFFF
    i = 3
    while i < 16:
        c = (c >> 16) + uint(r[i])
        r[i] = c & 0xFFFF
        i += 1


def mul(r, a, b, t):
    """r = a*b mod p; t is scratch of 64 bytes (viper does not check bounds)."""
    _mul(t, 0, b, a, r, t)


@micropython.viper
def _mul(q: ptr16, c: uint, b: ptr16, a: ptr16, ro, to):
    # mul(ro, a, b, to), its arguments ordered for speed: viper keeps a
    # function's first three locals (the first three parameters) in registers
    # on armv6m, and q, c, b are the ones the inner steps use. Call it with
    # q = to and c = 0.
    r = ptr16(ro)
    t = ptr16(to)
    i = 0
    while i < 16:
        t[i] = 0
        i += 1
    # Operand scanning, one row per limb of a, the row unrolled (constant
    # indexes compile to single loads). A step's sum is at most
    # (2^16-1) + (2^16-1)^2 + (2^16-1) = 2^32 - 1: it never overflows.
    i = 0
    while i < 16:
        ai = uint(a[i])
        q = ptr16(uint(t) + uint(i << 1))
        c = uint(q[0]) + ai * uint(b[0])
        q[0] = c
        c = (c >> 16) + uint(q[1]) + ai * uint(b[1])
        q[1] = c
        c = (c >> 16) + uint(q[2]) + ai * uint(b[2])
        q[2] = c
        c = (c >> 16) + uint(q[3]) + ai * uint(b[3])
        q[3] = c
        c = (c >> 16) + uint(q[4]) + ai * uint(b[4])
        q[4] = c
        c = (c >> 16) + uint(q[5]) + ai * uint(b[5])
        q[5] = c
        c = (c >> 16) + uint(q[6]) + ai * uint(b[6])
        q[6] = c
        c = (c >> 16) + uint(q[7]) + ai * uint(b[7])
        q[7] = c
        c = (c >> 16) + uint(q[8]) + ai * uint(b[8])
        q[8] = c
        c = (c >> 16) + uint(q[9]) + ai * uint(b[9])
        q[9] = c
        c = (c >> 16) + uint(q[10]) + ai * uint(b[10])
        q[10] = c
        c = (c >> 16) + uint(q[11]) + ai * uint(b[11])
        q[11] = c
        c = (c >> 16) + uint(q[12]) + ai * uint(b[12])
        q[12] = c
        c = (c >> 16) + uint(q[13]) + ai * uint(b[13])
        q[13] = c
        c = (c >> 16) + uint(q[14]) + ai * uint(b[14])
        q[14] = c
        c = (c >> 16) + uint(q[15]) + ai * uint(b[15])
        q[15] = c
        q[16] = c >> 16
        i += 1
    # First fold: t = L + H*2^256 -> L + H*977 + H*2^32, below 2^290 (19 limbs).
    c = uint(t[0]) + uint(t[16]) * uint(977)
    t[0] = c
    c = (c >> 16) + uint(t[1]) + uint(t[17]) * uint(977)
    t[1] = c
    c >>= 16
    i = 2
    while i < 16:
        c += uint(t[i]) + uint(t[16 + i]) * uint(977) + uint(t[14 + i])
        t[i] = c
        c >>= 16
        i += 1
    c += uint(t[30])
    t[16] = c
    c = (c >> 16) + uint(t[31])
    t[17] = c
    t[18] = c >> 16
    # Second fold of the 34 bits above 2^256 (limbs 16..18), into r.
    h0 = uint(t[16])
    h1 = uint(t[17])
    h2 = uint(t[18])
    c = uint(t[0]) + h0 * uint(977)
    r[0] = c
    c = (c >> 16) + uint(t[1]) + h1 * uint(977)
    r[1] = c
    c = (c >> 16) + uint(t[2]) + h2 * uint(977) + h0
    r[2] = c
    c = (c >> 16) + uint(t[3]) + h1
    r[3] = c
    c = (c >> 16) + uint(t[4]) + h2
    r[4] = c
    c >>= 16
    i = 5
    while i < 16:
        c += uint(t[i])
        r[i] = c
        c >>= 16
        i += 1
    # r >= p needs its top limb 0xFFFF (p's top 208 bits are ones): rare.
    if c or r[15] == 0xFFFF:
        _reduce_top(ro, c)


@micropython.viper
def add(ro, a: ptr16, b: ptr16):
    """ro = a + b mod p."""
    r = ptr16(ro)
    c = uint(0)
    i = 0
    while i < 16:
        c += uint(a[i]) + uint(b[i])
        r[i] = c & 0xFFFF
        c >>= 16
        i += 1
    if c or r[15] == 0xFFFF:
        _reduce_top(ro, c)


@micropython.viper
def sub(r: ptr16, a: ptr16, b: ptr16):
    """r = a - b mod p."""
    c = 0
    i = 0
    while i < 16:
        c += int(a[i]) - int(b[i])
        r[i] = c & 0xFFFF
        c >>= 16
        i += 1
    if c:
        # Borrowed: add p, i.e. subtract C and drop the borrow.
        c = int(r[0]) - 977
        r[0] = c & 0xFFFF
        c = (c >> 16) + int(r[1])
        r[1] = c & 0xFFFF
        c = (c >> 16) + int(r[2]) - 1
        r[2] = c & 0xFFFF
        i = 3
        while i < 16:
            c = (c >> 16) + int(r[i])
            r[i] = c & 0xFFFF
            i += 1


@micropython.viper
def neg(r: ptr16):
    """r = -r mod p."""
    c = 0
    i = 0
    while i < 16:
        c -= int(r[i])
        r[i] = c & 0xFFFF
        c >>= 16
        i += 1
    if c:
        # -r + 2^256 for r != 0: subtract C to make it p - r.
        c = int(r[0]) - 977
        r[0] = c & 0xFFFF
        c = (c >> 16) + int(r[1])
        r[1] = c & 0xFFFF
        c = (c >> 16) + int(r[2]) - 1
        r[2] = c & 0xFFFF
        i = 3
        while i < 16:
            c = (c >> 16) + int(r[i])
            r[i] = c & 0xFFFF
            i += 1


@micropython.viper
def copy(r: ptr16, a: ptr16, one: int):
    """r = a, or r = 1 when one is true (a is then not read)."""
    i = 0
    while i < 16:
        r[i] = 0 if one else a[i]
        i += 1
    if one:
        r[0] = 1


@micropython.viper
def is_zero(a: ptr16) -> bool:
    i = 0
    while i < 16:
        if a[i]:
            return False
        i += 1
    return True


@micropython.viper
def load_be(r: ptr16, src: ptr8, off: int):
    """r = the 32-byte big-endian number at src[off:off+32]."""
    i = 0
    while i < 16:
        r[i] = (src[off + 31 - 2 * i]) | (src[off + 30 - 2 * i] << 8)
        i += 1


@micropython.viper
def madd(X, Y, Z, x2, y2, t1, t2, t3, T) -> int:
    """(X, Y, Z) += (x2, y2) in place: Jacobian plus affine, Z != 0 (7M + 4S).

    t1..t3 are field scratch, T the multiplication scratch. Returns 1, with
    nothing changed, when the x coordinates match (the caller then doubles or
    gets infinity), else 0.
    """
    _mul(T, 0, Z, Z, t1, T)  # Z^2
    _mul(T, 0, t1, x2, t2, T)
    sub(t2, t2, X)  # H = x2*Z^2 - X
    if is_zero(t2):
        return 1
    _mul(T, 0, Z, t1, t1, T)
    _mul(T, 0, t1, y2, t1, T)
    sub(t1, t1, Y)  # R = y2*Z^3 - Y
    _mul(T, 0, t2, Z, Z, T)  # Z3 = Z*H
    _mul(T, 0, t2, t2, t3, T)  # H^2
    _mul(T, 0, t3, t2, t2, T)  # H^3
    _mul(T, 0, t3, X, t3, T)  # V = X*H^2
    _mul(T, 0, t1, t1, X, T)
    sub(X, X, t2)
    sub(X, X, t3)
    sub(X, X, t3)  # X3 = R^2 - H^3 - 2V
    sub(t3, t3, X)
    _mul(T, 0, t3, t1, t3, T)  # R*(V - X3)
    _mul(T, 0, t2, Y, Y, T)
    sub(Y, t3, Y)  # Y3 = R*(V - X3) - Y*H^3
    return 0
