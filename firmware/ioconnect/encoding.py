# Text encodings used by identities: hex, base64url (JWK), base58btc (did:key
# multibase "z"), bech32 (IoTeX io1... addresses, BIP-173).
# Strict decoders: anything non-canonical is an EncodingError, so two
# spellings never map to the same key.
import binascii

from micropython import const

# Alphabets are bytes, and text is worked on as bytes: MicroPython interns
# every 1-character str that indexing, iterating or chr() makes, in a table
# on the heap that is never freed, so str-by-character code would grow the
# heap with whatever characters the data brings (and tie up new table blocks
# mid-request).
_B58 = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_BECH32 = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l"
# BIP-173 generator; each fits in 30 bits, so the checksum stays a small int
# on 32-bit boards.
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32_MAX = const(90)


class EncodingError(ValueError):
    pass


def to_hex(data):
    """Lowercase hex without prefix."""
    return binascii.hexlify(data).decode()


def from_hex(text):
    """Hex (either case, optional 0x prefix) to bytes."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if len(text) % 2:
        raise EncodingError("hex: odd number of digits")
    try:
        return binascii.unhexlify(text)
    except ValueError:
        raise EncodingError("hex: non-hex digit")


def b64url_encode(data):
    """base64url without padding (RFC 7515 section 2), as str."""
    s = binascii.b2a_base64(data, newline=False).decode()
    return s.replace("+", "-").replace("/", "_").rstrip("=")


def b64url_decode(text):
    """Inverse of b64url_encode; rejects padding, other alphabets, stray bits."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode()
    if len(text) % 4 == 1:
        raise EncodingError("base64url: impossible length %d" % len(text))
    raw = text.encode()
    for i in range(len(raw)):
        if raw[i] not in _B64URL:
            raise EncodingError("base64url: bad character %r" % _char_at(raw, i))
    std = text.replace("-", "+").replace("_", "/")
    data = binascii.a2b_base64(std + "=" * (-len(text) % 4))
    # Unused low bits of the last character must be zero (canonical form).
    if b64url_encode(data) != text:
        raise EncodingError("base64url: non-canonical trailing bits")
    return data


def b58encode(data):
    """base58btc (Bitcoin alphabet); leading zero bytes become '1'."""
    zeros = 0
    while zeros < len(data) and data[zeros] == 0:
        zeros += 1
    # Little-endian base-58 digits, by dividing one bigint: a schoolbook
    # loop over small ints took 31 ms (this 6 ms) for a did:key on an RP2040.
    digits = bytearray()
    v = int.from_bytes(bytes(data[zeros:]), "big")
    while v:
        v, r = divmod(v, 58)
        digits.append(r)
    n = len(digits)
    out = bytearray(zeros + n)
    for j in range(zeros):
        out[j] = 0x31  # "1"
    for j in range(n):
        out[zeros + j] = _B58[digits[n - 1 - j]]
    return out.decode()


def b58decode(text):
    """Inverse of b58encode."""
    raw = text if isinstance(text, (bytes, bytearray)) else text.encode()
    zeros = 0
    while zeros < len(raw) and raw[zeros] == 0x31:  # "1"
        zeros += 1
    out = bytearray()  # little-endian base-256 digits
    for i in range(zeros, len(raw)):
        carry = _B58.find(raw[i])
        if carry < 0:
            raise EncodingError("base58: bad character %r" % _char_at(raw, i))
        for j in range(len(out)):
            carry += out[j] * 58
            out[j] = carry & 0xFF
            carry >>= 8
        while carry:
            out.append(carry & 0xFF)
            carry >>= 8
    res = bytearray(zeros + len(out))
    n = len(res)
    for j in range(len(out)):
        res[n - 1 - j] = out[j]
    return bytes(res)


def convertbits(data, frombits, tobits, pad=True):
    """Regroup bit strings (8->5 for bech32 and back)."""
    acc = 0
    bits = 0
    out = bytearray()
    maxv = (1 << tobits) - 1
    for v in data:
        if v >> frombits:
            raise EncodingError("convertbits: value out of range")
        acc = ((acc << frombits) | v) & 0xFFF  # only the pending bits matter
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise EncodingError("convertbits: non-zero padding")
    return bytes(out)


def _polymod(values, chk=1):
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _char_at(raw, i):
    # The character starting at byte i of UTF-8 text, for error messages only
    # (one more interned name per distinct bad character is fine on that path).
    j = i + 1
    while j < len(raw) and raw[j] & 0xC0 == 0x80:
        j += 1
    try:
        return bytes(raw[i:j]).decode()
    except UnicodeError:
        return bytes(raw[i:j])


def _hrp_expand(hrp):
    # hrp: ASCII bytes
    return bytes([c >> 5 for c in hrp]) + b"\x00" + bytes([c & 31 for c in hrp])


def bech32_encode(hrp, data5):
    """BIP-173 bech32 of 5-bit groups ``data5`` under human-readable ``hrp``."""
    h = hrp.lower().encode()
    chk = _polymod(b"\x00" * 6, _polymod(data5, _polymod(_hrp_expand(h)))) ^ 1
    n = len(h) + 1 + len(data5) + 6
    if n > _BECH32_MAX:
        raise EncodingError("bech32: longer than 90 characters")
    out = bytearray(n)
    out[: len(h)] = h
    k = len(h)
    out[k] = 0x31  # "1"
    for v in data5:
        k += 1
        out[k] = _BECH32[v]
    for i in range(6):
        k += 1
        out[k] = _BECH32[(chk >> (5 * (5 - i))) & 31]
    return out.decode()


def bech32_decode(text):
    """Inverse of bech32_encode -> (hrp, data5); rejects mixed case, bad checksum."""
    if text.lower() != text and text.upper() != text:
        raise EncodingError("bech32: mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text) or len(text) > _BECH32_MAX:
        raise EncodingError("bech32: bad separator position or length")
    raw = text.encode()
    pos = raw.rfind(b"1")  # a byte index from here on (text may not be ASCII)
    for i in range(pos):
        if not 33 <= raw[i] <= 126:
            raise EncodingError("bech32: bad character in prefix")
    data = bytearray()
    for i in range(pos + 1, len(raw)):
        v = _BECH32.find(raw[i])
        if v < 0:
            raise EncodingError("bech32: bad character %r" % _char_at(raw, i))
        data.append(v)
    if _polymod(data, _polymod(_hrp_expand(raw[:pos]))) != 1:
        raise EncodingError("bech32: checksum mismatch")
    return text[:pos], bytes(data[:-6])


def bech32_address(hrp, payload):
    """Address form: ``payload`` bytes regrouped 8->5 then bech32 (io1... for IoTeX)."""
    return bech32_encode(hrp, convertbits(payload, 8, 5))


def bech32_address_decode(hrp, text):
    """Payload bytes of a bech32 address, checking the expected ``hrp``."""
    got, data5 = bech32_decode(text)
    if got != hrp:
        raise EncodingError("bech32: prefix %r, expected %r" % (got, hrp))
    return convertbits(data5, 5, 8, False)
