"""Text outside ASCII through the agent: the device signs the UTF-8 of the text.

A host's ``json.dumps`` writes U+1F600 as the escaped surrogate pair
``\\ud83d\\ude00`` (ensure_ascii, the default) or as raw UTF-8; MicroPython's
``json.loads`` left the pair unjoined, so the device signed CESU-8 bytes
(``eda0bd...``) instead of UTF-8 (``f09f9880``). Here every text-carrying
argument goes through a virtual ESP32 (96 KB heap) over its pty, sent both
ways, and each signature is checked by an independent library over the exact
UTF-8 bytes; the device's JSON reader (``ioconnect.jsonin``) is also run alone
on the MicroPython VM at 96 KB.
"""

from __future__ import annotations

import ast
import itertools
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import coincurve
import pytest
from boardsetup import secp_signers
from conftest import RunDevice
from Crypto.Hash import keccak
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from eth_account import Account
from eth_account.messages import encode_defunct
from go.goref import go_reference, run_go
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ioconnect_host import agent
from ioconnect_host.agent import AgentError
from ioconnect_host.transport import SerialTransport, TransportError
from ioconnect_sim.launch import VirtualBoard, start_board

# Texts a host sends: non-BMP (emoji, the last code point), BMP non-ASCII,
# the code points around the surrogate block, U+2028 (Go escapes it), < > &
# (Go escapes them) and NUL (JSON must escape it).
TEXTS = [
    "\U0001f600",
    "caf\u00e9 \u4e2d\u6587",
    "line\u2028sep\u2029para",
    "<a href='x'>&amp;</a>",
    "nul\x00byte\x1f",
    "\ud7ff\ue000\uffff\U00010000\U0010ffff",
    'mixed "\\" \U0001f680 \u00e9 \u4e2d \u2028 <>& \x00 \t\n end',
]
ENCODINGS = [True, False]  # ensure_ascii of the host's json.dumps
_ids = itertools.count(10_000)


@pytest.fixture(scope="module")
def vboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualBoard]:
    state: Path = tmp_path_factory.mktemp("unicode-esp32")
    vb = start_board("esp32", name="unicode-esp32", state_dir=state)
    try:
        yield vb
    finally:
        vb.stop()


@pytest.fixture(scope="module")
def board(vboard: VirtualBoard) -> Iterator[SerialTransport]:
    with SerialTransport(vboard.port) as t:
        yield t


@pytest.fixture(scope="module")
def address(board: SerialTransport) -> str:
    ident = agent.identity_create(board, "secp256k1")
    return str(ident["address"])


def k256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def request_bytes(op: str, ensure_ascii: bool, **args: Any) -> tuple[int, bytes]:
    """(id, request JSON) as a host with this ``ensure_ascii`` would write it."""
    rid = next(_ids)
    body = {"v": agent.API_VERSION, "id": rid, "op": op, **args}
    return rid, json.dumps(body, ensure_ascii=ensure_ascii).encode("utf-8")


def raw_call(board: SerialTransport, op: str, ensure_ascii: bool, **args: Any) -> Any:
    """agent.call, but with the request encoded as ``ensure_ascii`` says."""
    rid, request = request_bytes(op, ensure_ascii, **args)
    out = board.exec(agent.CALL % repr(request).encode())
    return agent.answer_result(agent.parse_frame(out, rid))


def eth_signer(text: str, signature_hex: str) -> str:
    """The address eth-account recovers for personal_sign over text's UTF-8."""
    message = encode_defunct(primitive=text.encode("utf-8"))
    return str(Account.recover_message(message, signature=bytes.fromhex(signature_hex))).lower()


# --- EIP-191 -------------------------------------------------------------------


@pytest.mark.parametrize("ensure_ascii", ENCODINGS)
def test_eip191_signs_the_utf8_of_the_text(
    board: SerialTransport, address: str, ensure_ascii: bool
) -> None:
    for text in TEXTS:
        out = raw_call(board, "sign", ensure_ascii, profile="eip191", args={"payload": text})
        assert eth_signer(text, out["signature"]) == address, text


