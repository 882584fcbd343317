"""Offline verification speed of ``ioconnect verify``'s library, printed as JSON:
messages verified per second per kind (one core, in-process, no I/O), and the
monitor's frame checker on a stream of task frames, beside the ceiling of
coincurve recovery alone (two recoveries per W3bstream task, as the node does).

Messages are made once on the host (coincurve, cryptography), then verified
``--n`` times each.

    python benchmarks/verify_speed.py [--n 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable

import coincurve
from Crypto.Hash import keccak
from cryptography.hazmat.primitives.asymmetric import ed25519
from ioconnect_host.frames import encode_frame
from ioconnect_host.monitor import FrameChecker
from ioconnect_host.signer import claim_from
from ioconnect_host.verify_cose import sig_structure
from ioconnect_host.verify_input import verify_bytes


def k256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def rate(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return round(n / (time.perf_counter() - start), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    key = coincurve.PrivateKey()
    address = "0x" + k256(key.public_key.format(compressed=False)[1:])[12:].hex()
    claim = claim_from(address=address)

    signed = b'{"nonce":7,"projectID":"42","payload":{"timestamp":1700000000,"temp_c":21.5}}'
    digest = hashlib.sha256(signed).digest()
    sig = key.sign_recoverable(digest, hasher=None)
    task = signed[:-1] + b',"signature":"0x' + sig[:64].hex().encode() + b'"}'

    msg = b"hello"
    eip_digest = k256(b"\x19Ethereum Signed Message:\n5" + msg)
    eip_sig = key.sign_recoverable(eip_digest, hasher=None)
    eth_sig = "0x" + eip_sig[:64].hex() + f"{eip_sig[64] + 27:02x}"  # v 27/28
    eip = json.dumps({"msg": "hello", "sig": eth_sig, "address": address}).encode()

    ed = ed25519.Ed25519PrivateKey.generate()
    protected = b"\xa1\x01\x27"  # {1: -8}
    payload = b'{"temp_c":21.5}'
    ed_sig = ed.sign(sig_structure(protected, payload))
    pub = ed.public_key().public_bytes_raw()
    cose = b"\xd2\x84\x43" + protected + b"\xa0" + b"\x4f" + payload + b"\x58\x40" + ed_sig
    ed_claim = claim_from(public_key=pub.hex(), curve="ed25519")

    frame = encode_frame({"event": "task", "nonce": 7, "body": task.decode()})

    def recover_twice() -> None:
        for v in (0, 1):
            coincurve.PublicKey.from_signature_and_message(
                sig[:64] + bytes([v]), digest, hasher=None
            )

    checker = FrameChecker(claim)
    for data, who in ((task, claim), (eip, None), (cose, ed_claim), (frame, claim)):
        verdict = verify_bytes(data, claim=who)
        assert verdict.valid, verdict.reason  # time the checks that pass, not a refusal
    result = {
        "n": n,
        "per_second": {
            "w3bstream": rate(lambda: verify_bytes(task, claim=claim), n),
            "eip191": rate(lambda: verify_bytes(eip), n),
            "cose_eddsa": rate(lambda: verify_bytes(cose, claim=ed_claim), n),
            "frame": rate(lambda: verify_bytes(frame, claim=claim), n),
            "monitor_checker": rate(
                lambda: checker.check(json.loads(frame[frame.index(b"{") :])), n
            ),
            "coincurve_recover_x2_ceiling": rate(recover_twice, n),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
