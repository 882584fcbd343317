"""Cost of reading agent requests through ioconnect.jsonin instead of json.loads alone.

Runs on the MicroPython unix port at the 96K heap, on the firmware as a board
gets it (.mpy). Prints one JSON object: per request kind, microseconds per
parse (best of several rounds) and bytes allocated by one parse, for
json.loads alone and for jsonin.loads (the check pass, plus the joined copy
when the text holds escaped surrogate pairs), and the RAM the module takes
while loaded. Timings only; nothing is asserted.

    python benchmarks/jsonin.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from devtiming import BEST_US
from ioconnect_host.firmware import host_build
from ioconnect_host.vm import run_script

REQUESTS = {
    "info": {"v": 1, "id": 7, "op": "info"},
    "eip191_ascii_200B": {
        "v": 1, "id": 8, "op": "sign", "profile": "eip191", "args": {"payload": "x" * 200},
    },
    "w3bstream_json_1KB": {
        "v": 1, "id": 9, "op": "sign", "profile": "w3bstream",
        "args": {"nonce": 7, "project_id": "42", "payload": json.dumps({"r": list(range(250))})},
    },
    "eip191_100_emoji_escaped": {
        "v": 1, "id": 10, "op": "sign", "profile": "eip191",
        "args": {"payload": "\U0001f600" * 100},
    },
}  # fmt: skip

PAYLOAD = """
import gc, json, time
ROUNDS = %(rounds)d
gc.collect()
free0 = gc.mem_free()
from ioconnect import jsonin
gc.collect()
out = {"module_bytes": free0 - gc.mem_free()}

%(best_us)s
def alloc(f):
    gc.collect()
    before = gc.mem_free()
    f()
    return before - gc.mem_free()

with open("requests.json") as f:
    reqs = json.load(f)
for name in reqs:
    raw = reqs[name].encode()
    out[name] = {
        "bytes": len(raw),
        "json_loads_us": best_us(lambda: json.loads(raw), 20),
        "jsonin_loads_us": best_us(lambda: jsonin.loads(raw), 20),
        "json_loads_alloc": alloc(lambda: json.loads(raw)),
        "jsonin_loads_alloc": alloc(lambda: jsonin.loads(raw)),
    }
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-jsonin-") as tmp:
        root = Path(tmp)
        # The requests as the host sends them: json.dumps with its defaults.
        texts = {name: json.dumps(req) for name, req in REQUESTS.items()}
        (root / "requests.json").write_text(json.dumps(texts))
        out = run_script(
            PAYLOAD % {"rounds": args.rounds, "best_us": BEST_US},
            fs_dir=root,
            extra_path=[host_build()],
        )
    print(json.dumps(json.loads(out.strip().splitlines()[-1])))


if __name__ == "__main__":
    main()
