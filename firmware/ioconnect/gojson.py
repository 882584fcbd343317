# Byte-exact Go encoding/json output, for signatures that a Go server re-derives.
# go_marshal_raw = json.Marshal(json.RawMessage(raw)): Go validates the text,
# drops whitespace outside strings and escapes < > & U+2028 U+2029; every other
# byte (escapes, number spellings, key order, duplicate keys) is kept.
# go_marshal_string = json.Marshal(string) (Go <= 1.21 escapes: \n \r \t, else \u00XX).
# One pass over the input, appending spans to one output bytearray.
from micropython import const

from ioconnect.utf8 import seq_len as utf8_len


class GoJSONError(ValueError):
    pass


class GoJSONUnsupported(GoJSONError):
    # Go would accept this text, the device refuses it (bad UTF-8, too deep):
    # a caller must not fall back to treating it as "not JSON".
    pass


MAX_DEPTH = const(64)  # Go allows 10000; a board's payload never nests this deep

_HEX = b"0123456789abcdef"
_C_PLAIN = const(0)
_C_QUOTE = const(1)
_C_BSLASH = const(2)
_C_CTRL = const(3)
_C_HTML = const(4)
_C_HIGH = const(5)


def _classes():
    t = bytearray(256)
    for c in range(32):
        t[c] = _C_CTRL
    t[0x22] = _C_QUOTE
    t[0x5C] = _C_BSLASH
    t[0x3C] = t[0x3E] = t[0x26] = _C_HTML
    for c in range(128, 256):
        t[c] = _C_HIGH
    return bytes(t)


_CLS = _classes()
# Characters allowed after a backslash besides 'u'.
_ESC = b'"\\/bfnrt'


def _ws(s, i, n):
    while i < n:
        c = s[i]
        if c != 0x20 and c != 0x0A and c != 0x0D and c != 0x09:
            return i
        i += 1
    return i


def _u202x(out, last):
    # U+2028/U+2029 -> \u2028 / \u2029 (Go's escape for JavaScript safety)
    out.extend(b"\\u202")
    out.append(_HEX[last & 15])


def _string(s, mv, i, n, out, strict):
    # s[i] is the opening quote; copy the string, escaping as Go does.
    start = i
    i += 1
    while i < n:
        c = s[i]
        k = _CLS[c]
        if k == _C_PLAIN:
            i += 1
        elif k == _C_QUOTE:
            i += 1
            out.extend(mv[start:i])
            return i
        elif k == _C_BSLASH:
            if i + 1 >= n:
                break
            e = s[i + 1]
            if e == 0x75:  # \uXXXX: four hex digits
                if i + 5 >= n:
                    break
                for j in range(i + 2, i + 6):
                    h = s[j] | 0x20
                    if not (0x30 <= h <= 0x39 or 0x61 <= h <= 0x66):
                        raise GoJSONError("bad \\u escape in string at byte %d" % j)
                i += 6
            elif e in _ESC:
                i += 2
            else:
                raise GoJSONError("bad escape in string at byte %d" % (i + 1))
        elif k == _C_CTRL:
            raise GoJSONError("control character in string at byte %d" % i)
        elif k == _C_HTML:
            out.extend(mv[start:i])
            out.extend(b"\\u00")
            out.append(_HEX[c >> 4])
            out.append(_HEX[c & 15])
            i += 1
            start = i
        else:
            if strict:
                m = utf8_len(s, i, n)
                if m == 0:
                    raise GoJSONUnsupported("invalid UTF-8 in string at byte %d" % i)
            else:
                m = 1  # Go copies bytes; only the U+2028/9 pattern matters
            if c == 0xE2 and i + 2 < n and s[i + 1] == 0x80 and s[i + 2] & 0xFE == 0xA8:
                out.extend(mv[start:i])
                _u202x(out, s[i + 2])
                m = 3
                start = i + 3
            i += m
    raise GoJSONError("unexpected end of JSON input in string")


def _digits(s, i, n):
    if i >= n or not 0x30 <= s[i] <= 0x39:
        raise GoJSONError("bad number at byte %d" % i)
    i += 1
    while i < n and 0x30 <= s[i] <= 0x39:
        i += 1
    return i


def _number(s, mv, i, n, out):
    # Go's grammar: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
    start = i
    if s[i] == 0x2D:
        i += 1
    if i < n and s[i] == 0x30:
        i += 1
    else:
        i = _digits(s, i, n)
    if i < n and s[i] == 0x2E:
        i = _digits(s, i + 1, n)
    if i < n and s[i] | 0x20 == 0x65:
        i += 1
        if i < n and (s[i] == 0x2B or s[i] == 0x2D):
            i += 1
        i = _digits(s, i, n)
    out.extend(mv[start:i])
    return i


def _literal(s, mv, i, n, out, word):
    j = i + len(word)
    if j > n or mv[i:j] != word:
        raise GoJSONError("invalid literal at byte %d" % i)
    out.extend(word)
    return j


