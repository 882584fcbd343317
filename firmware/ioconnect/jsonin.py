# Strict JSON in: every JSON text the device takes from outside (agent
# requests, config.json) goes through loads() here, never json.loads alone.
# MicroPython's json.loads (checked on 1.29):
#   - keeps "\ud83d\ude00" as two surrogates, so str.encode() gives CESU-8
#     (ed a0 bd ed b8 80) instead of the UTF-8 of U+1F600 (f0 9f 98 80): the
#     device would sign other bytes than the host sent;
#   - takes lone surrogates, raw CESU-8 and overlong UTF-8 (c0 80), unknown
#     escapes (\q -> "q", \x41 -> "x41", \uZZZZ -> U+23333), raw control
#     characters, and [1,], 01, {"a" 1}, [1 2].
# One pass checks the text against RFC 8259 with strict UTF-8 (RFC 3629) and
# counts escaped surrogate pairs; only if there are any, a second pass copies
# the text once with each pair rewritten as the 4 UTF-8 bytes of its code
# point. json.loads then only sees text it reads the standard way.
import json

from micropython import const

from ioconnect.utf8 import seq_len

MAX_DEPTH = const(32)  # requests nest 3 deep, config.json 1
_ESC = b'"\\/bfnrt'  # allowed after a backslash, besides u


class JSONInError(ValueError):
    pass


def _ws(s, i, n):
    while i < n:
        c = s[i]
        if c != 0x20 and c != 0x0A and c != 0x0D and c != 0x09:
            return i
        i += 1
    return i


def _hex4(s, i, n):
    # The value of the 4 hex digits at s[i], or -1.
    if i + 4 > n:
        return -1
    v = 0
    for j in range(i, i + 4):
        c = s[j]
        if 0x30 <= c <= 0x39:
            c -= 0x30
        else:
            c |= 0x20
            if not 0x61 <= c <= 0x66:
                return -1
            c -= 0x57
        v = (v << 4) | c
    return v


def _digits(s, i, n):
    if i >= n or not 0x30 <= s[i] <= 0x39:
        raise JSONInError("bad number at byte %d" % i)
    i += 1
    while i < n and 0x30 <= s[i] <= 0x39:
        i += 1
    return i


def _number(s, i, n):
    # -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
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
    return i


def _escape(s, i, n):
    # s[i] is a backslash in a string: the index after the escape; an escaped
    # surrogate pair is returned negated, so the caller can count it.
    e = s[i + 1] if i + 1 < n else -1
    if e != 0x75:
        if e < 0 or e not in _ESC:
            raise JSONInError("bad escape in string at byte %d" % i)
        return i + 2
    u = _hex4(s, i + 2, n)
    if u < 0:
        raise JSONInError("bad \\u escape in string at byte %d" % i)
    if u < 0xD800 or u > 0xDFFF:
        return i + 6
    if u < 0xDC00 and i + 12 <= n and s[i + 6] == 0x5C and s[i + 7] == 0x75:
        lo = _hex4(s, i + 8, n)
        if 0xDC00 <= lo <= 0xDFFF:
            return -(i + 12)
    raise JSONInError("lone surrogate \\u%04x in string at byte %d: not a character" % (u, i))


def _cesu(s, i, n):
    # A surrogate pair written as two 3-byte sequences (CESU-8) at s[i]?
    return (
        i + 5 < n
        and s[i] == 0xED
        and 0xA0 <= s[i + 1] <= 0xAF
        and s[i + 2] & 0xC0 == 0x80
        and s[i + 3] == 0xED
        and 0xB0 <= s[i + 4] <= 0xBF
        and s[i + 5] & 0xC0 == 0x80
    )


def _string(s, i, n, cesu):
    # s[i] is the opening quote: (index after the closing quote, pairs to join).
    pairs = 0
    i += 1
    while i < n:
        c = s[i]
        if c == 0x22:
            return i + 1, pairs
        if c == 0x5C:
            i = _escape(s, i, n)
            if i < 0:
                i = -i
                pairs += 1
        elif c < 0x20:
            raise JSONInError("raw control character 0x%02x in string at byte %d" % (c, i))
        elif c < 0x80:
            i += 1
        else:
            m = seq_len(s, i, n)
            if m:
                i += m
            elif cesu and _cesu(s, i, n):
                i += 6
                pairs += 1
            else:
                raise JSONInError("invalid UTF-8 at byte %d" % i)
    raise JSONInError("unterminated string")


