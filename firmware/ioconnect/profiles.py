# Signing profiles: the exact bytes each IoTeX service re-derives and checks.
#   W3bstream POST /v1/task   sha256 of Go JSON, 64-byte r||s
#   sprout POST /message      keccak256 of Go JSON, r||s||v with v in {0, 1}
#   ioID Permit (EIP-712)     r||s||v with v in {27, 28}
#   EIP-191 personal_sign     r||s||v with v in {27, 28}
# All need a secp256k1 key: every verifier here recovers the address.
# A key is any object with .curve and .sign_digest(d) -> (sig64, recid).
# keccak is imported on use: a W3bstream-only device never loads it.
from binascii import unhexlify

# W3bstream lives in its own module (the loop loads only that one).
from ioconnect.w3btask import (  # noqa: F401  (re-exported)
    ProfileError,
    _bytes,
    _secp,
    _sig_field,
    _text,
    _uint,
    w3bstream_digest,
    w3bstream_signed_bytes,
    w3bstream_task,
)

IOID_REGISTRY = {
    4689: "0x04e4655Cf258EC802D17c23ec6112Ef7d97Fa2aF",  # IoTeX mainnet
    4690: "0x0A7e595C7889dF3652A19aF52C18377bF17e027D",  # IoTeX testnet
}


# --- sprout POST /message (older W3bstream) -----------------------------------


def sprout_signed_bytes(project_id, project_version, data):
    """Go JSON of {"projectID":N,"projectVersion":"..","data":".."}."""
    _uint(project_id, 64, "projectID", True)
    if not project_version or not data:
        raise ProfileError("projectVersion and data must not be empty")
    out = bytearray(b'{"projectID":')
    out.extend(str(project_id).encode())
    out.extend(b',"projectVersion":')
    _text(out, project_version, "projectVersion")
    out.extend(b',"data":')
    _text(out, data, "data")
    out.append(0x7D)
    return out


def sprout_message(key, project_id, project_version, data):
    """The signed body for sprout POST /message (keccak256, v in {0, 1})."""
    from ioconnect.keccak import keccak256

    _secp(key)
    out = sprout_signed_bytes(project_id, project_version, data)
    sig, recid = key.sign_digest(keccak256(out))
    _sig_field(out, sig + bytes((recid,)))
    return bytes(out)


# --- Ethereum signatures ----------------------------------------------------------


def _address(a, what):
    if isinstance(a, str):
        if len(a) != 42 or a[:2] not in ("0x", "0X"):
            raise ProfileError("%s must be 0x and 40 hex digits" % what)
        try:
            return unhexlify(a[2:])
        except ValueError:
            raise ProfileError("%s must be 0x and 40 hex digits" % what)
    if isinstance(a, (bytes, bytearray)) and len(a) == 20:
        return bytes(a)
    raise ProfileError("%s must be a 20-byte address" % what)


def _eth_sign(key, digest):
    _secp(key)
    sig, recid = key.sign_digest(digest)
    return sig + bytes((27 + recid,))


def ioid_permit_digest(owner, nonce, chain_id, registry):
    """EIP-712 digest of ioIDRegistry Permit(address owner,uint256 nonce)."""
    from ioconnect.keccak import Keccak256, keccak256

    owner = _address(owner, "owner")
    registry = _address(registry, "registry")
    domain = Keccak256(
        keccak256(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    )
    domain.update(keccak256(b"ioIDRegistry"))
    domain.update(keccak256(b"1"))
    domain.update(_uint(chain_id, 256, "chain_id").to_bytes(32, "big"))
    domain.update(bytes(12) + registry)
    st = Keccak256(keccak256(b"Permit(address owner,uint256 nonce)"))
    st.update(bytes(12) + owner)
    st.update(_uint(nonce, 256, "nonce").to_bytes(32, "big"))
    h = Keccak256(b"\x19\x01")
    h.update(domain.digest())
    h.update(st.digest())
    return h.digest()


def ioid_permit(key, owner, nonce, chain_id, registry):
    """(digest, 65-byte r||s||v with v 27/28) for the ioID registry."""
    digest = ioid_permit_digest(owner, nonce, chain_id, registry)
    return digest, _eth_sign(key, digest)


def eip191_digest(message):
    """keccak256("\\x19Ethereum Signed Message:\\n" + len + message)."""
    from ioconnect.keccak import Keccak256

    m = _bytes(message, "message")
    h = Keccak256(b"\x19Ethereum Signed Message:\n")
    h.update(str(len(m)).encode())
    h.update(m)
    return h.digest()


def personal_sign(key, message):
    """EIP-191 personal_sign: 65-byte r||s||v with v 27/28."""
    return _eth_sign(key, eip191_digest(message))