def test_eip191_of_an_emoji_is_not_the_cesu8_signature(
    board: SerialTransport, address: str
) -> None:
    # `address`: the module's identity is made before signing (in any test order).
    # The defect as it was: the same signature as over eda0bded b880.
    out = agent.sign(board, "eip191", payload="\U0001f600")
    cesu = encode_defunct(primitive=bytes.fromhex("eda0bdedb880"))
    utf8 = encode_defunct(primitive=bytes.fromhex("f09f9880"))
    sig = bytes.fromhex(out["signature"])
    assert Account.recover_message(utf8, signature=sig) != Account.recover_message(
        cesu, signature=sig
    )
    assert agent.sign(board, "eip191", payload_hex="f09f9880") == out


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=st.text(max_size=40), ensure_ascii=st.booleans())
def test_eip191_any_text(
    board: SerialTransport, address: str, text: str, ensure_ascii: bool
) -> None:
    out = raw_call(board, "sign", ensure_ascii, profile="eip191", args={"payload": text})
    assert eth_signer(text, out["signature"]) == address


# --- W3bstream -------------------------------------------------------------------


def test_w3bstream_payload_version_and_signed_keys_match_go(
    board: SerialTransport, address: str
) -> None:
    binary, _ = go_reference()
    cases = []  # (request sent with ensure_ascii, payload text, project version, signed keys)
    for i, text in enumerate(TEXTS):
        raw_payload = json.dumps({"note": text, "t": 5 + i}, ensure_ascii=False)
        escaped_payload = json.dumps({"note": text, "t": 5 + i})
        for ensure_ascii in ENCODINGS:
            cases.append((ensure_ascii, raw_payload, "v1-\u00e9\U0001f600", ["t"]))
            cases.append((ensure_ascii, escaped_payload, "", []))
    # A signed key named with an emoji, read from a raw-UTF-8 payload.
    emoji_key = json.dumps({"\U0001f600": {"ts": 1700000000}}, ensure_ascii=False)
    cases += [(e, emoji_key, "2", ["\U0001f600.ts"]) for e in ENCODINGS]

    bodies = []
    for ensure_ascii, payload, version, keys in cases:
        args = {"nonce": 7, "project_id": "42", "project_version": version, "payload": payload}
        if keys:
            args["signed_keys"] = keys
        out = raw_call(board, "sign", ensure_ascii, profile="w3bstream", args=args)
        bodies.append(out["request"].encode("utf-8"))

    # What Go builds from the host's text (its UTF-8), and what the W3bstream
    # server derives from the device's request: the same bytes.
    expected = run_go(
        binary,
        [
            {
                "op": "task",
                "hex": p.encode().hex(),
                "nonce": "7",
                "projectID": "42",
                "projectVersion": v,
            }
            for _, p, v, _ in cases
        ],
    )
    server = run_go(
        binary,
        [
            {"op": "server_task", "hex": b.hex(), "keys": c[3]}
            for b, c in zip(bodies, cases, strict=True)
        ],
    )
    for case, want, got in zip(cases, expected, server, strict=True):
        assert "ok" in got, (case, got)
        assert got["ok"]["signed"] == want["ok"], case
        assert got["ok"]["raw"] == "true", case
        digest = bytes.fromhex(got["ok"]["digest"])
        assert address in secp_signers(digest, bytes.fromhex(got["ok"]["sig"])), case
    # The emoji went into the signed bytes as UTF-8, not CESU-8.
    signed = bytes.fromhex(server[0]["ok"]["signed"])
    assert b"\xf0\x9f\x98\x80" in signed and b"\xed\xa0\xbd" not in signed


