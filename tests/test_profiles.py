"""ioconnect.profiles on MicroPython, checked against real Go (tests/go), coincurve,
pycryptodome's keccak and eth-account."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import coincurve
import pytest
from Crypto.Hash import keccak
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_defunct, encode_typed_data
from go.goref import go_reference, run_go
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from vectors import JSON_TEXT, REGISTRY, permit_typed

# PROTOCOLS.md secp256k1 account
PRIV = "449e725560cd54b853e0825662b8d5c8fcb4e0516fe5a0a1509df4c4b9484d87"
ADDRESS = "0xb7009dd6858c73df7ce1a9edc47fbd5688b82f22"

# A Key-shaped signer over ioconnect.ecdsa with a fixed private key; `run`
# maps a case (JSON line) to a JSON-able result, errors included.
PRELUDE = (
    r"""
import json, hashlib, binascii
from ioconnect import ecdsa, profiles
D = 0x"""
    + PRIV
    + r"""
class FixedKey:
    def __init__(self, curve="secp256k1"):
        self.curve = curve
        self.c = ecdsa.curve_by_name(curve)
    def sign_digest(self, digest):
        return ecdsa.sign_digest(self.c, D, digest)
    def sign(self, msg):
        return self.sign_digest(hashlib.sha256(msg).digest())[0]
    def public_key(self, compressed=False):
        return ecdsa.public_key(self.c, D, compressed)
KEY = FixedKey()
def hx(b):
    return binascii.hexlify(b).decode()
def unhex(s):
    return binascii.unhexlify(s)
def each(run):
    with open("cases.txt") as f:
        for line in f:
            c = json.loads(line)
            try:
                print(json.dumps({"ok": run(c)}))
            except profiles.ProfileError as e:
                print(json.dumps({"err": str(e)}))
"""
)


def run_lines(device, tmp: Path, code: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (tmp / "cases.txt").write_text("".join(json.dumps(c) + "\n" for c in cases))
    out = device(PRELUDE + code, fs_dir=tmp)
    assert len(out) == len(cases)
    return out


def keccak256(b: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=b).digest()


def address_of(pub: coincurve.PublicKey) -> str:
    return "0x" + keccak256(pub.format(compressed=False)[1:])[-20:].hex()


def recovered_addresses(sig64: bytes, digest: bytes) -> set[str]:
    """Addresses for recovery ids 0 and 1, as the W3bstream node tries them."""
    return {
        address_of(
            coincurve.PublicKey.from_signature_and_message(sig64 + bytes([v]), digest, hasher=None)
        )
        for v in (0, 1)
    }


# --- W3bstream /v1/task ---------------------------------------------------------

TASK = r"""
def run(c):
    p = unhex(c["payload"])
    args = (c["nonce"], c["pid"], p, unhex(c["pver_hex"]))
    keys = tuple(c["keys"])
    body = profiles.w3bstream_task(KEY, *args, signed_keys=keys)
    return {"body": hx(body), "signed": hx(profiles.w3bstream_signed_bytes(*args)),
            "digest": hx(profiles.w3bstream_digest(*args, signed_keys=keys))}
