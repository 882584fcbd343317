# Strict UTF-8, as Go and RFC 3629 define it: no overlong forms, no
# surrogates, nothing above U+10FFFF. MicroPython's decode() lets some of these
# through, and the JSON and CBOR checks must agree with Go's and RFC 8949's.


def seq_len(s, i, n):
    # Length of the valid UTF-8 sequence starting at s[i] (i < n), or 0, with
    # Go's utf8 rules: no overlongs, no surrogates, nothing above U+10FFFF.
    c = s[i]
    if c < 0x80:
        return 1
    if c < 0xC2:
        return 0
    lo = 0x80
    hi = 0xBF
    if c < 0xE0:
        need = 1
    elif c < 0xF0:
        need = 2
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
    elif c < 0xF5:
        need = 3
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
    else:
        return 0
    if i + need >= n:
        return 0
    b = s[i + 1]
    if b < lo or b > hi:
        return 0
    for k in range(i + 2, i + need + 1):
        if s[k] & 0xC0 != 0x80:
            return 0
    return need + 1


def valid(b):
    n = len(b)
    i = 0
    while i < n:
        m = seq_len(b, i, n)
        if not m:
            return False
        i += m
    return True
