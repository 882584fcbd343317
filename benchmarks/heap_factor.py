"""How much more heap the firmware takes on the virtual board's 64-bit MicroPython
VM than on a board's 32-bit MicroPython: the evidence for
``ioconnect_sim.supervisor.WORD_SIZE_FACTOR``, printed as JSON.

The same two workloads run on both VMs, from the same sources:
- ``resident``: the MQTT attestation loop's modules imported one by one (the
  names they intern included), then its objects (key, attestor, outbox, nonce
  store, Delivery): heap held after a collection;
- ``budget``: with only ``--budget`` bytes free (a ballast holds the rest), the
  same imports and objects, then ``--signs`` readings signed and stored: the free
  heap after building, the lowest seen, and whether it all fitted.

32-bit: the stock RPI_PICO firmware (MicroPython 1.28,
/work/shared/firmware/micropython-v1.28.0-RPI_PICO.uf2 by default) on the
rp2040py emulator, the firmware compiled for armv6m on a littlefs image. The
Pico has no network stack: a stub ``socket`` module (a few lines, imported
before the first measurement on both VMs) lets ``ioconnect.mqtt`` load; nothing
connects. 64-bit: the unix port the virtual boards run (``ioconnect_host.vm``).
Slow: the emulator runs at 1/20-1/50 of a Pico; about 10-20 minutes.

Needs rp2040py and littlefs-python (``pip install -e '.[dev]'``).

    python benchmarks/heap_factor.py [--uf2 PATH] [--budget 98304] [--signs 20]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ioconnect_host.boards import board_json
from ioconnect_host.firmware import build_firmware, host_build
from ioconnect_host.identity import new_identity
from ioconnect_host.vm import micropython_command

UF2 = Path("/work/shared/firmware/micropython-v1.28.0-RPI_PICO.uf2")
# The RPI_PICO filesystem: littlefs v2.0, 352 blocks of 4 KiB (see the UF2's README).
FS_BLOCKS = 352

LOOP_MODULES = (
    "keccak", "keys", "nonce", "outbox", "sensors", "attest", "hmac", "ec", "ecdsa",
    "utf8", "gojson", "w3btask", "net", "mqtt", "deliver", "app",
)  # fmt: skip

SOCKET_STUB = b"""# calibration stub: RPI_PICO has no network stack
AF_INET = 2
SOCK_STREAM = 1
def getaddrinfo(*a):
    raise OSError(1)
class socket:
    pass
"""

COMMON = """
import gc, sys
gc.collect()
import socket, select, errno
MODULES = %(modules)r
def build():
    for name in MODULES:
        __import__("ioconnect." + name)
        gc.collect()
    from ioconnect import keys, attest, deliver
    from ioconnect.outbox import Outbox
    from ioconnect.nonce import NonceStore
    key = keys.KeyStore("identity.key").load()
    att = attest.Attestor(key, attest.Settings({"w3bstream.project_id": "42"}), None,
                          order=["temperature", "climate"])
    ob = Outbox("cal_outbox")
    ns = NonceStore("cal_nonce.dat")
    d = deliver.Delivery(ob, client_id="0x" + "be" * 20, host="127.0.0.1",
                         tasks_topic="ioconnect/42/x/tasks", acks_topic="ioconnect/42/x/acks")
    return att, ob, ns, d
"""

RESIDENT = (
    COMMON
    + """
gc.collect()
base = gc.mem_alloc()
objs = build()
gc.collect()
print("RESULT", {"resident": gc.mem_alloc() - base})
"""
)

BUDGET = (
    COMMON
    + """
gc.collect()
ballast = bytearray(gc.mem_free() - %(budget)d)
gc.collect()
start = gc.mem_free()
low = start
res = {"budget": %(budget)d, "start_free": start}
try:
    att, ob, ns, d = build()
    gc.collect()
    res["built_free"] = gc.mem_free()
    readings = {"temperature": {"celsius": 36.5}, "climate": {"celsius": 21.25, "humidity": 45.5}}
    for i in range(%(signs)d):
        n = ns.next()
        body = att.sign(n, readings, 1800000000)[1]
        ob.put(n, body)
        body = None
        ob.remove(n)
        low = min(low, gc.mem_free())
        gc.collect()
    res["low_free"] = low
    res["fits"] = True