each(run)
"""

NONCE = st.integers(1, 2**64 - 1) | st.sampled_from([1, 2**32, 2**63, 2**64 - 1])
PID = st.integers(0, 10**20).map(str)
PVER = st.sampled_from(["", "v1", "0.1.0", "<&>", "é\u2028x", '"q"\\', "\t\n"]) | st.text(
    max_size=8
).filter(lambda s: "\b" not in s and "\f" not in s)
PAYLOAD = (
    JSON_TEXT
    | st.binary(min_size=1, max_size=40)
    | st.sampled_from(
        [b"123", b'"abc"', b"true", b" null ", b"1.50", b"abcdef", b"0x12", b'"\xff\x00']
    )
)


def task_case(
    nonce: int, pid: str, pver: str, payload: bytes, keys: list[str] | None = None
) -> dict:
    # Text travels to the VM as hex: MicroPython's json.loads does not join
    # \ud8xx\udcxx surrogate-pair escapes into one character.
    return {
        "nonce": nonce,
        "pid": pid,
        "pver": pver,
        "pver_hex": pver.encode().hex(),
        "payload": payload.hex(),
        "keys": keys or [],
    }


def check_tasks(device, tmp: Path, cases: list[dict]) -> list[dict]:
    binary, _ = go_reference()
    dev = run_lines(device, tmp, TASK, cases)
    go_task = run_go(
        binary,
        [
            {
                "op": "task",
                "hex": c["payload"],
                "nonce": str(c["nonce"]),
                "projectID": c["pid"],
                "projectVersion": c["pver"],
            }
            for c in cases
        ],
    )
    ok = [(c, d["ok"]) for c, d in zip(cases, dev, strict=True) if "ok" in d]
    server = run_go(
        binary, [{"op": "server_task", "hex": d["body"], "keys": c["keys"]} for c, d in ok]
    )
    for (c, d), s in zip(ok, server, strict=True):
        i = cases.index(c)
        # The device signs exactly Go's json.Marshal of the task ...
        assert d["signed"] == go_task[i]["ok"], (c, d, go_task[i])
        # ... and its request body, parsed by the node, hashes to the same.
        assert "ok" in s, (c, d, s)
        assert s["ok"]["signed"] == d["signed"]
        assert s["ok"]["digest"] == d["digest"]
        sig = bytes.fromhex(s["ok"]["sig"])
        assert len(sig) == 64
        assert ADDRESS in recovered_addresses(sig, bytes.fromhex(d["digest"]))
    return dev


@settings(
    max_examples=5, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)
@given(cases=st.lists(st.builds(task_case, NONCE, PID, PVER, PAYLOAD), min_size=20, max_size=20))
def test_task_matches_go_and_recovers(device, tmp_path_factory, cases):
    dev = check_tasks(device, tmp_path_factory.mktemp("task"), cases)
    refused = [(c, d) for c, d in zip(cases, dev, strict=True) if "err" in d]
    # only JSON-with-bad-UTF-8 payloads may be refused here
    for c, d in refused:
        assert "invalid UTF-8" in d["err"], (c, d)
    assert len(refused) < len(cases) // 2


def test_task_body_forms(device, tmp_path):
    cases = [
        task_case(1, "42", "v1", b' {"timestamp" : 1700000000, "t": "<b>&"} '),
        task_case(7, "42", "", b'"abc"'),  # JSON scalar: sent as hex, hashed raw
        task_case(7, "42", "", b"\x00\x01binary"),  # not JSON: hex both ways
        task_case(2**64 - 1, "0", "", b"[1, 2.50, 1e3, -0]"),
    ]
    dev = check_tasks(device, tmp_path, cases)
    bodies = [json.loads(bytes.fromhex(d["ok"]["body"])) for d in dev]
    assert bodies[0]["payload"] == {"timestamp": 1700000000, "t": "<b>&"}
    assert bodies[0]["projectVersion"] == "v1" and bodies[0]["nonce"] == 1
    assert bodies[1]["payload"] == b'"abc"'.hex() and "projectVersion" not in bodies[1]
    assert bodies[2]["payload"] == b"\x00\x01binary".hex()
    assert bodies[3]["nonce"] == 2**64 - 1 and bodies[3]["projectID"] == "0"
    assert b'"payload":{"timestamp":1700000000,"t":"\\u003cb\\u003e\\u0026"}' in bytes.fromhex(
        dev[0]["ok"]["signed"]
    )
    for b in bodies:
        assert b["signature"].startswith("0x") and len(b["signature"]) == 130


def test_signed_keys_match_go(device, tmp_path):
    payloads = [
        (b'{"timestamp": 1700000000, "v": 1}', ["timestamp"]),
        (b'{"timestamp": "1700000001"}', ["timestamp"]),  # gjson reads digit strings too
        (b'{"timestamp": 5, "timestamp": 6}', ["timestamp"]),  # first duplicate wins
        (b'{"a": {"timestamp": 3}, "timestamp": 18446744073709551615}', ["timestamp"]),
        (
            b'{"timestamp": 1, "latitude": 2, "longitude": 3}',
            ["timestamp", "latitude", "longitude"],
        ),
        (b'{"d": {"ts": 99, "x": [1, {"ts": 1}]}, "s": "}"}', ["d.ts"]),
        (b'{"s": "a,\\"}", "timestamp": 0}', ["timestamp"]),
    ]
    cases = [task_case(3, "923", "", p, k) for p, k in payloads]
    dev = check_tasks(device, tmp_path, cases)
    assert all("ok" in d for d in dev), dev
    binary, _ = go_reference()
    h1 = run_go(binary, [{"op": "server_task", "hex": d["ok"]["body"]} for d in dev])
    for d, h in zip(dev, h1, strict=True):
        assert d["ok"]["digest"] != h["ok"]["h1"]  # the keys do change the digest


@pytest.mark.parametrize(
    "payload, keys, reason",
    [
        (b"00ff", ["timestamp"], "JSON object"),  # upstream would hash 32 zero bytes
        (b"123", ["timestamp"], "JSON object"),
        (b"[1]", ["timestamp"], "not in the payload"),
        (b'{"v": 1}', ["timestamp"], "not in the payload"),
        (b'{"timestamp": -1}', ["timestamp"], "unsigned integer"),
        (b'{"timestamp": 1.5}', ["timestamp"], "unsigned integer"),
        (b'{"timestamp": 1e3}', ["timestamp"], "unsigned integer"),
        (b'{"timestamp": 18446744073709551616}', ["timestamp"], "larger than uint64"),
        (b'{"timestamp": true}', ["timestamp"], "unsigned integer"),
        (b'{"timestamp": 1}', ["times*"], "plain dotted"),
    ],
)
def test_signed_keys_refused(device, tmp_path, payload, keys, reason):
    out = run_lines(device, tmp_path, TASK, [task_case(1, "1", "", payload, keys)])
    assert reason in out[0].get("err", ""), out


def test_task_refusals(device, tmp_path):
    code = r"""
