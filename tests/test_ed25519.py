"""Ed25519 on MicroPython (96K heap) vs RFC 8032 vectors and the `cryptography` package.

Keys, signatures and tampered inputs are made on the host; each batch runs in
one VM. The fixed-base table shipped in firmware/ is checked against a fresh
build by the host generator, and the no-table fallback is exercised too.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import RunDevice
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ioconnect_host import ectables_ed25519
from ioconnect_host.paths import firmware_dir

L = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19

# RFC 8032 section 7.1: TEST 1, 2, 3, 1024 and SHA(abc): (secret, public, message, signature)
# the 1023-byte message of TEST 1024
MSG_1024 = (
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f5"
    "4e9f77b1e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37"
    "c93a1b270b20329d658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efc"
    "b8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b"
    "3b310da903401aa62100ab5d1a36553e06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573c"
    "b116dbefefd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204"
    "ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed185ce81bd84359d44254d95629e9855a94a7c1958"
    "d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24"
    "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f27088d78b7e883c8759d2c4f5c6"
    "5adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2"
    "cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128bab27af87a"
    "71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b"
    "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9"
    "b47acdb751fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb"
    "038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f672451"
    "7b65e614ad6808d6f6ee34dff7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08"
    "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e"
    "2ab47b57f7f7276cd419c17a3ca8e1b939ae49e488acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d"
    "5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e6aed3fb0"
    "f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5fb93246f6b1116398a346f1a641f3b041"
    "e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa9"
    "33a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380db2eaaa707b4c4185"
    "c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8cac60c905c"
    "15fc910840b94c00a0b9d0"
)
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        MSG_1024,
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
        "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        hashlib.sha512(b"abc").hexdigest(),
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]

# cases: {"sign": [[seed, msg], ...], "verify": [[pub, msg, sig], ...]} (hex);
# prints the table in use, then [pub, sig] per signing case, then one list of
# verify results (true / false / the error class name).
ED_ON_DEVICE = """
import json, sys
sys.path.insert(0, ".")  # a test may put its own copy of ioconnect in the device fs
from ioconnect import ed25519
c = json.load(open("cases.json"))
if c.get("no_table"):
    ed25519._checked, ed25519._tbl = True, None
print(json.dumps(ed25519.table_info()))
for seed, msg in c.get("sign", []):
    seed, msg = bytes.fromhex(seed), bytes.fromhex(msg)
    print(json.dumps([ed25519.public_key(seed).hex(), ed25519.sign(seed, msg).hex()]))
res = []
for pub, msg, sig in c.get("verify", []):
    try:
        res.append(ed25519.verify(bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig)))
    except ed25519.Ed25519Error:
        res.append("Ed25519Error")
print(json.dumps(res))
"""


def host_pub(seed: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def host_verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def run(device: RunDevice, cases: dict[str, Any], **kw: Any) -> tuple[Any, list[Any], list[Any]]:
    out = device(ED_ON_DEVICE, cases, **kw)
    return out[0], out[1:-1], out[-1]


def test_rfc8032_vectors(device: RunDevice) -> None:
    cases = {
        "sign": [[sk, msg] for sk, _, msg, _ in RFC8032],
        "verify": [[pk, msg, sig] for _, pk, msg, sig in RFC8032],
    }
    table, signed, verified = run(device, cases)
    assert table == [ectables_ed25519.WINDOW_BITS, -(-253 // ectables_ed25519.WINDOW_BITS)]
    assert signed == [[pk, sig] for _, pk, _, sig in RFC8032]
    assert verified == [True] * len(RFC8032)


def tampered(pub: bytes, msg: bytes, sig: bytes, i: int) -> list[list[str]]:
    """Valid case first, then flipped bits in R, S, message and key, then S + L."""
    bad_r = bytearray(sig)
    bad_r[i % 32] ^= 1 << (i % 8)
    bad_s = bytearray(sig)
    bad_s[32 + i % 31] ^= 1 << (i % 8)  # byte 63 is covered by S + L below
    bad_pub = bytearray(pub)
    bad_pub[i % 32] ^= 1 << (i % 8)
    bad_msg = msg[:-1] + bytes([msg[-1] ^ 1]) if msg else b"\x00"
    s_plus_l = sig[:32] + (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
    return [
        [x.hex() for x in case]
        for case in (
            (pub, msg, sig),
            (pub, msg, bytes(bad_r)),
            (pub, msg, bytes(bad_s)),
            (pub, bad_msg, sig),
            (bytes(bad_pub), msg, sig),
            (pub, msg, s_plus_l),
        )
    ]


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.binary(min_size=32, max_size=32), st.binary(max_size=300)),
        min_size=8,
        max_size=16,
    )
)
def test_matches_cryptography(device: RunDevice, cases: list[tuple[bytes, bytes]]) -> None:
    verify: list[list[str]] = []
    for i, (seed, msg) in enumerate(cases):
        key = Ed25519PrivateKey.from_private_bytes(seed)
        verify += tampered(host_pub(seed), msg, key.sign(msg), i)
    _, signed, verified = run(
        device, {"sign": [[s.hex(), m.hex()] for s, m in cases], "verify": verify}
    )
    for (seed, msg), (pub, sig) in zip(cases, signed, strict=True):
        assert pub == host_pub(seed).hex()
        assert sig == Ed25519PrivateKey.from_private_bytes(seed).sign(msg).hex()
    expected = [host_verify(*(bytes.fromhex(x) for x in case)) for case in verify]
    assert expected[0::6] == [True] * len(cases)  # the untouched ones
    assert verified == expected


def small_multiple_of_b(n: int) -> bytes:
    """Encoding of n*B, computed with the host generator's plain affine math."""
    base = ectables_ed25519._base_point()
    q = base
    for _ in range(n - 1):
        q = ectables_ed25519._add(q, base)
    x, y = q
    return (y | (x & 1) << 255).to_bytes(32, "little")


