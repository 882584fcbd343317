# COSE_Sign1 (RFC 9052) with the device key.
# Token: tag 18 [protected bstr {1: alg}, unprotected {4: kid}?, payload bstr, signature bstr]
# Signed: Sig_structure ["Signature1", protected, external_aad, payload] (CBOR).
# alg from the key's curve: ES256K -47 (secp256k1, RFC 8812), ES256 -7 (P-256),
# EdDSA -8 (Ed25519). ECDSA signatures are 64-byte r||s over SHA-256 of the
# Sig_structure (what key.sign() does); Ed25519 signs the Sig_structure itself.
import hashlib

from micropython import const

from ioconnect import cbor

_TAG_SIGN1 = const(18)
_H_ALG = const(1)
_H_CRIT = const(2)
_H_KID = const(4)
_ALGS = (("secp256k1", -47), ("p256", -7), ("ed25519", -8))


class COSEError(ValueError):
    pass


def alg_for(curve):
    for name, alg in _ALGS:
        if name == curve:
            return alg
    raise COSEError("no COSE algorithm for curve %r" % (curve,))


def _bstr(v, what):
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise COSEError("%s must be bytes" % what)


def _tbs(protected, payload, aad):
    return cbor.encode(["Signature1", protected, aad, payload])


def sign1(key, payload, kid=None, external_aad=b""):
    """A tagged COSE_Sign1 token (bytes) over ``payload``, signed by ``key``."""
    payload = _bstr(payload, "payload")
    protected = cbor.encode({_H_ALG: alg_for(key.curve)})
    unprotected = {} if kid is None else {_H_KID: _bstr(kid, "kid")}
    sig = key.sign(_tbs(protected, payload, _bstr(external_aad, "external_aad")))
    return cbor.encode(cbor.Tag(_TAG_SIGN1, [protected, unprotected, payload, sig]))


def parse1(token):
    """(protected header map, unprotected map, payload, signature, protected bytes)."""
    try:
        msg = cbor.decode(token)
        if isinstance(msg, cbor.Tag):
            if msg.tag != _TAG_SIGN1:
                raise COSEError("CBOR tag %d is not COSE_Sign1 (18)" % msg.tag)
            msg = msg.value
        if not isinstance(msg, list) or len(msg) != 4:
            raise COSEError("COSE_Sign1 must be an array of 4 items")
        protected, unprotected, payload, sig = msg
        if not isinstance(protected, bytes) or not isinstance(unprotected, dict):
            raise COSEError("bad COSE_Sign1 headers")
        if not isinstance(payload, bytes):
            raise COSEError("payload must be a byte string (detached payloads unsupported)")
        if not isinstance(sig, bytes):
            raise COSEError("signature must be a byte string")
        hdr = cbor.decode(protected) if protected else {}
    except cbor.CBORError as e:
        raise COSEError("bad CBOR: " + str(e))
    if not isinstance(hdr, dict):
        raise COSEError("protected header must be a map")
    return hdr, unprotected, payload, sig, protected


def verify1(curve, pub, token, external_aad=b""):
    """Check a COSE_Sign1 token from ``pub`` on ``curve``; return its payload.

    The algorithm must be in the protected header and match the curve.
    Raises COSEError with the reason when anything does not check out.
    """
    hdr, _, payload, sig, protected = parse1(token)
    alg = alg_for(curve)
    if hdr.get(_H_ALG) != alg:
        raise COSEError("protected alg %r does not match %s (%d)" % (hdr.get(_H_ALG), curve, alg))
    if _H_CRIT in hdr:
        raise COSEError("critical headers are not understood")
    if len(sig) != 64:
        raise COSEError("signature must be 64 bytes")
    tbs = _tbs(protected, payload, _bstr(external_aad, "external_aad"))
    if curve == "ed25519":
        from ioconnect import ed25519

        try:
            ok = ed25519.verify(pub, tbs, sig)
        except ed25519.Ed25519Error as e:
            raise COSEError("bad public key: " + str(e))
    else:
        from ioconnect import ecdsa

        ok = ecdsa.verify_digest(ecdsa.curve_by_name(curve), pub, hashlib.sha256(tbs).digest(), sig)
    if not ok:
        raise COSEError("signature does not verify")
    return payload