P = (("nonce", 0, "1", b"{}", ""), ("nonce", 2 ** 64, "1", b"{}", ""),
     ("nonce", -1, "1", b"{}", ""), ("projectID", 1, "12a", b"{}", ""),
     ("projectID", 1, "", b"{}", ""), ("projectID", 1, " 1", b"{}", ""),
     ("empty", 1, "1", b"", ""), ("UTF-8", 1, "1", b'{"a": "\xff"}', ""),
     ("nesting", 1, "1", b"[" * 65 + b"]" * 65, ""), ("\\b or \\f", 1, "1", b"{}", "a\x08"),
     ("UTF-8", 1, "1", b"{}", b"\xc3"))
for why, *args in P:
    try:
        profiles.w3bstream_task(KEY, *args)
        print(json.dumps([why, "accepted"]))
    except profiles.ProfileError as e:
        print(json.dumps([why, str(e)]))
try:
    profiles.w3bstream_task(FixedKey("p256"), 1, "1", b"{}")
except profiles.ProfileError as e:
    print(json.dumps(["secp256k1", str(e)]))
# binary that merely starts like a JSON string is not refused: it goes as hex
print(json.dumps(["hex", profiles.w3bstream_signed_bytes(1, "1", b'"\xff\x00').decode()]))
"""
    out = device(PRELUDE + code)
    for why, msg in out[:-1]:
        assert why in msg, (why, msg)
    assert out[-1] == ["hex", '{"nonce":1,"projectID":"1","payload":"22ff00"}']


# --- sprout /message ---------------------------------------------------------------

SPROUT = r"""
def run(c):
    args = (c["pid"], unhex(c["pver"]), unhex(c["data"]))
    body = profiles.sprout_message(KEY, *args)
    signed = profiles.sprout_signed_bytes(*args)
    return {"body": hx(body), "signed": hx(signed)}
each(run)
"""

TEXT = st.text(min_size=1, max_size=20).filter(lambda s: "\b" not in s and "\f" not in s)


@settings(
    max_examples=5, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)
@given(
    cases=st.lists(
        st.fixed_dictionaries(
            {
                "pid": st.integers(1, 2**64 - 1),
                "pver": TEXT.map(lambda t: t.encode().hex()),
                "data": (TEXT | st.sampled_from(["<a>&b", "\u2028"])).map(
                    lambda t: t.encode().hex()
                ),
            }
        ),
        min_size=12,
        max_size=12,
    )
)
def test_sprout_matches_go_and_recovers(device, tmp_path_factory, cases):
    binary, _ = go_reference()
    dev = run_lines(device, tmp_path_factory.mktemp("sprout"), SPROUT, cases)
    server = run_go(binary, [{"op": "server_sprout", "hex": d["ok"]["body"]} for d in dev])
    for c, d, s in zip(cases, dev, server, strict=True):
        assert s["ok"]["signed"] == d["ok"]["signed"], (c, d, s)
        sig = bytes.fromhex(s["ok"]["sig"][2:])
        assert len(sig) == 65 and sig[64] in (0, 1)
        digest = keccak256(bytes.fromhex(d["ok"]["signed"]))
        pub = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
        assert address_of(pub) == ADDRESS


# --- ioID permit (EIP-712) and EIP-191 ------------------------------------------------

PERMIT = r"""
def run(c):
    digest, sig = profiles.ioid_permit(KEY, c["owner"], c["nonce"], c["chain"], c["registry"])
    return {"digest": hx(digest), "sig": hx(sig)}
