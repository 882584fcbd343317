"""The local node's sprout ``POST /message`` and its page ``GET /``, over real HTTP.

Sprout messages are signed by the firmware on a virtual board (its agent's
``sprout`` profile) and by eth-account (an independent Ethereum library) with
the PROTOCOLS.md secp256k1 account, whose address the node must recover. The
page is parsed with html.parser: what devices sent (payloads, sprout data) is
text on it, never markup.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from Crypto.Hash import keccak
from eth_account import Account
from ioconnect_host import agent
from ioconnect_host.node import Node, serve
from relayparts import DEVICE, OTHER, N
from relayparts import body as task_body

# PROTOCOLS.md: secp256k1 account vector.
VECTOR_KEY = "449e725560cd54b853e0825662b8d5c8fcb4e0516fe5a0a1509df4c4b9484d87"
VECTOR_ADDRESS = "0xb7009dd6858c73df7ce1a9edc47fbd5688b82f22"
SCRIPT = "<script>alert('x')</script>"


def k256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def eth_signed(project: int, version: str, data: str, key: str = VECTOR_KEY) -> bytes:
    """A sprout message signed by eth-account: the signed bytes made here with the
    stdlib as Go's json.Marshal writes them (ASCII text; <, >, & escaped), v 27/28
    -> 0/1."""
    head = {"projectID": project, "projectVersion": version, "data": data}
    signed = json.dumps(head, separators=(",", ":")).encode()
    for c in b"<>&":
        signed = signed.replace(bytes([c]), b"\\u%04x" % c)
    sig = Account.unsafe_sign_hash(k256(signed), "0x" + key)
    rsv = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v - 27])
    return json.dumps({**head, "signature": "0x" + rsv.hex()}, separators=(",", ":")).encode()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Node, int]]:
    approved = {VECTOR_ADDRESS, DEVICE}
    n = Node(tmp_path / "node.db", approved=lambda p, a: p in ("9", "42") and a in approved)
    server = serve(n)
    yield n, server.port
    server.stop()
    n.close()


def post(port: int, path: str, body: bytes) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def test_sprout_message_signed_by_eth_account_recovers_the_vector_address(
    node: tuple[Node, int],
) -> None:
    n, port = node
    body = eth_signed(9, "0.1", "hello")
    status, answer = post(port, "/message", body)
    assert status == 200, answer
    signed = b'{"projectID":9,"projectVersion":"0.1","data":"hello"}'
    want = "0x" + k256(bytes.fromhex(VECTOR_ADDRESS[2:]) + signed).hex()
    assert answer == {"taskID": want}
    # Replayed: the first taskID again, stored once.
    assert post(port, "/message", body) == (200, answer)
    got = n.messages_of(VECTOR_ADDRESS)
    assert [(m["taskID"], m["projectID"], m["data"]) for m in got] == [(want, 9, "hello")]


def test_sprout_replay_with_the_other_s_is_the_same_message(node: tuple[Node, int]) -> None:
    n, port = node
    body = json.loads(eth_signed(9, "0.1", "reading 1"))
    first = post(port, "/message", json.dumps(body).encode())
    sig = bytes.fromhex(body["signature"][2:])
    # The same signature's twin (n - s, v flipped) recovers the same key: high-S is
    # refused; the low-S one resent in other JSON spelling is the same message.
    s_high = (N - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big")
    twin = {**body, "signature": "0x" + (sig[:32] + s_high + bytes([sig[64] ^ 1])).hex()}
    status, answer = post(port, "/message", json.dumps(twin).encode())
    assert (status, answer["reason"]) == (400, "high_s")
    respaced = json.dumps(body, indent=2).encode()
    assert post(port, "/message", respaced) == first
    assert len(n.messages_of(VECTOR_ADDRESS)) == 1


def test_sprout_message_signed_by_the_firmware_on_a_virtual_board(
    tmp_path: Path, board: agent.Board
) -> None:
    ident = agent.identity_create(board, "secp256k1")
    n = Node(tmp_path / "node.db", approved=lambda p, a: (p, a) == ("9", ident["address"]))
    server = serve(n)
    try:
        data = 'temp="21.5" <b>&</b> \u00e9'  # Go escapes <>& and keeps UTF-8 raw
        req = agent.sign(board, "sprout", project_id=9, project_version="0.1", payload=data)
        status, answer = post(server.port, "/message", req["request"].encode())
        assert status == 200, answer
        assert n.messages_of(ident["address"])[0]["data"] == data
        other = agent.sign(board, "sprout", project_id=10, project_version="0.1", payload="x")
        status, answer = post(server.port, "/message", other["request"].encode())
        assert (status, answer["reason"]) == (403, "not_approved")  # project 10
    finally:
        server.stop()
        n.close()


def _variant(**change: Any) -> bytes:
    body = json.loads(eth_signed(9, "0.1", "hello"))
    body.update(change)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (eth_signed(9, "0.1", "hello", key=OTHER.secret.hex()), 403, "not_approved"),
        (eth_signed(9, "0.1", "hellO").replace(b"hellO", b"hello"), 403, "not_approved"),
        (_variant(projectID=0), 400, "bad_field"),  # required: zero is missing
        (_variant(projectID="9"), 400, "bad_field"),
        (_variant(projectID=9.0), 400, "bad_field"),
        (_variant(data=""), 400, "bad_field"),
        (_variant(projectVersion=None), 400, "bad_field"),
        (_variant(signature="0x" + "11" * 64), 400, "bad_field"),  # 64 bytes: v missing
        (_variant(signature="0x" + "11" * 64 + "1b"), 400, "bad_signature"),  # v = 27
        (_variant(ProjectId=9), 400, "malformed"),  # Go would match it by case
        (b'{"projectID":9,"projectID":9}', 400, "malformed"),
        (b"[1]", 400, "malformed"),
        (b"\xff{}", 400, "malformed"),
    ],
)
def test_sprout_refusals(node: tuple[Node, int], body: bytes, status: int, reason: str) -> None:
    got_status, answer = post(node[1], "/message", body)
    assert (got_status, answer["reason"]) == (status, reason), answer


def test_sprout_messages_persist_and_replays_stay_refused(tmp_path: Path) -> None:
    n = Node(tmp_path / "db", approved=lambda p, a: True)
    body = eth_signed(9, "0.1", "kept")
    _, answer = n.submit_message(body)
    n.close()
    again = Node(tmp_path / "db", approved=lambda p, a: True)
    assert again.submit_message(body) == (200, answer)
    assert [m["data"] for m in again.messages_of(VECTOR_ADDRESS)] == ["kept"]
    again.close()


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_page_lists_devices_and_tasks_with_device_text_escaped(node: tuple[Node, int]) -> None:
    _, port = node
    payload = json.dumps({"note": SCRIPT, "q": "\"'&", "t": 1})
    for nonce in (1, 2):
        assert post(port, "/v1/task", task_body(nonce, payload))[0] == 200
    assert post(port, "/message", eth_signed(9, "0.1", "<img src=x onerror=alert(1)>"))[0] == 200
    status, headers, html = get(port, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none'
    page = _Page()
    page.feed(html)
    page.close()
    assert "script" not in page.tags and "img" not in page.tags
    text = "".join(page.text)
    assert SCRIPT in text and "\"'&" in text  # shown as text, decoded back by the parser
    assert "<img src=x onerror=alert(1)>" in text
    assert DEVICE in text and VECTOR_ADDRESS in text
    task_id = post(port, "/v1/task", task_body(2, payload))[1]["taskID"]
    assert task_id in text
    assert page.tags.count("tr") == 1 + 1 + 1 + 2 + 1 + 1  # devices, tasks, sprout tables
    assert "&lt;script&gt;" in html and SCRIPT not in html
