# HMAC-SHA256 (RFC 2104) on MicroPython's hashlib.sha256.
import hashlib

_BLOCK = 64
_IPAD = bytes(0x36 for _ in range(_BLOCK))
_OPAD = bytes(0x5C for _ in range(_BLOCK))


def _xor(key, pad):
    out = bytearray(pad)
    for i in range(len(key)):
        out[i] ^= key[i]
    return out


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    inner = hashlib.sha256(_xor(key, _IPAD))
    inner.update(msg)
    outer = hashlib.sha256(_xor(key, _OPAD))
    outer.update(inner.digest())
    return outer.digest()