def test_sprout_data_and_version_match_go(board: SerialTransport, address: str) -> None:
    binary, _ = go_reference()
    cases = [(e, text, "v\u00e9-" + text[:3]) for text in TEXTS for e in ENCODINGS]
    bodies = []
    for ensure_ascii, text, version in cases:
        args = {"project_id": 9, "project_version": version, "payload": text}
        out = raw_call(board, "sign", ensure_ascii, profile="sprout", args=args)
        bodies.append(out["request"].encode("utf-8"))
    # Go's json.Marshal of each text (its UTF-8), and what the sprout server
    # re-marshals from the device's request: the same bytes.
    texts = sorted({t for _, t, v in cases} | {v for _, _, v in cases})
    go_str = dict(
        zip(
            texts,
            run_go(binary, [{"op": "str", "hex": t.encode().hex()} for t in texts]),
            strict=True,
        )
    )
    server = run_go(binary, [{"op": "server_sprout", "hex": b.hex()} for b in bodies])
    for (ensure_ascii, text, version), got in zip(cases, server, strict=True):
        want = (
            b'{"projectID":9,"projectVersion":'
            + bytes.fromhex(go_str[version]["ok"])
            + b',"data":'
            + bytes.fromhex(go_str[text]["ok"])
            + b"}"
        )
        signed = bytes.fromhex(got["ok"]["signed"])
        assert signed == want, (ensure_ascii, text)
        sig = bytes.fromhex(got["ok"]["sig"][2:])
        pub = coincurve.PublicKey.from_signature_and_message(sig, k256(signed), hasher=None)
        assert "0x" + k256(pub.format(False)[1:])[-20:].hex() == address


# --- COSE --------------------------------------------------------------------------


@pytest.mark.parametrize("ensure_ascii", ENCODINGS)
def test_cose_payload_and_kid_are_the_utf8(
    board: SerialTransport, address: str, ensure_ascii: bool
) -> None:
    pub = bytes.fromhex(agent.identity_show(board)["public_key"])
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub)
    for text in TEXTS:
        kid = "kid-" + text[:8]
        out = raw_call(
            board, "sign", ensure_ascii, profile="cose", args={"payload": text, "kid": kid}
        )
        tag = cbor2.loads(bytes.fromhex(out["token"]))
        protected, unprotected, payload, signature = tag.value
        assert payload == text.encode("utf-8")
        assert unprotected == {4: kid.encode("utf-8")}
        tbs = cbor2.dumps(["Signature1", protected, b"", payload])
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))


# --- config ------------------------------------------------------------------------


@pytest.mark.parametrize("ensure_ascii", ENCODINGS)
def test_config_device_name_round_trips(
    board: SerialTransport, vboard: VirtualBoard, ensure_ascii: bool
) -> None:
    name = "Gr\u00fc\u00dfe \u4e2d \U0001f600\u2028<&>"
    assert raw_call(board, "config.set", ensure_ascii, key="device.name", value=name) == name
    assert raw_call(board, "config.get", ensure_ascii, key="device.name") == name
    assert agent.config_get(board)["device.name"] == name
    stored = (Path(vboard.config.flash_dir) / "config.json").read_bytes()
    assert json.loads(stored.decode("utf-8"))["device.name"] == name
    # Length bounds count characters: 32 emoji fit, 33 do not.
    assert agent.config_set(board, "device.name", "\U0001f600" * 32) == "\U0001f600" * 32
    with pytest.raises(AgentError) as err:
        agent.config_set(board, "device.name", "\U0001f600" * 33)
    assert str(err.value) == "invalid_config: device.name must be text of 1..32 characters"