def test_rejects_malformed(device: RunDevice) -> None:
    seed = bytes(range(32))
    pub = host_pub(seed)
    msg = b"reading 21.5C"
    sig = Ed25519PrivateKey.from_private_bytes(seed).sign(msg)
    y_big = (P + 1).to_bytes(32, "little")  # y >= p: not a canonical encoding
    off_curve = (2).to_bytes(32, "little")  # y = 2: (y^2 - 1)/(d y^2 + 1) has no root
    # The identity as public key (small order): [S]B == R holds for any message.
    identity = (1).to_bytes(32, "little")
    x0_neg = (1 | 1 << 255).to_bytes(32, "little")  # identity with sign bit: x = 0 must be even
    forged = small_multiple_of_b(5) + (5).to_bytes(32, "little")
    r_noncanon = (P + 1).to_bytes(32, "little") + bytes(32)  # R = identity spelt y + p, S = 0
    cases = [
        [pub, msg, sig[:32] + L.to_bytes(32, "little")],  # S = L
        [pub, msg, sig[:32] + b"\xff" * 32],  # S >= L
        [identity, msg, identity + L.to_bytes(32, "little")],  # S = L, else valid (L*B = 0)
        [y_big, msg, sig],
        [off_curve, msg, sig],
        [pub, msg, bytes(64)],
        [identity, msg, r_noncanon],
        [identity, msg, forged],  # valid by RFC 8032 (and OpenSSL)
        [identity, msg, identity + bytes(32)],  # valid too: R = 0*B
        # RFC 8032 5.1.3 rejects these encodings of the identity; OpenSSL accepts them
        [x0_neg, msg, forged],
        [y_big, msg, forged],
        [pub[:31], msg, sig],  # wrong lengths raise
        [pub, msg, sig[:63]],
        [pub + b"\x00", msg, sig],
    ]
    _, _, verified = run(device, {"verify": [[x.hex() for x in c] for c in cases]})
    assert verified == [False] * 7 + [True, True, False, False] + ["Ed25519Error"] * 3
    assert [host_verify(*c) for c in cases[:9]] == [False] * 7 + [True, True]


def test_bad_arguments_raise(device: RunDevice) -> None:
    code = """
import json
from ioconnect import ed25519
out = []
for f, args in ((ed25519.public_key, (bytes(31),)), (ed25519.sign, (bytes(33), b"m")),
                (ed25519.sign, (bytes(32), "text")), (ed25519.verify, (bytes(32), b"m", 5))):
    try:
        f(*args)
        out.append("accepted")
    except ed25519.Ed25519Error as e:
        out.append(isinstance(e, ValueError) and len(str(e)) > 0)
print(json.dumps(out))
"""
    assert device(code) == [[True, True, True, True]]


def test_fallback_without_table(device: RunDevice) -> None:
    cases = [(bytes([i]) * 32, bytes(range(i * 5))) for i in range(1, 4)]
    table, signed, _ = run(
        device, {"no_table": True, "sign": [[s.hex(), m.hex()] for s, m in cases]}
    )
    assert table is None
    for (seed, msg), (pub, sig) in zip(cases, signed, strict=True):
        assert [pub, sig] == [
            host_pub(seed).hex(),
            Ed25519PrivateKey.from_private_bytes(seed).sign(msg).hex(),
        ]


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damaged_table_is_not_used(device: RunDevice, tmp_path: Path, damage: str) -> None:
    # A copy of the package in the device filesystem, its table damaged:
    # the module must notice (SHA-256, size) and still sign correctly.
    pkg = tmp_path / "ioconnect"
    shutil.copytree(firmware_dir() / "ioconnect", pkg)
    table = pkg / "tables" / "ed25519.bin"
    data = bytearray(table.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
        table.write_bytes(bytes(data))
    elif damage == "truncate":
        table.write_bytes(bytes(data[:-96]))
    else:
        table.unlink()
    seed, msg = bytes(range(100, 132)), b"x" * 70
    out, signed, _ = run(device, {"sign": [[seed.hex(), msg.hex()]]}, fs_dir=tmp_path)
    assert out is None
    assert signed == [
        [host_pub(seed).hex(), Ed25519PrivateKey.from_private_bytes(seed).sign(msg).hex()]
    ]


def test_shipped_table_is_reproducible() -> None:
    shipped = ectables_ed25519.default_path().read_bytes()
    assert len(shipped) < 100 * 1024
    assert shipped == ectables_ed25519.build_table(), (
        "run python -m ioconnect_host.ectables_ed25519"
    )


def test_table_generator_cli(tmp_path: Path) -> None:
    out = tmp_path / "t.bin"
    assert ectables_ed25519.main(["--window", "4", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"IOED\x01\x04\x40\x00"
    assert len(data) == 40 + 64 * 8 * 96
    assert hashlib.sha256(data[40:]).digest() == data[8:40]