except MemoryError as e:
    res["fits"] = False
    res["error"] = str(e)
print("RESULT", res)
"""
)


def _result(out: str, where: str) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith("RESULT "):
            value: dict[str, Any] = ast.literal_eval(line[7:])
            return value
    raise SystemExit(f"heap_factor: no result from {where}: {out[-1500:]}")


def _files(ident: Path, scripts: dict[str, str]) -> dict[str, bytes]:
    out = {"identity.key": (ident / "identity.key").read_bytes()}
    out["board.json"] = board_json("rpi-pico")
    out.update({f"{name}.py": code.encode() for name, code in scripts.items()})
    return out


def run_pico(uf2: Path, firmware: dict[str, bytes], script: str, work: Path) -> dict[str, Any]:
    import littlefs

    fs = littlefs.LittleFS(block_size=4096, block_count=FS_BLOCKS, disk_version=0x00020000)
    for path, data in firmware.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            with contextlib.suppress(FileExistsError):  # made for an earlier file
                fs.mkdir("/".join(parts[:i]))
        with fs.open(path, "wb") as f:
            f.write(data)
    image = work / "fs.img"
    image.write_bytes(fs.context.buffer)
    exe = shutil.which("rp2040py") or str(Path(sys.executable).with_name("rp2040py"))
    cmd = [exe, "micropython", "--image", str(uf2), "--littlefs", str(image),
           "-c", f"import {script}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    return _result(done.stdout + done.stderr, f"rp2040py ({script})")


def run_unix(files: dict[str, bytes], script: str, work: Path) -> dict[str, Any]:
    fs = work / "unix"
    shutil.rmtree(fs, ignore_errors=True)
    fs.mkdir()
    for name, data in files.items():
        (fs / name).write_bytes(data)
    env = dict(os.environ, MICROPYPATH=f"{host_build()}:.")
    cmd = [*micropython_command("1M"), "-c", f"import {script}"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=fs, env=env, timeout=600, check=False
    )
    return _result(done.stdout + done.stderr, f"the unix VM ({script})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uf2", type=Path, default=UF2, help="RPI_PICO MicroPython firmware")
    ap.add_argument("--budget", type=int, default=96 * 1024, help="bytes free for the budget run")
    ap.add_argument("--signs", type=int, default=20)
    args = ap.parse_args()
    try:
        import littlefs  # noqa: F401
    except ImportError:
        raise SystemExit(
            "heap_factor: needs littlefs-python and rp2040py (pip install -e '.[dev]')"
        ) from None
    if not args.uf2.is_file():
        raise SystemExit(f"heap_factor: no firmware at {args.uf2}")
    params = {"modules": LOOP_MODULES, "budget": args.budget, "signs": args.signs}
    scripts = {"hf_resident": RESIDENT % params, "hf_budget": BUDGET % params}
    with tempfile.TemporaryDirectory(prefix="heap-factor-") as tmp:
        work = Path(tmp)
        ident = work / "ident"
        new_identity(ident, "secp256k1")
        files = _files(ident, scripts)
        pico_fw = {f.path: f.data for f in build_firmware(mpy_arch="armv6m")}
        pico_fw.pop("main.py")  # boot to the REPL, not into a loop
        pico_fw.update(files)
        pico_fw["socket.py"] = SOCKET_STUB
        out: dict[str, Any] = {"uf2": args.uf2.name}
        for name in scripts:
            out[name[3:]] = {
                "rp2040_32bit": run_pico(args.uf2, pico_fw, name, work),
                "unix_64bit": run_unix(files, name, work),
            }
    res = out["resident"]
    out["factor_resident"] = round(
        res["unix_64bit"]["resident"] / res["rp2040_32bit"]["resident"], 3
    )
    bud = out["budget"]
    used = {k: v["start_free"] - v.get("built_free", v["start_free"]) for k, v in bud.items()}
    if all(v["fits"] for v in bud.values()):
        out["factor_budget_built"] = round(used["unix_64bit"] / used["rp2040_32bit"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
