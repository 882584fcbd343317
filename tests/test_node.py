"""The local W3bstream node over real HTTP: upstream's answers (200/400/403 and the
taskID rule) and what we add (replay check, zero-digest refusal, persistence)."""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import coincurve
import pytest
from ioconnect_host import w3bstream as w3b
from ioconnect_host.node import Node, serve

KEY = coincurve.PrivateKey(hashlib.sha256(b"node test device").digest())
ADDRESS = w3b.address_of(KEY.public_key.format())
OTHER = coincurve.PrivateKey(hashlib.sha256(b"someone else").digest())


def signed_body(
    nonce: int,
    payload: str,
    *,
    key: coincurve.PrivateKey = KEY,
    project: str = "42",
    keys: tuple[str, ...] = (),
) -> bytes:
    """A request as a device makes it: the signed JSON plus the signature field."""
    unsigned = w3b.parse_task(
        b'{"nonce":%d,"projectID":"%s","payload":%s,"signature":"0x%s"}'
        % (nonce, project.encode(), payload.encode(), b"00" * 64)
    )
    digest = w3b.task_digest(unsigned, keys)
    sig = key.sign_recoverable(digest, hasher=None)[:64]
    # coincurve signs low-S, as our devices do.
    return w3b.signed_bytes(unsigned)[:-1] + b',"signature":"0x' + sig.hex().encode() + b'"}'


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Node, int]]:
    approved = {("42", ADDRESS), ("7", ADDRESS)}
    n = Node(
        tmp_path / "node.db",
        approved=lambda p, a: (p, a) in approved,
        signed_keys={"7": ("timestamp",)},
    )
    server = serve(n)
    yield n, server.port
    server.stop()
    n.close()


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_accepts_a_device_task_and_answers_upstream_task_id(node: tuple[Node, int]) -> None:
    _, port = node
    body = signed_body(1, '{"t":21.5}')
    status, answer = request(port, "POST", "/v1/task", body)
    assert status == 200
    sig = bytes.fromhex(json.loads(body)["signature"][2:])
    assert answer == {"taskID": "0x" + w3b.keccak256(sig + b"\x01").hex()}
    status, got = request(port, "GET", "/v1/task/" + answer["taskID"])
    assert status == 200
    assert got["projectID"] == "42"
    assert got["taskID"] == answer["taskID"]
    assert [s["state"] for s in got["states"]] == ["packed"]
    status, devs = request(port, "GET", "/v1/devices")
    assert devs["devices"][0]["address"] == ADDRESS
    assert devs["devices"][0]["last_nonce"] == 1


def test_same_request_twice_gets_the_same_task_other_request_same_nonce_is_refused(
    node: tuple[Node, int],
) -> None:
    _, port = node
    first = request(port, "POST", "/v1/task", signed_body(5, '{"t":1}'))
    again = request(port, "POST", "/v1/task", signed_body(5, '{"t":1}'))
    assert first == again
    assert first[0] == 200
    status, answer = request(port, "POST", "/v1/task", signed_body(5, '{"t":2}'))
    assert status == 409
    assert answer["reason"] == "replayed_nonce"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (signed_body(1, '{"t":1}', key=OTHER), 403, "not_approved"),
        (signed_body(1, '{"t":1}', project="43"), 403, "not_approved"),
        (b'{"nonce":1}', 400, "bad_field"),
        (b"not json", 400, "malformed"),
        # Signed keys with a hex payload: upstream hashes 32 zero bytes; we refuse.
        (signed_body(1, '"abcd"', project="42").replace(b'"42"', b'"7"'), 400, "bad_field"),
    ],
)
def test_refusals(node: tuple[Node, int], body: bytes, status: int, reason: str) -> None:
    got_status, answer = request(node[1], "POST", "/v1/task", body)
    assert (got_status, answer["reason"]) == (status, reason)


def test_signed_keys_project(node: tuple[Node, int]) -> None:
    body = signed_body(2, '{"timestamp":1700000000,"t":3}', project="7", keys=("timestamp",))
    assert request(node[1], "POST", "/v1/task", body)[0] == 200
    # Signed without the key: the digest differs, the signer is not the device.
    plain = signed_body(3, '{"timestamp":1700000000,"t":3}', project="7")
    assert request(node[1], "POST", "/v1/task", plain)[0] == 403


def test_oversize_and_unknown_routes(node: tuple[Node, int]) -> None:
    port = node[1]
    assert request(port, "POST", "/v1/task", b"x" * (w3b.MAX_BODY + 2))[0] == 413
    assert request(port, "GET", "/v1/task/0x00")[0] == 404
    assert request(port, "POST", "/v2/task", b"{}")[0] == 404


def test_tasks_persist_across_restarts(tmp_path: Path) -> None:
    n = Node(tmp_path / "db", approved=lambda p, a: True)
    _, answer = n.submit(signed_body(9, '{"t":9}'))
    n.close()
    again = Node(tmp_path / "db", approved=lambda p, a: True)
    assert again.task(answer["taskID"]) is not None
    assert again.submit(signed_body(9, '{"t":10}'))[0] == 409
    assert again.tasks_of(ADDRESS)[0]["payload"] == {"t": 9}
    again.close()