each(run)
"""


def test_ioid_permit_recovers_with_eth_account(device, tmp_path):
    rnd = random.Random(4689)
    cases = []
    for chain in (4689, 4690):
        for nonce in (0, 1, 7, 2**64, 2**256 - 1):
            owner = "0x" + rnd.randbytes(20).hex()
            cases.append(
                {
                    "owner": owner if nonce % 2 else owner.upper().replace("0X", "0x"),
                    "nonce": nonce,
                    "chain": chain,
                    "registry": REGISTRY[chain],
                }
            )
    dev = run_lines(device, tmp_path, PERMIT, cases)
    for c, d in zip(cases, dev, strict=True):
        signable = encode_typed_data(
            full_message=permit_typed(c["owner"].lower(), c["nonce"], c["chain"])
        )
        sig = bytes.fromhex(d["ok"]["sig"])
        assert sig[64] in (27, 28)
        assert Account.recover_message(signable, signature=sig).lower() == ADDRESS
        digest = bytes.fromhex(d["ok"]["digest"])
        assert Account._recover_hash(digest, signature=sig).lower() == ADDRESS
        # same RFC 6979 signature as eth-account with the same key
        assert Account.sign_message(signable, "0x" + PRIV).signature == sig


EIP191 = r"""
def run(c):
    m = unhex(c["m"])
    return {"digest": hx(profiles.eip191_digest(m)), "sig": hx(profiles.personal_sign(KEY, m))}
each(run)
"""


@settings(
    max_examples=5, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)
@given(msgs=st.lists(st.binary(max_size=200), min_size=10, max_size=10))
def test_personal_sign_with_eth_account(device, tmp_path_factory, msgs):
    msgs = [*msgs, b"", b"hello", b"x" * 1000]
    dev = run_lines(
        device, tmp_path_factory.mktemp("eip191"), EIP191, [{"m": m.hex()} for m in msgs]
    )
    for m, d in zip(msgs, dev, strict=True):
        signable = encode_defunct(primitive=m)
        sig = bytes.fromhex(d["ok"]["sig"])
        assert d["ok"]["digest"] == _hash_eip191_message(signable).hex()
        assert sig[64] in (27, 28)
        assert Account.recover_message(signable, signature=sig).lower() == ADDRESS
        assert Account.sign_message(signable, "0x" + PRIV).signature == sig


def test_ethereum_profiles_refuse_bad_input(device):
    code = r"""
for args in (("0x12", 1, 4689, "0x" + "00" * 20), ("0x" + "zz" * 20, 1, 4689, "0x" + "00" * 20),
             ("0x" + "00" * 20, -1, 4689, "0x" + "00" * 20), ("0x" + "00" * 20, 1, 4689, b"short")):
    try:
        profiles.ioid_permit(KEY, *args)
        print(json.dumps("accepted"))
    except profiles.ProfileError as e:
        print(json.dumps(str(e)))
for k in (FixedKey("p256"),):
    try:
        profiles.personal_sign(k, b"x")
    except profiles.ProfileError as e:
        print(json.dumps(str(e)))
"""
    out = device(PRELUDE + code)
    assert "owner" in out[0] and "owner" in out[1] and "nonce" in out[2] and "registry" in out[3]
    assert "secp256k1" in out[4]


def test_real_keystore_key(device, tmp_path):
    # The same profiles with the device key store's Key (random key).
    code = r"""
from ioconnect.keys import KeyStore
k = KeyStore("id.key").create("secp256k1")
args = (9, "6", b'{"timestamp": 1}', "", ("timestamp",))
print(json.dumps({"pub": hx(k.public_key()), "task": hx(profiles.w3bstream_task(k, *args)),
                  "digest": hx(profiles.w3bstream_digest(*args)),
                  "eip191": hx(profiles.personal_sign(k, b"hi"))}))
"""
    (out,) = device(PRELUDE + code, fs_dir=tmp_path)
    addr = address_of(coincurve.PublicKey(bytes.fromhex(out["pub"])))
    binary, _ = go_reference()
    (s,) = run_go(binary, [{"op": "server_task", "hex": out["task"], "keys": ["timestamp"]}])
    assert s["ok"]["digest"] == out["digest"]
    assert addr in recovered_addresses(bytes.fromhex(s["ok"]["sig"]), bytes.fromhex(out["digest"]))
    signable = encode_defunct(primitive=b"hi")
    assert Account.recover_message(signable, signature=bytes.fromhex(out["eip191"])).lower() == addr