# --- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\ud800", "lone surrogate \\ud800"),
        ("a\udfff", "lone surrogate \\udfff"),
        ("\ude00\ud83d", "lone surrogate \\ude00"),  # halves in the wrong order
        ("\ud83d\u0041", "lone surrogate \\ud83d"),
    ],
)
def test_lone_surrogate_is_refused_and_the_device_keeps_serving(
    board: SerialTransport, address: str, text: str, reason: str
) -> None:
    rid, request = request_bytes("sign", True, profile="eip191", args={"payload": text})
    at = request.index(reason[-6:].encode())
    answer = agent.parse_frame(board.exec(agent.CALL % repr(request).encode()), rid)
    assert answer["error"] == {
        "code": "bad_request",
        "message": f"request is not JSON: {reason} in string at byte {at}: not a character",
    }
    with pytest.raises(AgentError) as err:
        agent.sign(board, "eip191", payload=text)
    assert err.value.code == "bad_request" and reason in str(err.value)
    assert agent.info(board)["identity"]["state"] == "ok"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"v":1,"id":1,"op":"info","x":"\xed\xa0\xbd\xed\xb8\x80"}', "invalid UTF-8 at byte 31"),
        (b'{"v":1,"id":1,"op":"info","x":"\xc0\x80"}', "invalid UTF-8 at byte 31"),
        (b'{"v":1,"id":1,"op":"info","x":"\xff"}', "invalid UTF-8 at byte 31"),
        (b'{"v":1,"id":1,"op":"info","x":"\\x41"}', "bad escape in string at byte 31"),
        (b'{"v":1,"id":1,"op":"info","x":"\\uZZZZ"}', "bad \\u escape in string at byte 31"),
        (
            b'{"v":1,"id":1,"op":"info","x":"a\x01"}',
            "raw control character 0x01 in string at byte 32",
        ),
        (b'{"v":1,"id":1,"op":"info" "x":1}', "expected ',' or '}' at byte 26"),
        (b'{"v":1,"id":1,"op":"info",}', "expected a string key at byte 26"),
    ],
)
def test_nonstandard_json_is_refused_with_its_reason(
    board: SerialTransport, raw: bytes, message: str
) -> None:
    out, err = board.exec_raw(agent.CALL % repr(raw).encode())
    assert err == b""
    answer = agent.parse_frame(out)
    assert answer["error"] == {"code": "bad_request", "message": "request is not JSON: " + message}


def test_kid_of_the_wrong_type_is_refused(board: SerialTransport, address: str) -> None:
    with pytest.raises(AgentError) as err:
        agent.sign(board, "cose", payload="x", kid=5)
    assert str(err.value) == "bad_request: argument 'kid' has the wrong type"


# --- the device's JSON reader alone, on the VM at 96 KB -----------------------------

_JSONIN = """
import gc, json
from binascii import unhexlify
from ioconnect import jsonin
with open("cases.json") as f:
    cases = json.load(f)
for h in cases:
    raw = unhexlify(h)
    gc.collect()
    before = gc.mem_free()
    try:
        v = jsonin.loads(raw)
    except jsonin.JSONInError as e:
        print(json.dumps({"err": str(e)}))
        continue
    used = before - gc.mem_free()
    print(json.dumps({"ok": v, "used": used}))
"""

