# The agent: the request/response API host tools call over the raw REPL.
#
# The host always sends the same statement, with the request as data:
#     __import__("ioconnect.agent").agent.call(b'{"v":1,"id":7,"op":"info"}')
# and the agent prints exactly one frame, whatever else gets printed around it:
#     \x1eIOC1 <length> <crc32 hex> <json>\n
# The JSON is {"id", "ok": true, "result"} or {"id", "ok": false, "error":
# {"code", "message"}}. Every failure is a typed error, never a traceback, and
# the device keeps serving the next request.
import binascii
import gc
import json
import sys
import time

from ioconnect import VERSION

API = 1  # bump on an incompatible change; older hosts get "unsupported_version"
KEY_PATH = "identity.key"
_CURVES = ("secp256k1", "p256", "ed25519")


class AgentError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


_OOM = '{"id": %s, "ok": false, "error": {"code": "no_memory", "message": "out of memory"}}'


def _frame(obj):
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    try:
        body = json.dumps(obj).encode()
    except MemoryError:
        rid = obj.get("id")
        obj = None
        gc.collect()
        body = (_OOM % json.dumps(rid)).encode()  # an answer, never a traceback
    head = "\x1eIOC1 %d %08x " % (len(body), binascii.crc32(body) & 0xFFFFFFFF)
    out.write(head.encode())
    out.write(body)
    out.write(b"\n")


def _arg(req, name, kind, default=None):
    v = req.get(name, default)
    if v is None and default is None:
        raise AgentError("bad_request", "missing argument %r" % name)
    if not isinstance(v, kind):
        raise AgentError("bad_request", "argument %r has the wrong type" % name)
    return v


def _hex(req, name):
    try:
        return binascii.unhexlify(_arg(req, name, str))
    except ValueError:
        raise AgentError("bad_request", "argument %r must be hex" % name)


def _store():
    from ioconnect import keys

    return keys.KeyStore(KEY_PATH)


def _key():
    from ioconnect import keys

    try:
        return _store().load()
    except keys.NoIdentityError:
        raise AgentError("no_identity", "no identity on this device; create one first")


def _identity(key):
    from ioconnect import identity

    return identity.describe(key, document=False)


def _identity_state():
    from ioconnect import keys

    try:
        key = _store().load()
    except keys.NoIdentityError:
        return {"state": "none"}
    except keys.KeyStoreError as e:
        return {"state": "corrupt", "reason": str(e)}
    from ioconnect import did

    return {"state": "ok", "curve": key.curve, "did": did.did_of(key.curve, key.public_key())}


def op_info(req):
    import os

    gc.collect()
    v = sys.implementation.version
    # "<board> with <MCU>", as the port's banner says. The checker trims os to the
    # unix port's, which lacks uname(); esp32 and rp2 (and the virtual board) have it.
    machine = os.uname().machine  # type: ignore[attr-defined]
    return {
        "api": API,
        "firmware": VERSION,
        "board": machine,
        "micropython": "%d.%d.%d" % (v[0], v[1], v[2]),
        "free_heap": gc.mem_free(),
        "uptime_ms": time.ticks_ms(),  # the tick counter starts at power-on
        "identity": _identity_state(),
    }


def op_identity_create(req):
    from ioconnect import keys

    curve = _arg(req, "curve", str, "secp256k1")
    if curve not in _CURVES:
        raise AgentError("bad_request", "unknown curve %r" % curve)
    store = _store()
    if store.exists():
        raise AgentError("identity_exists", "identity exists; rotate to replace")
    try:
        # The answer is made before the key is stored: a failure (a module that
        # will not import, out of memory) leaves no key the host never heard of.
        return store.create(curve, _identity)
    except keys.KeyStoreError as e:
        raise AgentError("storage", str(e))


def op_identity_show(req):
    return _identity(_key())


def op_identity_rotate(req):
    curve = _arg(req, "curve", str, "secp256k1")
    if curve not in _CURVES:
        raise AgentError("bad_request", "unknown curve %r" % curve)
    return _store().rotate(curve, _identity)  # answer first, as for create


def op_diddoc(req):
    from ioconnect import did

    return did.did_document(_key())


def _payload(args):
    # Data to sign arrives as text ("payload") or as hex ("payload_hex").
    if "payload_hex" in args:
        return _hex(args, "payload_hex")
    return _arg(args, "payload", str).encode()


