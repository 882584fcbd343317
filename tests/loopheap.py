"""The attestation loop over MQTT on a virtual board, run cycle by cycle with its
heap watched: shared by tests/test_loop_heap.py and benchmarks/loop_heap.py.

The board's flash is provisioned (identity made by the device code, board file,
settings with mqtt.*); the board boots into its loop (main.py), which is then
stopped with Ctrl-C and rebuilt by ``ioconnect.app.build()`` on the fresh heap
of a soft reset, as at boot. Each cycle is the loop's own ``Loop.run`` for one
reading (read, nonce, sign, store, its collection), then its Delivery is stepped
until the relay's ack has taken the reading out of the outbox (the interval
wait, without the idle time). The device prints one JSON line of figures.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boardsetup import PROJECT, provision
from brokers import Acker, Broker
from ioconnect_host import agent
from ioconnect_host.firmware import compile_module, host_mpy_arch
from ioconnect_host.transport import SerialTransport
from ioconnect_sim.launch import start_board

# Installed on the flash compiled (loopdrv.mpy), as the firmware is: compiled
# in the VM, its parse would take heap the loop never has to give at boot.
DRIVER = """
import array, gc, json, time
from ioconnect import app
with open("loopdrv.json") as f:
    P = json.load(f)
gc.collect()
before_build = gc.mem_free()
lp = app.build()
d = lp.delivery
gc.collect()
built = gc.mem_free()
N = P["cycles"]
EVERY = P["every"]
W = P["window"]
P = None
per100 = array.array("i", [0] * (N // EVERY))
# sums and maxima (us): read, sign, store, publish (PUBLISH + PUBACK), deliver
# (until the relay's ack removed the reading); preallocated, as the loop's.
tot = array.array("i", [0] * 5)
top = array.array("i", [0] * 5)
# lowest free heap: after collect (all, first window, last window); uncollected
low = array.array("i", [1 << 30] * 4)
pub = array.array("i", [0])
orig = d.client.publish
def timed(topic, msg, qos=1, n=None):
    t = time.ticks_us()
    orig(topic, msg, qos, n)
    pub[0] += time.ticks_diff(time.ticks_us(), t)
d.client.publish = timed
connect_free = -1
stuck = 0
for i in range(N):
    pub[0] = 0
    lp.run(lp.cycles + 1)  # one reading, as the loop takes it (ends with a collect)
    f = gc.mem_free()
    t0 = time.ticks_us()
    dl = time.ticks_add(time.ticks_ms(), 60000)
    while len(lp.outbox) and time.ticks_diff(dl, time.ticks_ms()) > 0:
        d.step(500)
        g = gc.mem_free()
        if g < low[3]:
            low[3] = g
    if len(lp.outbox):
        stuck += 1
    if connect_free < 0:
        gc.collect()
        connect_free = gc.mem_free()
    r, s, w = lp.last_us
    k = 0
    for v in (r, s, w, pub[0], time.ticks_diff(time.ticks_us(), t0)):
        tot[k] += v
        if v > top[k]:
            top[k] = v
        k += 1
    if f < low[0]:
        low[0] = f
    if W <= i < 2 * W and f < low[1]:
        low[1] = f
    if i >= N - W and f < low[2]:
        low[2] = f
    if i % EVERY == EVERY - 1:
        per100[i // EVERY] = f
gc.collect()
res = {"before_build": before_build, "built": built, "after_connect": connect_free,
       "end": gc.mem_free(), "per_interval": list(per100), "low_all": low[0],
       "low_first": low[1], "low_last": low[2], "low_uncollected": low[3],
       "tot_us": list(tot), "top_us": list(top), "cycles": lp.cycles, "stuck": stuck,
       "pending": len(lp.outbox), "stats": d.stats}
print("RESULT " + json.dumps(res))
"""

# The least free heap with which the loop's Delivery connects (CONNECT, and over
# TLS the handshake with the server certificate check) and subscribes: a ballast
# block holds the rest, bisected to 256 bytes.
CONNECT_PROBE = """
import gc, json
from ioconnect import app
lp = app.build()
d = lp.delivery
def ballast(x):
    # Blocks (one block of all would not fit between the loop's objects),
    # smaller where the gaps are, until x bytes are left free.
    keep = []
    size = 4096
    while x >= 0 and size >= 64:
        n = gc.mem_free() - x - 64
        if n <= 0:
            break
        try:
            keep.append(bytearray(size if n > size else n))
        except MemoryError:
            size //= 2
    return keep
def attempt(x):
    d.client.close()
    d.client.ssl_context = None
    gc.collect()
    b = ballast(x)
    d.backoff.reset()
    try:
        d.step(0)
        ok = d.connected()
    except MemoryError:
        ok = False
    b = None
    d.client.close()
    gc.collect()
    return ok
gc.collect()
free = gc.mem_free()
res = {"free": free, "connects": attempt(-1), "error": d.stats["last_error"]}
lo, hi = 0, free - 1024
if res["connects"] and attempt(hi):
    while hi - lo > 256:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    res["least_free"] = hi
print("RESULT " + json.dumps(res))
"""

# Cuts the free heap into runs of at most RUN bytes, for good: with automatic
# collection off, one-block tuples fill every free block in address order (the
# allocator is first fit); every (RUN // block)-th is kept (chained through
# `_cut`), the rest are garbage at the collect. Stands in, deterministically,
# for what a running loop leaves in its heap where a Ctrl-C finds it (its
# objects, the REPL's input, the Ctrl-C's traceback, a shim's state). Prints
# the largest free run (blocks) and the interned-name count, as mem_info and
# qstr_info say.
CUT_HEAP = """
import gc, micropython, struct
k = %d // (4 * struct.calcsize("P"))
gc.collect()
gc.disable()
_cut = None
n = 0
try:
    while True:
        t = (_cut, n)
        if n %% k == 0:
            _cut = t
        n += 1
except MemoryError:
    pass
t = None
gc.enable()
gc.collect()
print("cut into runs below", k, "blocks")
micropython.mem_info()
micropython.qstr_info()
"""


@dataclass
class LoopRun:
    """What one run gave: the device's figures, its events, what the relay got."""

    address: str
    device: dict[str, Any]
    events: list[dict[str, Any]]
    received: list[str]  # the bodies the relay got from this device, as sent


def install_driver(flash: Path, params: dict[str, int]) -> None:
    """Put the driver, compiled for this VM, and its parameters on a board's flash."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "loopdrv.py"
        src.write_text(DRIVER)
        code = compile_module(src, mpy_arch=host_mpy_arch(), source_name="loopdrv.py")
    (flash / "loopdrv.mpy").write_bytes(code)
    (flash / "loopdrv.json").write_text(json.dumps(params))


def loop_settings(broker: Broker, *, tls: bool) -> dict[str, Any]:
    """Device settings of a board that publishes to ``broker`` (TLS: its CA on the flash)."""
    if tls:
        return {"mqtt.host": "localhost", "mqtt.port": broker.tls_port, "mqtt.tls": True}
    return {"mqtt.host": "127.0.0.1", "mqtt.port": broker.port}


def run_loop(
    board: str,
    broker: Broker,
    state: Path,
    *,
    cycles: int,
    every: int = 100,
    window: int = 25,
    tls: bool = False,
    heap: str | None = None,
    timeout_s: float = 3600,
) -> LoopRun:
    """Provision a virtual ``board`` in ``state``, run ``cycles`` readings over MQTT."""
    settings = {"wifi.ssid": "lab", "sample.interval_s": 1, **loop_settings(broker, tls=tls)}
    address = provision(state / "flash", board, settings)
    if tls:
        (state / "flash" / "ca.pem").write_bytes(broker.ca.read_bytes())
    install_driver(state / "flash", {"cycles": cycles, "every": every, "window": window})
    with Acker(broker.port, client_id=f"loopheap-{address[-8:]}") as acker:
        vb = start_board(board, name=f"loopheap-{board}-{address[-6:]}", state_dir=state,
                         **({"heap": heap} if heap else {}))  # fmt: skip
        try:
            with SerialTransport(vb.port) as t:
                # The board boots into its loop: stop it and take the fresh heap of
                # a soft reset (no main.py), as the loop has at boot.
                t.enter_raw_repl(soft_reset=True)
                out = t.exec("import loopdrv", timeout_s=timeout_s)
        finally:
            vb.stop()
        with acker.lock:
            received = [p.decode() for topic, p in acker.received if address.lower() in topic]
    lines = [x for x in out.decode(errors="replace").splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise AssertionError(f"the device printed no result: {out[-2000:]!r}")
    return LoopRun(address, json.loads(lines[-1][7:]), agent.parse_events(out), received)


def probe_connect(
    board: str, broker: Broker, state: Path, *, tls: bool, heap: str | None = None
) -> dict[str, Any]:
    """The least free heap the loop's MQTT connect needs on ``board`` (see CONNECT_PROBE)."""
    settings = {"wifi.ssid": "lab", **loop_settings(broker, tls=tls)}
    address = provision(state / "flash", board, settings)
    if tls:
        (state / "flash" / "ca.pem").write_bytes(broker.ca.read_bytes())
    vb = start_board(board, name=f"loopprobe-{board}-{address[-6:]}", state_dir=state,
                     **({"heap": heap} if heap else {}))  # fmt: skip
    try:
        with SerialTransport(vb.port) as t:
            t.enter_raw_repl(soft_reset=True)
            out = t.exec(CONNECT_PROBE, timeout_s=600)
    finally:
        vb.stop()
    lines = [x for x in out.decode(errors="replace").splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise AssertionError(f"the device printed no result: {out[-2000:]!r}")
    result: dict[str, Any] = json.loads(lines[-1][7:])
    return result


__all__ = ["CUT_HEAP", "PROJECT", "LoopRun", "loop_settings", "probe_connect", "run_loop"]
