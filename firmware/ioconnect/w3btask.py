# The W3bstream POST /v1/task profile on its own: the attestation loop signs
# only this, and keeps it loaded for good (ioconnect.profiles, the agent's,
# adds the other profiles and re-exports these names).
#   sha256 of the Go JSON the node re-encodes, 64-byte r||s
import hashlib
from binascii import hexlify

from ioconnect import gojson

# Payload kinds of a W3bstream task.
_RAW = 0  # JSON object/array: carried raw, hashed raw
_SCALAR = 1  # JSON number/string/literal: carried as hex, hashed raw (server decodes hex first)
_HEX = 2  # not JSON: carried and hashed as a lowercase hex string


class ProfileError(ValueError):
    pass


def _bytes(v, what):
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise ProfileError("%s must be bytes or str" % what)


def _uint(v, bits, what, nonzero=False):
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >> bits:
        raise ProfileError("%s must be a uint%d" % (what, bits))
    if nonzero and v == 0:
        raise ProfileError("%s must be non-zero" % what)
    return v


def _secp(key):
    if key.curve != "secp256k1":
        raise ProfileError("this profile needs a secp256k1 key, not %s" % key.curve)


def _text(out, s, what):
    # A Go string field that the server decodes and re-encodes: it must be
    # valid UTF-8, and \b \f are escaped differently before and after Go 1.22.
    b = _bytes(s, what)
    if b.find(b"\x08") >= 0 or b.find(b"\x0c") >= 0:
        raise ProfileError("%s contains \\b or \\f (Go versions encode them differently)" % what)
    try:
        gojson.string_into(b, out, True)
    except gojson.GoJSONError:
        raise ProfileError("%s is not valid UTF-8" % what)


def _sig_field(out, sig):
    # Replace the closing '}' with the signature field.
    out[len(out) - 1] = 0x2C
    out.extend(b'"signature":"0x')
    out.extend(hexlify(sig))
    out.extend(b'"}')


# --- W3bstream POST /v1/task --------------------------------------------------


def _task(nonce, project_id, payload, project_version):
    # -> (signed JSON as a bytearray, payload bytes, payload kind, payload offset)
    _uint(nonce, 64, "nonce", True)
    pid = _bytes(project_id, "projectID")
    if not pid or any(c < 0x30 or c > 0x39 for c in pid):
        raise ProfileError("projectID must be a decimal string")
    payload = _bytes(payload, "payload")
    if not payload:
        raise ProfileError("payload is empty")
    out = bytearray(b'{"nonce":')
    out.extend(str(nonce).encode())
    out.extend(b',"projectID":"')
    out.extend(pid)
    out.append(0x22)
    if project_version:
        out.extend(b',"projectVersion":')
        _text(out, project_version, "projectVersion")
    out.extend(b',"payload":')
    mark = len(out)
    kind = _RAW
    try:
        if gojson.compact_into(payload, out, True) not in (0x7B, 0x5B):
            kind = _SCALAR
    except gojson.GoJSONUnsupported as e:
        # Bad UTF-8 or too deep: ask Go's own rules (any bytes in strings)
        # whether the server would take these bytes as JSON.
        try:
            gojson.compact_into(payload, bytearray(), False)
        except gojson.GoJSONUnsupported:
            raise ProfileError("payload refused: " + str(e))
        except gojson.GoJSONError:
            kind = _HEX
        else:
            raise ProfileError("payload is JSON with invalid UTF-8: the device will not sign it")
    except gojson.GoJSONError:
        kind = _HEX
    if kind == _HEX:
        out = out[:mark]
        out.append(0x22)
        out.extend(hexlify(payload))
        out.append(0x22)
    out.append(0x7D)
    return out, payload, kind, mark


def _skip(b, i):
    # End of the value starting at b[i] in compact, valid JSON.
    c = b[i]
    if c == 0x22:
        i += 1
        while b[i] != 0x22:
            i += 2 if b[i] == 0x5C else 1
        return i + 1
    if c == 0x7B or c == 0x5B:
        depth = 0
        while True:
            c = b[i]
            if c == 0x22:
                i = _skip(b, i)
                continue
            if c == 0x7B or c == 0x5B:
                depth += 1
            elif c == 0x7D or c == 0x5D:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
    while i < len(b) and b[i] not in b",}]":
        i += 1
    return i


def _find(b, i, name):
    # Value span of the first member called ``name`` in the object at b[i]
    # (the server uses gjson: the first duplicate wins), or None.
    if b[i] != 0x7B:
        return None
    i += 1
    while b[i] != 0x7D:
        j = _skip(b, i)
        key = b[i + 1:j - 1]
        if key.find(b"\\") >= 0:
            raise ProfileError("payload key with escapes: cannot match signed keys")
        end = _skip(b, j + 1)
        if key == name:
            return j + 1, end
        i = end + 1 if b[end] == 0x2C else end
    return None


def _key_value(b, start, name):
    for c in b"*?|#@\\!":
        if name.find(bytes((c,))) >= 0:
            raise ProfileError("signed key %r: only plain dotted names are supported" % name)
    span = (start, 0)
    for part in name.split(b"."):
        span = _find(b, span[0], part)
        if span is None:
            raise ProfileError("signed key %r is not in the payload" % name)
    s, e = span
    if b[s] == 0x22:  # gjson reads a digit string as a uint too
        s += 1
        e -= 1
    digits = b[s:e]
    if not digits or any(c < 0x30 or c > 0x39 for c in digits):
        raise ProfileError("signed key %r is not an unsigned integer" % name)
    v = int(bytes(digits))
    if v >> 64:
        raise ProfileError("signed key %r is larger than uint64" % name)
    return v


def w3bstream_signed_bytes(nonce, project_id, payload, project_version=""):
    """The Go JSON the W3bstream node hashes (h1 = sha256 of it)."""
    return bytes(_task(nonce, project_id, payload, project_version)[0])


def _digest(out, kind, mark, signed_keys):
    h1 = hashlib.sha256(out).digest()
    if not signed_keys:
        return h1
    if kind != _RAW:
        raise ProfileError("signed keys need a JSON object payload")
    h = hashlib.sha256(h1)
    for name in signed_keys:
        h.update(_key_value(out, mark, _bytes(name, "signed key")).to_bytes(8, "little"))
    return h.digest()


def w3bstream_digest(nonce, project_id, payload, project_version="", signed_keys=()):
    """The 32-byte digest a W3bstream node checks: h1, or with signed keys
    sha256(h1 || uint64 LE of each key read from the payload, in order)."""
    out, _, kind, mark = _task(nonce, project_id, payload, project_version)
    return _digest(out, kind, mark, signed_keys)


def w3bstream_task(key, nonce, project_id, payload, project_version="", signed_keys=()):
    """The signed request body for POST /v1/task, as bytes."""
    _secp(key)
    out, payload, kind, mark = _task(nonce, project_id, payload, project_version)
    sig = key.sign_digest(_digest(out, kind, mark, signed_keys))[0]
    if kind == _SCALAR:
        # gjson only keeps objects/arrays raw: send the bytes as hex instead.
        out = out[:mark]
        out.append(0x22)
        out.extend(hexlify(payload))
        out.extend(b'"}')
    _sig_field(out, sig)
    return bytes(out)
