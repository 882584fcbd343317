# Short-Weierstrass curve arithmetic for secp256k1 and P-256.
#
# Points are Jacobian (X, Y, Z) with affine x = X/Z^2, y = Y/Z^3; Z == 0 is the
# point at infinity. k*G uses a precomputed table kept as a file in flash (read
# one 64-byte point at a time into a preallocated buffer), so it needs only
# additions and no doublings, and no table sits on the heap. Any other point is
# multiplied with a width-4 NAF.
from micropython import const

# secp256k1's k*G in viper (k1field), imported with this module: on the quiet
# heap where a job starts, not in the middle of its first signature (its
# machine code and workspace stay for good, see ioconnect.RESIDENT). A port
# without the viper emitter refuses the module; k*G then stays with bigints.
try:
    from ioconnect import k1field as _k1
except (ImportError, ValueError, SyntaxError):
    _k1 = None  # type: ignore[assignment]

_HDR = const(8)  # table header: b"IOEC", version, curve id, window bits, windows
_PT = const(64)  # one affine point: X || Y, 32 bytes each, big-endian


class ECError(ValueError):
    pass


def inv(a, m):
    # Extended Euclid: about 7x faster than pow(a, m-2, m) on MicroPython;
    # divmod gives quotient and remainder in one bigint operation.
    a %= m
    if not a:
        raise ECError("no inverse of 0")
    lm, hm, low, high = 1, 0, a, m
    while low > 1:
        q, r = divmod(high, low)
        lm, hm, low, high = hm - lm * q, lm, r, low
    return lm % m