def check(s, cesu=False):
    """Check that ``s`` (bytes) is one RFC 8259 JSON text in strict UTF-8
    (with ``cesu``, surrogate pairs written as CESU-8 pass too).

    Returns how many surrogate pairs it holds; raises JSONInError with the
    reason and byte offset otherwise.
    """
    n = len(s)
    stack = bytearray(MAX_DEPTH)
    depth = 0
    pairs = 0
    key = False  # the next value is an object key
    i = _ws(s, 0, n)
    while True:
        if i >= n:
            raise JSONInError("unexpected end of JSON")
        c = s[i]
        if key and c != 0x22:
            raise JSONInError("expected a string key at byte %d" % i)
        if c == 0x22:
            i, p = _string(s, i, n, cesu)
            pairs += p
            if key:
                i = _ws(s, i, n)
                if i >= n or s[i] != 0x3A:
                    raise JSONInError("expected ':' at byte %d" % i)
                i = _ws(s, i + 1, n)
                key = False
                continue
        elif c == 0x7B or c == 0x5B:  # { or [
            if depth == MAX_DEPTH:
                raise JSONInError("nesting deeper than %d" % MAX_DEPTH)
            i = _ws(s, i + 1, n)
            if i < n and s[i] == c + 2:  # {} or []
                i += 1
            else:
                stack[depth] = c
                depth += 1
                key = c == 0x7B
                continue
        elif c == 0x2D or 0x30 <= c <= 0x39:
            i = _number(s, i, n)
        else:
            word = b"true" if c == 0x74 else b"false" if c == 0x66 else b"null" if c == 0x6E else b""
            if not word or s[i : i + len(word)] != word:
                raise JSONInError("unexpected byte 0x%02x at byte %d" % (c, i))
            i += len(word)
        # After a value: close containers, or a comma before the next value.
        while True:
            i = _ws(s, i, n)
            if depth == 0:
                if i != n:
                    raise JSONInError("data after the JSON value at byte %d" % i)
                return pairs
            if i >= n:
                raise JSONInError("unexpected end of JSON")
            c = s[i]
            top = stack[depth - 1]
            if c == 0x2C:
                i = _ws(s, i + 1, n)
                key = top == 0x7B
                break
            if c != top + 2:
                raise JSONInError("expected ',' or '%s' at byte %d" % (chr(top + 2), i))
            depth -= 1
            i += 1


def _next(s, i, cesu):
    # The next place a pair may start: a backslash, or with cesu an 0xED byte.
    a = s.find(b"\\", i)
    if not cesu:
        return a
    b = s.find(b"\xed", i)
    return b if a < 0 or 0 <= b < a else a


def join_pairs(s, pairs, cesu=False):
    """``s`` (checked) with its ``pairs`` surrogate pairs written as UTF-8, in
    a new bytearray (a 12-byte escape, or 6 CESU-8 bytes, become 4 bytes)."""
    n = len(s)
    mv = memoryview(s)
    # Each escape shrinks by 8 bytes; CESU-8 pairs (config files, small) by 2,
    # mixed with escapes in unknown numbers: cut to size at the end.
    out = bytearray(n if cesu else n - 8 * pairs)
    w = r = 0
    i = _next(s, 0, cesu)
    while pairs:
        if s[i] == 0xED:
            if s[i + 1] < 0xA0:  # U+D000..U+D7FF: an ordinary character
                i = _next(s, i + 3, cesu)
                continue
            hi = 0xD000 | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
            lo = 0xD000 | ((s[i + 4] & 0x3F) << 6) | (s[i + 5] & 0x3F)
            size = 6
        elif s[i + 1] != 0x75:  # \" \\ \/ ...
            i = _next(s, i + 2, cesu)
            continue
        else:
            hi = _hex4(s, i + 2, n)
            if hi < 0xD800 or hi > 0xDBFF:
                i = _next(s, i + 6, cesu)
                continue
            lo = _hex4(s, i + 8, n)  # check() made sure a low half follows
            size = 12
        cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        k = i - r
        if k:  # a memoryview slice costs a heap object: none between adjacent pairs
            out[w : w + k] = mv[r:i]
            w += k
        out[w] = 0xF0 | (cp >> 18)
        out[w + 1] = 0x80 | ((cp >> 12) & 0x3F)
        out[w + 2] = 0x80 | ((cp >> 6) & 0x3F)
        out[w + 3] = 0x80 | (cp & 0x3F)
        w += 4
        r = i + size
        pairs -= 1
        i = _next(s, r, cesu)
    k = n - r
    if k:
        out[w : w + k] = mv[r:]
        w += k
    if w < len(out):
        out[w:] = b""  # in place: no second buffer
    return out


def normalise(raw, cesu=False):
    """``raw`` (bytes, bytearray or str), checked as RFC 8259 JSON in UTF-8,
    with escaped surrogate pairs joined: text that json.loads reads as the
    sender meant. ``cesu`` also takes and joins pairs written as CESU-8 (what
    earlier firmware stored in config.json). Raises JSONInError with a reason."""
    if isinstance(raw, str):
        raw = raw.encode()
    elif not isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw)
    pairs = check(raw, cesu)
    return join_pairs(raw, pairs, cesu) if pairs else raw


def loads(raw, cesu=False):
    """json.loads of normalise(raw, cesu). Raises JSONInError with a reason."""
    text = normalise(raw, cesu)
    try:
        return json.loads(text)
    except ValueError as e:  # should not happen after check(): still one reason
        raise JSONInError("JSON refused: %s" % e)
