# secp256k1 field arithmetic in MicroPython's viper emitter, for k*G.
#
# A bigint operation on an RP2040 costs 20-200 us, mostly allocation and
# dispatch; a Jacobian mixed addition made of 28 of them took 2.3 ms. Here a
# field element is 32 bytes of sixteen 16-bit limbs, little-endian (so also
# the number's little-endian bytes), kept in slots of one preallocated
# workspace, and a whole step of k*G (load a table point, negate it, add it)
# is one call that runs a short program over the slots: no allocation, and
# one call instead of nineteen (a mixed addition: 1.23 ms, from 1.27 ms as
# separate viper calls and 2.3 ms as bigints).
#
# 16-bit limbs: a limb product fits 32 bits, so the code means the same on
# every viper target (armv6m, xtensa(win), rv32imc: 32-bit words; x64: 64-bit).
# p = 2^256 - C with C = 2^32 + 977, so 2^256 = C (mod p): a product's high
# half H folds back as H*977 + H*2^32. Results are fully reduced (0 <= x < p)
# and may be written over an operand.
import micropython
from micropython import const

# Workspace slots (32 bytes each); the multiplication scratch follows them.
X = const(0)  # the sum so far, Jacobian (X, Y, Z)
Y = const(1)
Z = const(2)
X2 = const(3)  # the table point, affine
Y2 = const(4)
_T1 = const(5)
_T2 = const(6)
_T3 = const(7)
_SCRATCH = const(256)  # byte offset of the 64-byte product scratch
_SIZE = const(320)

# Instructions: 4 bytes, op r a b (slot numbers; LOAD's a is the 32-byte
# number's index in the source buffer, big-endian there).
MUL = const(0)  # r = a*b
SUB = const(1)  # r = a - b
ZERO = const(2)  # stop and return 1 if a == 0
NEG = const(3)  # r = -r
LOAD = const(4)  # r = src[32a : 32a+32]
ONE = const(5)  # r = 1


def workspace():
    """A zeroed workspace for run()."""
    return bytearray(_SIZE)


# ec's workspace, made once at import: the module stays loaded (it is
# RESIDENT), so this never moves and never leaves a gap in the heap.
WS = workspace()


def program(*ins):
    """The bytes of a program: each instruction a tuple (op, r, a, b)."""
    out = bytearray()
    for i in ins:
        out.extend(bytes((i + (0, 0, 0))[:4]))
    return bytes(out)


# (X, Y, Z) += (X2, Y2): Jacobian plus affine, Z != 0 (7M + 4S, as in
# Curve.add_affine). Stops with 1 and (X, Y, Z) untouched when the x
# coordinates match (the caller then doubles or gets infinity).
_MADD = (
    (MUL, _T1, Z, Z),  # Z^2
    (MUL, _T2, X2, _T1),
    (SUB, _T2, _T2, X),  # H = x2*Z^2 - X
    (ZERO, 0, _T2),
    (MUL, _T1, _T1, Z),
    (MUL, _T1, Y2, _T1),
    (SUB, _T1, _T1, Y),  # R = y2*Z^3 - Y
    (MUL, Z, Z, _T2),  # Z3 = Z*H
    (MUL, _T3, _T2, _T2),  # H^2
    (MUL, _T2, _T2, _T3),  # H^3
    (MUL, _T3, X, _T3),  # V = X*H^2
    (MUL, X, _T1, _T1),
    (SUB, X, X, _T2),
    (SUB, X, X, _T3),
    (SUB, X, X, _T3),  # X3 = R^2 - H^3 - 2V
    (SUB, _T3, _T3, X),
    (MUL, _T3, _T1, _T3),  # R*(V - X3)
    (MUL, Y, Y, _T2),
    (SUB, Y, _T3, Y),  # Y3 = R*(V - X3) - Y*H^3
)
# k*G's steps, the table point (X || Y, 64 bytes) in src: the first term
# starts the sum, every later one is added; _NEG: the point's negative.
FIRST = program((LOAD, X, 0), (LOAD, Y, 1), (ONE, Z))
FIRST_NEG = program((LOAD, X, 0), (LOAD, Y, 1), (NEG, Y), (ONE, Z))
ADD = program((LOAD, X2, 0), (LOAD, Y2, 1), *_MADD)
ADD_NEG = program((LOAD, X2, 0), (LOAD, Y2, 1), (NEG, Y2), *_MADD)


def run(ws, src, prog):
    """Run ``prog`` over the workspace ``ws``; 1 if a ZERO stopped it, else 0."""
    return _run(ws, 0, ws, ws, src, prog, len(prog))


@micropython.viper
def _run(q: ptr16, c: uint, b: ptr16, wso, srco, progo, n: int) -> int:
    # Arguments ordered for speed: viper keeps a function's first three locals
    # (its first three parameters) in registers on armv6m, and q, c, b are the
    # ones the multiplication's inner steps use; run() passes placeholders.
    w = uint(ptr16(wso))
    s = ptr8(srco)
    pr = ptr8(progo)
    t = ptr16(w + _SCRATCH)
    pc = 0
    while pc < n:
        op = pr[pc]
        r = ptr16(w + (uint(pr[pc + 1]) << 5))
        a = ptr16(w + (uint(pr[pc + 2]) << 5))
        b = ptr16(w + (uint(pr[pc + 3]) << 5))
        pc += 4
        if op == MUL:
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
                if not c:
                    # r + C carries out of 2^256 exactly when r >= p.
                    c = (uint(r[0]) + uint(977)) >> 16
                    c = (c + uint(r[1])) >> 16
                    c = (c + uint(r[2]) + uint(1)) >> 16
                    i = 3
                    while i < 16:
                        c = (c + uint(r[i])) >> 16
                        i += 1
                if c:
                    # Subtract p: add C and drop the carry.
                    c = uint(r[0]) + uint(977)
                    r[0] = c
                    c = (c >> 16) + uint(r[1])
                    r[1] = c
                    c = (c >> 16) + uint(r[2]) + uint(1)
                    r[2] = c
                    i = 3
                    while i < 16:
                        c = (c >> 16) + uint(r[i])
                        r[i] = c
                        i += 1
        elif op == SUB or op == NEG:
            d = 0
            i = 0
            while i < 16:
                if op == SUB:
                    d += int(a[i]) - int(b[i])
                else:
                    d -= int(r[i])
                r[i] = d
                d >>= 16
                i += 1
            if d:
                # Borrowed: add p, i.e. subtract C and drop the borrow.
                d = int(r[0]) - 977
                r[0] = d
                d = (d >> 16) + int(r[1])
                r[1] = d
                d = (d >> 16) + int(r[2]) - 1
                r[2] = d
                i = 3
                while i < 16:
                    d = (d >> 16) + int(r[i])
                    r[i] = d
                    i += 1
        elif op == ZERO:
            i = 0
            while i < 16:
                if a[i]:
                    break
                i += 1
            if i == 16:
                return 1
        elif op == LOAD:
            o = int(pr[pc - 2]) << 5
            i = 0
            while i < 16:
                r[i] = s[o + 31 - 2 * i] | (s[o + 30 - 2 * i] << 8)
                i += 1
        elif op == ONE:
            i = 1
            while i < 16:
                r[i] = 0
                i += 1
            r[0] = 1
    return 0