class Curve:
    def __init__(self, name, cid, p, a, b, n, gx, gy, table):
        self.name = name
        self.cid = cid
        self.p = p
        self.a = a
        self.b = b
        self.n = n
        self.g = (gx, gy)
        self.a3 = a == p - 3  # P-256: a = -3 allows a cheaper doubling
        self._table = table
        self._f = None  # open table file, or False when there is none
        self._w = 0
        self._buf = bytearray(_PT)
        self._naf = bytearray(264)  # width-4 NAF digits of a scalar below n

    # -- affine helpers -------------------------------------------------
    def on_curve(self, x, y):
        p = self.p
        return 0 <= x < p and 0 <= y < p and (y * y - x * x * x - self.a * x - self.b) % p == 0

    def sqrt(self, v):
        # Both curves have p = 3 mod 4.
        p = self.p
        r = pow(v, (p + 1) >> 2, p)
        if r * r % p != v % p:
            raise ECError("not a square")
        return r

    def decode_point(self, pub):
        # 65-byte 04||X||Y or 33-byte 02/03||X; checks the point is on the curve.
        n = len(pub)
        if n == 65 and pub[0] == 4:
            x = int.from_bytes(pub[1:33], "big")
            y = int.from_bytes(pub[33:65], "big")
        elif n == 33 and pub[0] in (2, 3):
            x = int.from_bytes(pub[1:33], "big")
            if x >= self.p:
                raise ECError("point x out of range")
            y = self.sqrt((x * x * x + self.a * x + self.b) % self.p)
            if (y & 1) != (pub[0] & 1):
                y = self.p - y
        else:
            raise ECError("bad public key encoding")
        if not self.on_curve(x, y):
            raise ECError("point not on " + self.name)
        return x, y

    def encode_point(self, x, y, compressed=False):
        if compressed:
            return bytes((2 | (y & 1),)) + x.to_bytes(32, "big")
        return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")

    def to_affine(self, P):
        X, Y, Z = P
        if not Z:
            raise ECError("point at infinity")
        p = self.p
        zi = inv(Z, p)
        zi2 = zi * zi % p
        return X * zi2 % p, Y * zi2 * zi % p

    # -- Jacobian arithmetic -------------------------------------------
    def dbl(self, P):
        X, Y, Z = P
        if not Z or not Y:
            return (1, 1, 0)
        p = self.p
        YY = Y * Y % p
        S = 4 * X * YY % p
        if self.a3:
            ZZ = Z * Z % p
            M = 3 * (X - ZZ) * (X + ZZ) % p
        elif self.a:
            ZZ = Z * Z % p
            M = (3 * X * X + self.a * ZZ * ZZ) % p
        else:
            M = 3 * X * X % p
        X3 = (M * M - 2 * S) % p
        return X3, (M * (S - X3) - 8 * YY * YY) % p, 2 * Y * Z % p

    def add_affine(self, P, x2, y2):
        # P (Jacobian) + (x2, y2) (affine).
        X1, Y1, Z1 = P
        if not Z1:
            return (x2, y2, 1)
        p = self.p
        ZZ = Z1 * Z1 % p
        H = (x2 * ZZ - X1) % p
        R = (y2 * ZZ % p * Z1 - Y1) % p
        if not H:
            return self.dbl(P) if not R else (1, 1, 0)
        HH = H * H % p
        HHH = H * HH % p
        V = X1 * HH % p
        X3 = (R * R - HHH - 2 * V) % p
        return X3, (R * (V - X3) - Y1 * HHH) % p, Z1 * H % p

    def add(self, P, Q):
        X2, Y2, Z2 = Q
        if not Z2:
            return P
        if Z2 == 1:
            return self.add_affine(P, X2, Y2)
        X1, Y1, Z1 = P
        if not Z1:
            return Q
        p = self.p
        Z1Z1 = Z1 * Z1 % p
        Z2Z2 = Z2 * Z2 % p
        U1 = X1 * Z2Z2 % p
        S1 = Y1 * Z2Z2 % p * Z2 % p
        H = (X2 * Z1Z1 - U1) % p
        R = (Y2 * Z1Z1 % p * Z1 - S1) % p
        if not H:
            return self.dbl(P) if not R else (1, 1, 0)
        HH = H * H % p
        HHH = H * HH % p
        V = U1 * HH % p
        X3 = (R * R - HHH - 2 * V) % p
        return X3, (R * (V - X3) - S1 * HHH) % p, Z1 * Z2 % p * H % p

    def neg(self, P):
        return (P[0], (self.p - P[1]) % self.p, P[2])

    # -- scalar multiplication -----------------------------------------
    def _open_table(self):
        if self._f is None:
            self._f = False
            try:
                f = open(self._table, "rb")
            except OSError:
                return False
            h = f.read(_HDR)
            if len(h) == _HDR and h[:5] == b"IOEC\x01" and h[5] == self.cid:
                self._w = h[6]
                self._f = f
            else:
                f.close()
        return self._f

    def mul_g(self, k):
        # k*G, Jacobian. Signed radix-2^w digits d_i in [-2^(w-1), 2^(w-1)]:
        # k*G = sum d_i * (2^(w*i) G), each term one table read and one addition.
        k %= self.n
        f = self._open_table()
        if not f:
            return self.mul((self.g[0], self.g[1], 1), k)
        if self.cid == 1 and _k1:
            return self._mul_g_fe(f, k, _k1, _k1.WS)
        w = self._w
        mask = (1 << w) - 1
        half = 1 << (w - 1)
        buf = self._buf
        mv = memoryview(buf)
        p = self.p
        acc = (1, 1, 0)
        i = 0
        carry = 0
        while k or carry:
            d = (k & mask) + carry
            k >>= w
            if d > half:
                d -= 1 << w
                carry = 1
            else:
                carry = 0
            if d:
                f.seek(_HDR + ((i << (w - 1)) + (d if d > 0 else -d) - 1) * _PT)
                if f.readinto(buf) != _PT:
                    raise ECError("table file truncated")
                y = int.from_bytes(mv[32:64], "big")
                acc = self.add_affine(acc, int.from_bytes(mv[0:32], "big"), y if d > 0 else p - y)
            i += 1
        return acc

    def _mul_g_fe(self, f, k, F, ws):
        # mul_g with the sum kept in a k1field workspace: one call per term.
        w = self._w
        mask = (1 << w) - 1
        half = 1 << (w - 1)
        buf = self._buf
        empty = True  # the sum so far is the point at infinity
        i = 0
        carry = 0
        while k or carry:
            d = (k & mask) + carry
            k >>= w
            if d > half:
                d -= 1 << w
                carry = 1
            else:
                carry = 0
            if d:
                f.seek(_HDR + ((i << (w - 1)) + (d if d > 0 else -d) - 1) * _PT)
                if f.readinto(buf) != _PT:
                    raise ECError("table file truncated")
                if empty:
                    F.run(ws, buf, F.FIRST if d > 0 else F.FIRST_NEG)
                    empty = False
                elif F.run(ws, buf, F.ADD if d > 0 else F.ADD_NEG):
                    # Same x (cannot happen for 0 < k < n; kept for safety): the
                    # bigint code doubles or cancels, and its result goes back.
                    y = int.from_bytes(buf[32:64], "big")
                    P = self.add_affine(
                        (_slot(ws, F.X), _slot(ws, F.Y), _slot(ws, F.Z)),
                        int.from_bytes(buf[0:32], "big"),
                        y if d > 0 else self.p - y,
                    )
                    if P[2]:
                        for j in range(3):
                            ws[32 * j : 32 * j + 32] = P[j].to_bytes(32, "little")
                    else:
                        empty = True
            i += 1
        if empty:
            return (1, 1, 0)
        return _slot(ws, F.X), _slot(ws, F.Y), _slot(ws, F.Z)

    def mul(self, P, k):
        # k*P for any Jacobian point P, width-4 NAF over odd multiples P, 3P, 5P, 7P.
        k %= self.n
        if not k or not P[2]:
            return (1, 1, 0)
        P2 = self.dbl(P)
        odd = [P]
        for _ in range(3):
            odd.append(self.add(odd[-1], P2))
        # Digits (offset by 8) go into a buffer made once per curve: a list of
        # 257 ints would need a 4 KB block that a fragmented heap may not have.
        naf = self._naf
        n = 0
        while k:
            if k & 1:
                d = k & 15
                if d > 8:
                    d -= 16
                k -= d
            else:
                d = 0
            naf[n] = d + 8
            n += 1
            k >>= 1
        acc = (1, 1, 0)
        for i in range(n - 1, -1, -1):
            acc = self.dbl(acc)
            d = naf[i] - 8
            if d > 0:
                acc = self.add(acc, odd[d >> 1])
            elif d < 0:
                acc = self.add(acc, self.neg(odd[(-d) >> 1]))
        return acc


def _slot(ws, i):
    # Slot i of a k1field workspace (little-endian limbs) as an int.
    return int.from_bytes(ws[32 * i : 32 * i + 32], "little")


def _table_path(name):
    # Tables ship beside this module: <package dir>/tables/<name>.bin
    base = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    return base + "/tables/" + name + ".bin"


SECP256K1 = Curve(
    "secp256k1",
    1,
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F,
    0,
    7,
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
    _table_path("secp256k1"),
)

P256 = Curve(
    "p256",
    2,
    0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC,
    0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    _table_path("p256"),
)