JSON_CASES: list[tuple[bytes, Any]] = [
    # (JSON text, the value CPython reads, or the device's error message)
    (b'"\\uD83D\\uDE00"', "\U0001f600"),
    (b'"\\ud83d\\ude00\\ud83d\\ude00x\\ud83d\\ude00"', "\U0001f600\U0001f600x\U0001f600"),
    (b'"\\\\ud83d\\ud83d\\ude00"', "\\ud83d\U0001f600"),  # an escaped backslash first
    (b'"\\udbff\\udfff\\ud800\\udc00"', "\U0010ffff\U00010000"),
    (
        b'"\xf0\x9f\x98\x80\\u00e9\\u0000\\/\\b\\f\\n\\r\\t\\"\\\\"',
        '\U0001f600\u00e9\x00/\b\f\n\r\t"\\',
    ),
    (
        b' {"a" : [ -0.5e+3 , 1E2, 0, true, false, null, {}, [] ] }\r\n',
        {"a": [-500.0, 100.0, 0, True, False, None, {}, []]},
    ),
    (b'{"\\ud83d\\ude00": {"k": "\\u4e2d"}}', {"\U0001f600": {"k": "\u4e2d"}}),
    (b'"\\ud800"', "lone surrogate \\ud800 in string at byte 1: not a character"),
    (b'"\\udc00\\ud800"', "lone surrogate \\udc00 in string at byte 1: not a character"),
    (b'"\\ud83d"', "lone surrogate \\ud83d in string at byte 1: not a character"),
    (b'"\\ud83d\\ud83d"', "lone surrogate \\ud83d in string at byte 1: not a character"),
    (b'"\xed\xa0\xbd\xed\xb8\x80"', "invalid UTF-8 at byte 1"),
    (b'"\xf4\x90\x80\x80"', "invalid UTF-8 at byte 1"),
    (b'"\xe2\x82"', "invalid UTF-8 at byte 1"),
    (b'"\\q"', "bad escape in string at byte 1"),
    (b'"\\u12"', "bad \\u escape in string at byte 1"),
    (b'"\\u00g0"', "bad \\u escape in string at byte 1"),
    (b'"tab\there"', "raw control character 0x09 in string at byte 4"),
    (b'"abc', "unterminated string"),
    (b"[1,]", "unexpected byte 0x5d at byte 3"),
    (b"[1 2]", "expected ',' or ']' at byte 3"),
    (b"01", "data after the JSON value at byte 1"),
    (b"1.", "bad number at byte 2"),
    (b"-", "bad number at byte 1"),
    (b"NaN", "unexpected byte 0x4e at byte 0"),
    (b"tru", "unexpected byte 0x74 at byte 0"),
    (b"\xef\xbb\xbf{}", "unexpected byte 0xef at byte 0"),
    (b'{"a" 1}', "expected ':' at byte 5"),
    (b"{1:2}", "expected a string key at byte 1"),
    (b"[\x0b1]", "unexpected byte 0x0b at byte 1"),  # \v is no JSON whitespace
    (b"", "unexpected end of JSON"),
    (b"[" * 32 + b"]" * 32, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
    (b"[" * 33 + b"]" * 33, "nesting deeper than 32"),
]


def run_jsonin(device: RunDevice, texts: list[bytes]) -> list[dict[str, Any]]:
    return device(_JSONIN, [t.hex() for t in texts])


def test_jsonin_on_the_vm(device: RunDevice) -> None:
    got = run_jsonin(device, [t for t, _ in JSON_CASES])
    for (text, want), answer in zip(JSON_CASES, got, strict=True):
        if isinstance(want, str) and "ok" not in answer:
            assert answer == {"err": want}, text
            continue
        assert answer["ok"] == want, text
        assert answer["ok"] == json.loads(text.decode("utf-8")), text


def test_jsonin_heap_at_96k(device: RunDevice) -> None:
    # 600 escaped emoji (a 7 KB request): the joined copy (2.4 KB) and the
    # string json.loads makes of it (2.4 KB), nothing per pair.
    text = json.dumps({"payload": "\U0001f600" * 600}).encode()
    (answer,) = run_jsonin(device, [text])
    assert answer["ok"] == {"payload": "\U0001f600" * 600}
    assert answer["used"] < 2 * 2400 + 1024, answer["used"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(json_values, min_size=30, max_size=30))
def test_jsonin_reads_what_cpython_wrote(device: RunDevice, values: list[Any]) -> None:
    texts = [json.dumps(v, ensure_ascii=e).encode() for v in values for e in ENCODINGS]
    got = run_jsonin(device, texts)
    want = [v for v in values for _ in ENCODINGS]
    assert [a.get("ok", a) for a in got] == want


# --- host: malformed answers --------------------------------------------------------


def frame(body: bytes) -> bytes:
    return b"\x1eIOC1 %d %08x " % (len(body), zlib.crc32(body)) + body + b"\n"


class ScriptedBoard:
    """Answers every agent call with one crafted frame carrying the request's id."""

    port = "scripted"

    def __init__(self, answer: str) -> None:
        self.answer = answer  # a JSON template; {id} is the request's id

    def exec(self, code: str | bytes, *, timeout_s: float = 30.0) -> bytes:
        assert isinstance(code, bytes) and code.startswith(agent.CALL.split(b"%s")[0])
        request = json.loads(ast.literal_eval(code[len(agent.CALL) - 3 : -1].decode()))
        return b"noise " + frame(self.answer.replace("{id}", str(request["id"])).encode())


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ('{"id": {id}}', "bad_answer: the agent's answer has null for 'ok', not a boolean"),
        (
            '{"id": {id}, "ok": "yes", "result": 1}',
            "bad_answer: the agent's answer has a string for 'ok', not a boolean",
        ),
        ('{"id": {id}, "ok": true}', "bad_answer: the agent's answer says ok but has no result"),
        ('{"id": {id}, "ok": false}', "bad_answer: the agent's error answer has null for 'error'"),
        (
            '{"id": {id}, "ok": false, "error": "boom"}',
            "bad_answer: the agent's error answer has a string for 'error'",
        ),
        (
            '{"id": {id}, "ok": false, "error": {"code": 5, "message": "x"}}',
            "bad_answer: the agent's error answer lacks a code or message",
        ),
        (
            '{"id": {id}, "ok": false, "error": {"code": "no_identity"}}',
            "bad_answer: the agent's error answer lacks a code or message",
        ),
        (
            '{"id": {id}, "ok": true, "result": [1]}',
            "bad_answer: the agent answered 'info' with an array, not an object",
        ),
        (
            '{"id": {id}, "ok": true, "result": null}',
            "bad_answer: the agent answered 'info' with null, not an object",
        ),
    ],
)
def test_malformed_answers_are_one_line_errors(answer: str, message: str) -> None:
    with pytest.raises(AgentError) as err:
        agent.info(ScriptedBoard(answer))
    assert str(err.value) == message


