# The device identity as host tools see it: the stored key (made on first use),
# its DIDs, addresses and DID document. Used by `ioconnect identity ...`.
import json

from ioconnect import did, encoding, keys


def ensure(path=keys.DEFAULT_PATH, curve="secp256k1"):
    """(key, created): the stored key, or a new ``curve`` key if there is none."""
    store = keys.KeyStore(path)
    try:
        return store.load(), False
    except keys.NoIdentityError:
        return store.create(curve), True


def describe(key, document=True):
    """Public facts of ``key`` as a JSON-ready dict (no secret in it); the DID
    document only if ``document``."""
    curve = key.curve
    pub = key.public_key()
    info = {
        "curve": curve,
        "public_key": encoding.to_hex(pub),
        "did": did.did_of(curve, pub),
        "did_key": did.did_key(curve, pub),
        "address": None,
        "io_address": None,
    }
    if document:
        info["document"] = did.did_document(key)
    if curve != "ed25519":
        info["address"] = did.eth_address(pub)
        info["io_address"] = did.io_address(pub)
    return info


def main(path=keys.DEFAULT_PATH, curve=None):
    """Print one JSON line: the identity (created first if ``curve`` is given
    and there is none), or {"ok": false, "error": <class>, "message": ...}."""
    try:
        if curve is None:
            key, created = keys.KeyStore(path).load(), False
        else:
            key, created = ensure(path, curve)
        out = {"ok": True, "created": created, "path": path, "identity": describe(key)}
    except ValueError as e:  # module errors all derive from ValueError
        out = {"ok": False, "error": type(e).__name__, "message": str(e)}
    print(json.dumps(out))
