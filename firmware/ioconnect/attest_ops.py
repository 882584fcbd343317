# The agent's attestation ops (`attest`, `ack`; see agent.py, which imports
# this module only for them).
import binascii
import gc
import sys

from ioconnect.agent import AgentError, _arg, _key


def attest(req):
    # One reading now, signed as the loop would sign it, with a nonce from the
    # loop's own store (so it is never reused). For debugging: the request is
    # returned, NOT queued in the outbox, so nothing delivers it twice.
    # Read, then sign, then COSE: each stage's modules are unloaded before the
    # next (the whole stack at once does not fit beside the agent in 96 KB).
    import time

    from ioconnect import forget

    keep = set(sys.modules)
    from ioconnect import attest, sensors

    try:
        settings = attest.Settings.load()
    except attest.AttestError as e:
        raise AgentError("invalid_config", str(e))
    cose = req.get("cose")
    if isinstance(cose, bool):
        settings.cose = cose
    try:
        probes = sensors.Sensors(sensors.load_board())
    except sensors.SensorError as e:
        raise AgentError("invalid_config", "board.json: %s (provision the board first)" % e.reason)
    order = settings.fields or probes.names()
    payload = attest.payload(probes.read(order), order, attest.unix_time(), time.ticks_ms())
    del probes  # its buses hold the drivers: gone before they are unloaded
    forget(keep)
    gc.collect()
    from ioconnect import attest
    from ioconnect.nonce import NonceStore

    try:
        attestor = attest.Attestor(_key(), settings, None, order)
    except attest.AttestError as e:
        raise AgentError("invalid_argument", str(e))
    nonce = NonceStore().next()
    out = {"nonce": nonce, "payload": payload.decode(), "request": attestor.task(nonce, payload).decode()}
    if settings.cose:
        forget(keep | {"ioconnect.attest", "ioconnect.keys"})
        gc.collect()
        out["cose"] = binascii.hexlify(attestor.cose(payload)).decode()
    return out


_ACK_STATUS = ("queued", "accepted", "rejected")


def ack(req):
    # The host's answer to a message it took from the console (serial
    # fallback): any final status removes it from the outbox.
    from ioconnect.outbox import Outbox

    nonce = _arg(req, "nonce", int)
    status = _arg(req, "status", str)
    if status not in _ACK_STATUS:
        msg = "status must be queued, accepted or rejected, not %r"
        raise AgentError("bad_request", msg % status)
    _arg(req, "taskID", str, "")
    _arg(req, "reason", str, "")
    import os

    box = Outbox()
    removed = box.remove(nonce)
    try:
        os.remove("outbox.cose/%d" % nonce)  # its COSE twin, if attest.cose made one
    except OSError:
        pass
    return {"nonce": nonce, "removed": removed, "pending": len(box)}