def test_well_formed_answers_still_pass() -> None:
    ok = '{"id": {id}, "ok": true, "result": {"name": "\\ud83d\\ude00"}}'
    assert agent.info(ScriptedBoard(ok)) == {"name": "\U0001f600"}
    refused = '{"id": {id}, "ok": false, "error": {"code": "no_identity", "message": "none"}}'
    with pytest.raises(AgentError) as err:
        agent.info(ScriptedBoard(refused))
    assert err.value.code == "no_identity" and str(err.value) == "no_identity: none"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # An old firmware printed unjoined pairs as raw CESU-8.
        (
            b'{"id": 1, "ok": true, "result": "\xed\xa0\xbd\xed\xb8\x80"}',
            "bad_answer: the agent's answer is not UTF-8 at byte 33",
        ),
        (
            b'{"id": 1, "ok": tru',
            "bad_answer: the agent's answer is not JSON "
            "(Expecting value: line 1 column 17 (char 16))",
        ),
        (b"[1, 2]", "bad_answer: the agent's answer is an array, not an object"),
        (
            b'"\x00\x00\x00{"',
            "bad_answer: the agent's answer is not JSON "
            "(Invalid control character at: line 1 column 2 (char 1))",
        ),
    ],
)
def test_parse_frame_names_a_malformed_body(body: bytes, message: str) -> None:
    with pytest.raises(AgentError) as err:
        agent.parse_frame(b"junk" + frame(body) + b"more")
    assert str(err.value) == message


def test_parse_frame_prefers_a_good_frame_and_reports_damage() -> None:
    good = b'{"id": 3, "ok": true, "result": 1}'
    assert agent.parse_frame(frame(b"[1]") + frame(good), 3)["result"] == 1
    # A request the device could not read is answered with id null.
    unread = b'{"id": null, "ok": false, "error": {"code": "bad_request", "message": "m"}}'
    assert agent.parse_frame(frame(unread) + frame(good), 3)["result"] == 1
    assert agent.parse_frame(frame(unread), 3)["error"]["code"] == "bad_request"
    damaged = frame(good).replace(b"true", b"trUe")
    with pytest.raises(TransportError, match="damaged in transit"):
        agent.parse_frame(damaged, 3)


