# ECDSA on secp256k1 and P-256: RFC 6979 deterministic nonces (HMAC-SHA256),
# low-S with the matching recovery id on secp256k1, verification and public-key
# recovery. Signatures are 64 bytes r||s; the recovery id travels beside them.
import os

from ioconnect.ec import P256, SECP256K1, ECError, inv
from ioconnect.hmac import hmac_sha256

__all__ = (
    "SECP256K1",
    "P256",
    "ECDSAError",
    "curve_by_name",
    "generate",
    "public_key",
    "decompress",
    "sign_digest",
    "verify_digest",
    "recover",
)


# One error type for every curve fault, whichever layer finds it.
ECDSAError = ECError


def curve_by_name(name):
    if name == "secp256k1":
        return SECP256K1
    if name == "p256":
        return P256
    raise ECDSAError("unknown curve " + str(name))


def _check_digest(digest):
    if len(digest) != 32:
        raise ECDSAError("digest must be 32 bytes")
    return int.from_bytes(digest, "big")


def generate(curve):
    # Rejection sampling keeps the key uniform in [1, n-1].
    while True:
        d = int.from_bytes(os.urandom(32), "big")
        if 0 < d < curve.n:
            return d


def public_key(curve, d, compressed=False):
    if not 0 < d < curve.n:
        raise ECDSAError("private key out of range")
    x, y = curve.to_affine(curve.mul_g(d))
    # A corrupted table in flash would give a point off the curve: never publish it.
    if not curve.on_curve(x, y):
        raise ECDSAError("computed point is off the curve (bad table?)")
    return curve.encode_point(x, y, compressed)


def decompress(curve, pub33):
    x, y = curve.decode_point(pub33)
    return curve.encode_point(x, y)


def _nonces(curve, d, digest):
    # RFC 6979 section 3.2 with HMAC-SHA256, qlen = hlen = 256.
    n = curve.n
    h = int.from_bytes(digest, "big")
    if h >= n:
        h -= n
    seed = d.to_bytes(32, "big") + h.to_bytes(32, "big")
    V = b"\x01" * 32
    K = hmac_sha256(b"\x00" * 32, V + b"\x00" + seed)
    V = hmac_sha256(K, V)
    K = hmac_sha256(K, V + b"\x01" + seed)
    V = hmac_sha256(K, V)
    while True:
        V = hmac_sha256(K, V)
        k = int.from_bytes(V, "big")
        if 0 < k < n:
            yield k
        K = hmac_sha256(K, V + b"\x00")
        V = hmac_sha256(K, V)


def sign_digest(curve, d, digest):
    z = _check_digest(digest)
    n = curve.n
    if not 0 < d < n:
        raise ECDSAError("private key out of range")
    for k in _nonces(curve, d, digest):
        x, y = curve.to_affine(curve.mul_g(k))
        # Fault check: a wrong R with a deterministic k would leak the key.
        if not curve.on_curve(x, y):
            raise ECDSAError("computed point is off the curve (bad table?)")
        r = x % n
        if not r:
            continue
        s = inv(k, n) * (z + r * d) % n
        if not s:
            continue
        recid = (y & 1) | (2 if x >= n else 0)
        if curve is SECP256K1 and s > n >> 1:
            s = n - s
            recid ^= 1
        return r.to_bytes(32, "big") + s.to_bytes(32, "big"), recid


def _split(curve, sig):
    if len(sig) != 64:
        raise ECDSAError("signature must be 64 bytes r||s")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    return r, s


def _u1g_u2p(curve, u1, u2, P):
    return curve.add(curve.mul_g(u1), curve.mul(P, u2))


def verify_digest(curve, pub, digest, sig):
    z = _check_digest(digest)
    r, s = _split(curve, sig)
    n = curve.n
    if not (0 < r < n and 0 < s < n):
        return False
    try:
        x, y = curve.decode_point(pub)
    except ECError:
        return False
    w = inv(s, n)
    R = _u1g_u2p(curve, z * w % n, r * w % n, (x, y, 1))
    if not R[2]:
        return False
    return curve.to_affine(R)[0] % n == r


def recover(curve, digest, sig, recid):
    z = _check_digest(digest)
    r, s = _split(curve, sig)
    n = curve.n
    if not (0 < r < n and 0 < s < n) or not 0 <= recid <= 3:
        raise ECDSAError("signature or recovery id out of range")
    x = r + n if recid & 2 else r
    if x >= curve.p:
        raise ECDSAError("recovery id names no point")
    y = curve.sqrt((x * x * x + curve.a * x + curve.b) % curve.p)
    if (y & 1) != (recid & 1):
        y = curve.p - y
    # Q = r^-1 (s R - z G)
    ri = inv(r, n)
    Q = _u1g_u2p(curve, -z * ri % n, s * ri % n, (x, y, 1))
    if not Q[2]:
        raise ECDSAError("recovered point at infinity")
    qx, qy = curve.to_affine(Q)
    return curve.encode_point(qx, qy)