def _key(s, mv, i, n, out, strict):
    # An object key, the colon, and the whitespace after it.
    if i >= n or s[i] != 0x22:
        raise GoJSONError("expected string key at byte %d" % i)
    i = _ws(s, _string(s, mv, i, n, out, strict), n)
    if i >= n or s[i] != 0x3A:
        raise GoJSONError("expected ':' at byte %d" % i)
    out.append(0x3A)
    return _ws(s, i + 1, n)


def compact_into(raw, out, strict=True):
    """Append Go's json.Marshal(json.RawMessage(raw)) to ``out`` (a bytearray).

    strict=False accepts what Go accepts (any bytes inside strings);
    strict=True also requires valid UTF-8. Raises GoJSONError with a reason.
    Returns the first non-blank byte of the value ('{', '[', '"', ...).
    """
    if isinstance(raw, str):
        raw = raw.encode()
    mv = memoryview(raw)
    n = len(raw)
    base = len(out)
    stack = bytearray(MAX_DEPTH)
    depth = 0
    i = _ws(raw, 0, n)
    while True:
        # A value starts at i.
        if i >= n:
            raise GoJSONError("unexpected end of JSON input")
        c = raw[i]
        if c == 0x7B or c == 0x5B:  # { or [
            if depth == MAX_DEPTH:
                raise GoJSONUnsupported("nesting deeper than %d" % MAX_DEPTH)
            out.append(c)
            i = _ws(raw, i + 1, n)
            if i < n and raw[i] == c + 2:  # empty: {} or []
                out.append(c + 2)
                i += 1
            else:
                stack[depth] = c
                depth += 1
                if c == 0x7B:
                    i = _key(raw, mv, i, n, out, strict)
                continue
        elif c == 0x22:
            i = _string(raw, mv, i, n, out, strict)
        elif c == 0x2D or 0x30 <= c <= 0x39:
            i = _number(raw, mv, i, n, out)
        elif c == 0x74:
            i = _literal(raw, mv, i, n, out, b"true")
        elif c == 0x66:
            i = _literal(raw, mv, i, n, out, b"false")
        elif c == 0x6E:
            i = _literal(raw, mv, i, n, out, b"null")
        else:
            raise GoJSONError("invalid character at byte %d looking for a value" % i)
        # After a value: close containers, or a comma and the next value.
        while True:
            i = _ws(raw, i, n)
            if depth == 0:
                if i != n:
                    raise GoJSONError("invalid character at byte %d after top-level value" % i)
                return out[base]
            if i >= n:
                raise GoJSONError("unexpected end of JSON input")
            c = raw[i]
            top = stack[depth - 1]
            if c == 0x2C:
                out.append(c)
                i = _ws(raw, i + 1, n)
                if top == 0x7B:
                    i = _key(raw, mv, i, n, out, strict)
                break
            if c != top + 2:
                raise GoJSONError("invalid character at byte %d after %s element"
                                  % (i, "object" if top == 0x7B else "array"))
            out.append(c)
            depth -= 1
            i += 1


def go_marshal_raw(raw):
    """Go's json.Marshal of a json.RawMessage holding ``raw``, as bytes.

    Raises GoJSONError (bad JSON) or GoJSONUnsupported (bad UTF-8, too deep).
    """
    out = bytearray()
    compact_into(raw, out, True)
    return bytes(out)


def string_into(s, out, strict=False):
    """Append Go's json.Marshal(string) of ``s`` (str or bytes) to ``out``.

    Invalid UTF-8 becomes \\ufffd per bad byte, as Go does; strict=True raises
    GoJSONError instead (a server that decodes and re-encodes would differ).
    """
    if isinstance(s, str):
        s = s.encode()
    mv = memoryview(s)
    n = len(s)
    out.append(0x22)
    start = 0
    i = 0
    while i < n:
        c = s[i]
        k = _CLS[c]
        if k == _C_PLAIN:
            i += 1
            continue
        if k == _C_HIGH:
            m = utf8_len(s, i, n)
            if m == 3 and c == 0xE2 and s[i + 1] == 0x80 and s[i + 2] & 0xFE == 0xA8:
                out.extend(mv[start:i])
                _u202x(out, s[i + 2])
            elif m == 0:
                if strict:
                    raise GoJSONError("invalid UTF-8 in string at byte %d" % i)
                out.extend(mv[start:i])
                out.extend(b"\\ufffd")
                m = 1
            else:
                i += m
                continue
            i += m
            start = i
            continue
        out.extend(mv[start:i])
        if k == _C_QUOTE or k == _C_BSLASH:
            out.append(0x5C)
            out.append(c)
        elif c == 0x0A:
            out.extend(b"\\n")
        elif c == 0x0D:
            out.extend(b"\\r")
        elif c == 0x09:
            out.extend(b"\\t")
        else:
            out.extend(b"\\u00")
            out.append(_HEX[c >> 4])
            out.append(_HEX[c & 15])
        i += 1
        start = i
    out.extend(mv[start:n])
    out.append(0x22)
    return out


def go_marshal_string(s):
    """Go's json.Marshal of a Go string (bytes or str), as bytes."""
    return bytes(string_into(s, bytearray()))
