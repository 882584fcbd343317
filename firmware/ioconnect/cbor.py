# CBOR (RFC 8949): deterministic encoder, bounded decoder.
# Encode follows the core deterministic rules (section 4.2.1): shortest heads,
# definite lengths, map keys sorted bytewise by their encodings. Supported
# values: int (64-bit), bytes, str, list/tuple, dict, bool, None, Tag.
# Floats are refused: readings travel as scaled integers.
# The decoder never trusts a length: every count is checked against the bytes
# left before anything is allocated, and depth and item count are bounded,
# so hostile input costs at most its own size.
from micropython import const

from ioconnect import utf8

MAX_DEPTH = const(16)
MAX_ITEMS = const(1024)


class CBORError(ValueError):
    pass


class Tag:
    def __init__(self, tag, value):
        if not isinstance(tag, int) or tag < 0 or tag >> 64:
            raise CBORError("tag number must be a 64-bit unsigned int")
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


def _head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(n.to_bytes(2, "big"))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(n.to_bytes(4, "big"))
    elif not n >> 64:
        out.append(mt | 27)
        out.extend(n.to_bytes(8, "big"))
    else:
        raise CBORError("integer outside the 64-bit range")


def _enc(obj, out, depth):
    if depth > MAX_DEPTH:
        raise CBORError("nesting deeper than %d" % MAX_DEPTH)
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(out, 0, obj)
        else:
            _head(out, 1, -1 - obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode()
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (list, tuple)):
        _head(out, 4, len(obj))
        for v in obj:
            _enc(v, out, depth + 1)
    elif isinstance(obj, dict):
        # Encode each key apart, then emit in bytewise order of the encodings.
        pairs = []
        for k, v in obj.items():
            kb = bytearray()
            _enc(k, kb, depth + 1)
            pairs.append((bytes(kb), v))
        pairs.sort(key=lambda p: p[0])
        _head(out, 5, len(pairs))
        prev = None
        for kenc, v in pairs:
            if kenc == prev:
                raise CBORError("two map keys encode the same")
            prev = kenc
            out.extend(kenc)
            _enc(v, out, depth + 1)
    elif isinstance(obj, Tag):
        _head(out, 6, obj.tag)
        _enc(obj.value, out, depth + 1)
    elif isinstance(obj, float):
        raise CBORError("floats are not supported; send a scaled integer")
    else:
        raise CBORError("cannot encode %s" % type(obj).__name__)


def encode(obj):
    """Deterministic CBOR encoding of ``obj`` as bytes."""
    out = bytearray()
    _enc(obj, out, 0)
    return bytes(out)


class _Decoder:
    def __init__(self, data, max_depth, max_items):
        self.d = data
        self.i = 0
        self.n = len(data)
        self.max_depth = max_depth
        self.left = max_items

    def item(self, depth):
        if depth > self.max_depth:
            raise CBORError("nesting deeper than %d" % self.max_depth)
        self.left -= 1
        if self.left < 0:
            raise CBORError("more than the allowed number of items")
        d = self.d
        i = self.i
        n = self.n
        if i >= n:
            raise CBORError("truncated input")
        ib = d[i]
        i += 1
        major = ib >> 5
        ai = ib & 31
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if i + size > n:
                raise CBORError("truncated head")
            arg = int.from_bytes(d[i:i + size], "big")
            i += size
        elif ai == 31:
            raise CBORError("indefinite length is not allowed")
        else:
            raise CBORError("reserved additional info %d" % ai)
        self.i = i
        left = n - i
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2 or major == 3:
            if arg > left:
                raise CBORError("string longer than the input")
            b = bytes(d[i:i + arg])
            self.i = i + arg
            if major == 2:
                return b
            if not utf8.valid(b):
                raise CBORError("text string is not valid UTF-8")
            return b.decode()
        if major == 4 or major == 5:
            if arg << (major - 4) > left:
                raise CBORError("%s longer than the input allows" % ("array", "map")[major - 4])
            if arg << (major - 4) > self.left:
                raise CBORError("more than the allowed number of items")
        if major == 4:
            arr = []
            for _ in range(arg):
                arr.append(self.item(depth + 1))
            return arr
        if major == 5:
            out = {}
            for _ in range(arg):
                k = self.item(depth + 1)
                if isinstance(k, bool) or not isinstance(k, (int, str, bytes)):
                    raise CBORError("map key must be an int, text or byte string")
                if k in out:
                    raise CBORError("duplicate map key")
                out[k] = self.item(depth + 1)
            return out
        if major == 6:
            return Tag(arg, self.item(depth + 1))
        # major 7
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if 25 <= ai <= 27:
            raise CBORError("floats are not supported")
        raise CBORError("unsupported simple value")


def decode(data, max_depth=MAX_DEPTH, max_items=MAX_ITEMS):
    """Decode one CBOR item that must fill ``data`` exactly.

    Raises CBORError on truncation, trailing bytes, indefinite lengths, bad
    UTF-8, duplicate keys, floats, or when the depth or item bounds are hit.
    """
    dec = _Decoder(data, max_depth, max_items)
    obj = dec.item(0)
    if dec.i != dec.n:
        raise CBORError("%d trailing bytes" % (dec.n - dec.i))
    return obj
