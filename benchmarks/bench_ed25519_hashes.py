"""Time keccak256, sha512 and Ed25519 on the MicroPython unix port at the 96K heap.

Prints one JSON object: microseconds per call (best of several rounds), and for
each fixed-base window width tried, the table size and the k*B / sign times,
which is how the shipped width was chosen. Timings only; nothing is asserted.

    python benchmarks/bench_ed25519_hashes.py [--windows 4 5 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from devtiming import BEST_US
from ioconnect_host import ectables_ed25519
from ioconnect_host.paths import firmware_dir
from ioconnect_host.vm import run_script

PAYLOAD = """
import json, time, gc
from ioconnect.keccak import keccak256
from ioconnect.sha512 import sha512
from ioconnect import ed25519
ROUNDS = %(rounds)d

%(best_us)s
seed = bytes(range(32))
msg = bytes(64)
d32, d64, d1k = bytes(32), bytes(64), bytes(1024)
pub = ed25519.public_key(seed)
sig = ed25519.sign(seed, msg)

def pub_uncached():
    ed25519._cache[0] = None
    ed25519.public_key(seed)

out = {"table": ed25519.table_info()}
if %(hashes)s:
    out["keccak256_32B_us"] = best_us(lambda: keccak256(d32), 200)
    out["keccak256_1KB_us"] = best_us(lambda: keccak256(d1k), 50)
    out["sha512_64B_us"] = best_us(lambda: sha512(d64), 200)
    out["sha512_1KB_us"] = best_us(lambda: sha512(d1k), 50)
out["ed25519_public_key_us"] = best_us(pub_uncached, 5)
out["ed25519_sign_64B_us"] = best_us(lambda: ed25519.sign(seed, msg), 5)
out["ed25519_verify_us"] = best_us(lambda: ed25519.verify(pub, msg, sig), 2)
if %(fallback)s:
    ed25519._checked, ed25519._tbl = True, None
    out["ed25519_public_key_no_table_us"] = best_us(pub_uncached, 2)
print(json.dumps(out))
"""


def run(pkg_root: Path, rounds: int, hashes: bool, fallback: bool) -> dict[str, object]:
    code = PAYLOAD % {"rounds": rounds, "hashes": hashes, "fallback": fallback, "best_us": BEST_US}
    with tempfile.TemporaryDirectory() as fs:
        out = run_script(code, fs_dir=Path(fs), extra_path=[pkg_root])
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="*", default=[4, 5, 6])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    shipped = ectables_ed25519.default_path()
    report: dict[str, object] = {
        "heap": "96K",
        "shipped_table_bytes": shipped.stat().st_size,
        "shipped": run(firmware_dir(), args.rounds, True, True),
    }
    for w in args.windows:
        with tempfile.TemporaryDirectory() as tmp:
            pkg = Path(tmp) / "ioconnect"
            shutil.copytree(firmware_dir() / "ioconnect", pkg)
            table = ectables_ed25519.build_table(w)
            (pkg / "tables" / "ed25519.bin").write_bytes(table)
            res = run(Path(tmp), args.rounds, False, False)
        report[f"window_{w}"] = {"table_bytes": len(table), **res}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
