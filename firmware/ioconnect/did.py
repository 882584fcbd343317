# DIDs of a device key: did:io (ioConnect: last 20 bytes of keccak256(X||Y),
# for secp256k1 and P-256 alike), standard W3C did:key, JWKs and the DID
# document with JsonWebKey2020 verification methods.
from ioconnect import encoding

_ED = "ed25519"
# Multicodec varints: secp256k1-pub 0xe7, p256-pub 0x1200, ed25519-pub 0xed.
_CODEC = {"secp256k1": b"\xe7\x01", "p256": b"\x80\x24", _ED: b"\xed\x01"}
_JWK_CRV = {"secp256k1": "secp256k1", "p256": "P-256"}
_CONTEXT = ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1"]


class DIDError(ValueError):
    pass


def _xy(pub):
    # 64-byte X||Y of an uncompressed key 04||X||Y.
    if len(pub) == 65 and pub[0] == 4:
        return pub[1:]
    if len(pub) == 65:
        raise DIDError("uncompressed public key must start with 04, not %02x" % pub[0])
    raise DIDError("need an uncompressed public key (65 bytes 04||X||Y), got %d bytes" % len(pub))


def _check_curve(curve):
    if curve not in _CODEC:
        raise DIDError("unknown curve %r (expected secp256k1, p256 or ed25519)" % (curve,))


def _ec_full(curve, pub):
    # Uncompressed 65-byte point from a 65- or 33-byte key, checked to be on
    # the curve: a JWK or did:key of a non-point would be unusable forever.
    # An uncompressed key is checked with the curve equation (a few products);
    # decompressing it again would cost a square root, 90 ms on an RP2040.
    from ioconnect import ecdsa

    c = ecdsa.curve_by_name(curve)
    if len(pub) == 33 and pub[0] in (2, 3):
        try:
            return ecdsa.decompress(c, pub)
        except ValueError as e:
            raise DIDError("bad %s public key: not on the curve (%s)" % (curve, e))
    xy = _xy(pub)
    if not c.on_curve(int.from_bytes(xy[:32], "big"), int.from_bytes(xy[32:], "big")):
        raise DIDError("bad %s public key: not on the curve" % curve)
    return bytes(pub)


def address(pub):
    """20-byte account address: last 20 bytes of keccak256(X||Y)."""
    from ioconnect.keccak import keccak256

    return keccak256(_xy(pub))[12:]


def eth_address(pub):
    """'0x' + lowercase hex address (no EIP-55 mixed case)."""
    return "0x" + encoding.to_hex(address(pub))


def io_address(pub):
    """IoTeX io1... address (bech32, HRP 'io') of the same 20 bytes."""
    return encoding.bech32_address("io", address(pub))


def did_io(pub):
    """did:io:0x<address> of an uncompressed secp256k1 or P-256 key."""
    return "did:io:" + eth_address(pub)


def did_key(curve, pub):
    """W3C did:key: 'z' + base58btc(multicodec varint || compressed key)."""
    _check_curve(curve)
    if curve == _ED:
        if len(pub) != 32:
            raise DIDError("ed25519 public key must be 32 bytes")
        raw = pub
    else:
        raw = _ec_full(curve, pub)
        raw = bytes([2 + (raw[64] & 1)]) + raw[1:33]
    return "did:key:z" + encoding.b58encode(_CODEC[curve] + raw)


def jwk(curve, pub):
    """Public JWK: EC (secp256k1 / P-256, x and y) or OKP Ed25519."""
    _check_curve(curve)
    if curve == _ED:
        if len(pub) != 32:
            raise DIDError("ed25519 public key must be 32 bytes")
        return {"kty": "OKP", "crv": "Ed25519", "x": encoding.b64url_encode(pub)}
    xy = _ec_full(curve, pub)
    return {
        "kty": "EC",
        "crv": _JWK_CRV[curve],
        "x": encoding.b64url_encode(xy[1:33]),
        "y": encoding.b64url_encode(xy[33:]),
    }


def did_of(curve, pub):
    """The DID a key is known by: did:io for ECDSA keys, did:key for Ed25519."""
    _check_curve(curve)
    if curve == _ED:
        return did_key(curve, pub)
    return did_io(_ec_full(curve, pub))


def _method(did, curve, pub, n):
    # ioConnect key ids: <did>#Key-<curve>-<n>.
    return {
        "id": "%s#Key-%s-%d" % (did, curve, n),
        "type": "JsonWebKey2020",
        "controller": did,
        "publicKeyJwk": jwk(curve, pub),
    }


def did_document(key, ka_pub=None):
    """W3C DID document of ``key`` (anything with .curve and .public_key()).

    ``ka_pub``: optional P-256 public key (65 or 33 bytes) listed under
    keyAgreement as <did>#Key-p256-2.
    """
    curve = key.curve
    pub = key.public_key()
    did = did_of(curve, pub)
    vm = _method(did, curve, pub, 1)
    doc = {
        "@context": _CONTEXT,
        "id": did,
        "verificationMethod": [vm],
        "authentication": [vm["id"]],
        "assertionMethod": [vm["id"]],
    }
    if ka_pub is not None:
        ka = _method(did, "p256", ka_pub, 2)
        doc["verificationMethod"].append(ka)
        doc["keyAgreement"] = [ka["id"]]
    return doc