# --- config.json, read by the device ------------------------------------------------

_CONFIG = """
import json
from ioconnect import config
try:
    print(json.dumps({"ok": config.get()}))
except config.ConfigError as e:
    print(json.dumps({"err": str(e)}))
"""


@pytest.mark.parametrize(
    ("stored", "want"),
    [
        (
            b'{"device.name": "\\ud83d\\ude00 caf\\u00e9"}',
            {"ok": {"device.name": "\U0001f600 café"}},
        ),
        ('{"device.name": "\U0001f600 café"}'.encode(), {"ok": {"device.name": "\U0001f600 café"}}),
        # What the old firmware wrote for an emoji: CESU-8, read as meant.
        (b'{"device.name": "\xed\xa0\xbd\xed\xb8\x80!"}', {"ok": {"device.name": "\U0001f600!"}}),
        # Half a pair is not a character, raw or escaped.
        (
            b'{"device.name": "\xed\xa0\xbd"}',
            {"err": "config file is corrupt: config.json: invalid UTF-8 at byte 17"},
        ),
        (
            b'{"device.name": "\\udc00"}',
            {
                "err": "config file is corrupt: config.json: lone surrogate \\udc00 "
                "in string at byte 17: not a character"
            },
        ),
    ],
)
def test_config_file_is_read_as_standard_json(
    device: RunDevice, tmp_path: Path, stored: bytes, want: dict[str, Any]
) -> None:
    (tmp_path / "config.json").write_bytes(stored)
    assert device(_CONFIG, fs_dir=tmp_path) == [want]


_CONFIG_SET = """
import json
from ioconnect import config
print(json.dumps({"ok": config.put("mqtt.port", 1883)}))
"""


def test_config_from_old_firmware_is_kept_and_rewritten_as_utf8(
    device: RunDevice, tmp_path: Path
) -> None:
    old = b'{"device.name": "\xed\xa0\xbd\xed\xb8\x80", "wifi.ssid": "home"}'
    (tmp_path / "config.json").write_bytes(old)
    assert device(_CONFIG_SET, fs_dir=tmp_path) == [{"ok": 1883}]
    stored = json.loads((tmp_path / "config.json").read_bytes().decode("utf-8"))
    assert stored == {"device.name": "\U0001f600", "wifi.ssid": "home", "mqtt.port": 1883}
    assert not (tmp_path / "config.json.bad").exists()


# --- acks from the relay, read by the device's delivery loop ------------------------

_ACKS = """
import json
from binascii import unhexlify
from ioconnect.deliver import Delivery
from ioconnect.outbox import Outbox
ob = Outbox("ob", 8)
for n in (1, 2, 3):
    ob.put(n, b'{"n":%d}' % n)
d = Delivery(ob, client_id="t", host="127.0.0.1", port=1, tasks_topic="t", acks_topic="a")
for h in json.load(open("cases.json")):
    d._acks.append(unhexlify(h))
d._apply_acks()
print(json.dumps({"reasons": d.stats["rejected_reasons"], "bad": d.stats["bad_acks"]}))
"""


def test_ack_reasons_outside_ascii_are_read_as_sent(device: RunDevice) -> None:
    reason = "r\u00e9f\u00e9r\u00e9 \U0001f600"
    acks = [
        json.dumps({"nonce": 1, "status": "rejected", "reason": reason}),  # escaped pair
        json.dumps({"nonce": 2, "status": "rejected", "reason": reason}, ensure_ascii=False),
        '{"nonce": 3, "status": "rejected", "reason": "\\ud800"}',  # lone surrogate
    ]
    # As hex: cases.json itself is read by MicroPython's json.load.
    got = device(_ACKS, [a.encode().hex() for a in acks])
    assert got == [{"reasons": {reason: 2}, "bad": 1}]