def op_sign(req):
    # One request per signing profile of the identity core; the answer is what
    # the receiver checks, byte for byte.
    from ioconnect import profiles

    profile = _arg(req, "profile", str)
    a = _arg(req, "args", dict, {})
    key = _key()
    if profile == "w3bstream":
        body = profiles.w3bstream_task(
            key,
            _arg(a, "nonce", int),
            _arg(a, "project_id", str),
            _payload(a),
            _arg(a, "project_version", str, ""),
            tuple(_arg(a, "signed_keys", list, [])),
        )
        return {"request": body.decode()}
    if profile == "sprout":
        body = profiles.sprout_message(
            key, _arg(a, "project_id", int), _arg(a, "project_version", str, ""), _payload(a)
        )
        return {"request": body.decode()}
    if profile == "ioid":
        chain = _arg(a, "chain_id", int, 4689)
        registry = a.get("registry") or profiles.IOID_REGISTRY.get(chain)
        if not isinstance(registry, str):
            raise AgentError("bad_request", "no registry known for chain %r" % chain)
        digest, sig = profiles.ioid_permit(key, _arg(a, "owner", str), _arg(a, "nonce", int), chain, registry)
        return {"digest": binascii.hexlify(digest).decode(), "signature": binascii.hexlify(sig).decode()}
    if profile == "eip191":
        sig = profiles.personal_sign(key, _payload(a))
        return {"signature": binascii.hexlify(sig).decode()}
    if profile == "cose":
        from ioconnect import cose

        kid = a.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AgentError("bad_request", "argument 'kid' has the wrong type")
        token = cose.sign1(key, _payload(a), kid.encode() if isinstance(kid, str) else None)
        return {"token": binascii.hexlify(token).decode()}
    raise AgentError("bad_request", "unknown signing profile %r" % profile)


def op_config_get(req):
    from ioconnect import config

    return config.get(req.get("key"))


def op_config_set(req):
    from ioconnect import config

    return config.put(_arg(req, "key", str), req.get("value"))


_OPS = {
    "info": op_info,
    "identity.create": op_identity_create,
    "identity.show": op_identity_show,
    "identity.rotate": op_identity_rotate,
    "diddoc": op_diddoc,
    "sign": op_sign,
    "config.get": op_config_get,
    "config.set": op_config_set,
    # Attestation ops live in attest_ops, loaded only when called.
    "attest": lambda req: __import__("ioconnect.attest_ops").attest_ops.attest(req),
    "ack": lambda req: __import__("ioconnect.attest_ops").attest_ops.ack(req),
}


def _parse(raw):
    # Not json.loads alone: jsonin joins escaped surrogate pairs (MicroPython
    # keeps them apart: the device signed CESU-8) and refuses what is not
    # RFC 8259 JSON in UTF-8, with the reason. Unloaded before the operation
    # runs: it holds about 4 KB (7 KB on the 64-bit VM) that signing needs.
    from ioconnect import forget

    keep = set(sys.modules)
    try:
        return _jsonin_loads(raw)
    except ValueError as e:
        raise AgentError("bad_request", "request is not JSON: %s" % e)
    finally:
        forget(keep)
        gc.collect()


def _jsonin_loads(raw):
    # Its own frame: no reference to the module is left once it returns.
    from ioconnect import jsonin

    return jsonin.loads(raw)


def handle(raw):
    rid = None
    try:
        req = _parse(raw)
        if not isinstance(req, dict):
            raise AgentError("bad_request", "request must be a JSON object")
        rid = req.get("id")
        if req.get("v") != API:
            raise AgentError(
                "unsupported_version",
                "device speaks agent API %d, request is %r: update the host tools" % (API, req.get("v")),
            )
        op = req.get("op")
        fn = _OPS.get(op) if isinstance(op, str) else None
        if fn is None:
            raise AgentError("unknown_op", "unknown operation %r" % (op,))
        return {"id": rid, "ok": True, "result": fn(req)}
    except AgentError as e:
        return {"id": rid, "ok": False, "error": {"code": e.code, "message": str(e)}}
    except MemoryError:
        gc.collect()
        return {"id": rid, "ok": False, "error": {"code": "no_memory", "message": "out of memory"}}
    except ValueError as e:  # module errors (KeyStoreError, ConfigError, ...) derive from it
        return {"id": rid, "ok": False, "error": {"code": _code(e), "message": str(e)}}
    except OSError as e:
        return {"id": rid, "ok": False, "error": {"code": "os_error", "message": str(e)}}
    except Exception as e:  # a bug must not cost the host its answer, nor the device its loop
        msg = "%s: %s" % (type(e).__name__, e)
        return {"id": rid, "ok": False, "error": {"code": "internal", "message": msg}}


def _code(e):
    name = type(e).__name__
    return {
        "ConfigError": "invalid_config",
        "KeyStoreError": "storage",
        "NoIdentityError": "no_identity",
    }.get(name, "invalid_argument")


def call(raw):
    # Whatever this request imported (the agent included) is unloaded after it,
    # so the agent costs the firmware no RAM between requests.
    keep = set(sys.modules)
    keep.discard("ioconnect.agent")
    # Names of every module interned once, while the heap is quiet (see there).
    sys.modules["ioconnect"].intern_names()
    try:
        _frame(handle(raw))
    finally:
        from ioconnect import forget

        forget(keep)
        gc.collect()
