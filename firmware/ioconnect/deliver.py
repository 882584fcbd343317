# Delivery: moves the outbox to the relay over MQTT, one bounded step at a
# time, and never raises on network loss.
#
# Per step: (re)connect when the backoff allows (clean session off, subscribe
# to the acks topic), publish pending readings in nonce order (QoS 1: the
# broker's PUBACK), and apply the relay's acks: {"nonce": N, "status":
# "queued"|"accepted"|"rejected", ...} removes N from the outbox ("queued": the
# relay has stored it durably and owns it now; W3bstream's verdict is then the
# relay's to count; "rejected" here is the relay's own refusal, counted by
# reason). A PUBACK is only the broker's; a reading leaves the outbox when
# the relay acks it. At most `window` readings are out without an ack (default
# 1): relays sharing a subscription then never see a device's nonces out of
# order, and a relay rejects a nonce below the device's high-water mark.
# After a reconnect the unacknowledged readings are published again (the relay
# is idempotent on (device, nonce)); also after resend_s with no progress.
import gc
import json
import time

from micropython import const

from ioconnect.mqtt import MQTTClient, MQTTError
from ioconnect.net import Backoff, station_up
from ioconnect.outbox import OutboxError

_MAX_ACKS = const(32)  # acks held between steps; more are dropped (the relay re-acks)
_MAX_REASONS = const(8)  # distinct rejection reasons counted; the rest go to "other"
_REASON_LEN = const(48)
_STABLE_MS = const(5000)  # a link up this long was good: a drop is retried without backoff
_STATUSES = ("queued", "accepted", "rejected")


class DeliveryError(ValueError):
    pass


def _der(data):
    # PEM -> DER: not every port's mbedTLS is built with PEM parsing (the unix
    # port's is not), DER always works. Only the first certificate is used.
    if not data.startswith(b"-----BEGIN"):
        return data
    import binascii

    start = data.find(b"\n") + 1
    end = data.find(b"-----END", start)
    if start <= 0 or end < 0:
        raise ValueError("truncated PEM")
    return binascii.a2b_base64(data[start:end])


_PROVISIONED_CA = "ca.pem"  # where `ioconnect provision --ca` puts the CA on the flash


def topics(project_id, address):
    """(tasks, acks) topics of a device, as PROTOCOLS.md "Device <-> relay over MQTT" says."""
    base = "ioconnect/%s/%s/" % (project_id, address.lower())
    return base + "tasks", base + "acks"


def from_config(outbox, address, project_id, config_path=None):
    """A Delivery set up from the device settings (mqtt.*); client id = the address."""
    from ioconnect import config

    def v(key, default=None):
        if config_path is None:
            return config.value(key, default)
        return config.value(key, default, config_path)

    host = v("mqtt.host")
    if not host:
        raise DeliveryError("mqtt.host is not set")
    tasks, acks = topics(project_id, address)
    tls = bool(v("mqtt.tls", False))
    return Delivery(
        outbox,
        client_id=address.lower(),
        host=host,
        port=v("mqtt.port", 8883 if tls else 1883),
        tasks_topic=tasks,
        acks_topic=acks,
        keepalive_s=v("mqtt.keepalive_s", 60),
        resend_s=v("mqtt.resend_s", 30),
        tls=tls,
        ca=v("mqtt.ca") or (_PROVISIONED_CA if tls else None),
        user=v("mqtt.user"),
        password=v("mqtt.password"),
    )


def _parse_ack(msg):
    # The relay's acks are ASCII JSON (json.dumps escapes the rest), which the
    # built-in parser reads as any parser would: jsonin (5 KB) need not stay
    # loaded for them. Any other byte or a \u escape: jsonin, loaded for that
    # ack alone, reads it as the agent reads JSON from outside (surrogate pairs
    # joined, a lone one refused), so a reason is counted as the relay sent it.
    plain = msg.find(b"\\u") < 0
    for c in msg:
        if c < 0x20 or c > 0x7E:
            plain = False
            break
    if plain:
        return json.loads(msg)
    import sys

    from ioconnect import forget

    keep = set(sys.modules)
    try:
        return _jsonin_loads(msg)
    finally:
        forget(keep)


def _jsonin_loads(msg):
    from ioconnect import jsonin

    return jsonin.loads(msg)


def _ms_left(deadline):
    return time.ticks_diff(deadline, time.ticks_ms())


class Delivery:
    def __init__(
        self,
        outbox,
        *,
        client_id,
        host,
        port=1883,
        tasks_topic,
        acks_topic,
        keepalive_s=60,
        tls=False,
        ca=None,
        user=None,
        password=None,
        server_hostname=None,
        timeout_ms=10000,
        resend_s=30,
        backoff=None,
        window=1,
    ):
        if tls and not ca:
            raise DeliveryError(
                "TLS needs a CA certificate (mqtt.ca): the server is always checked"
            )
        self.outbox = outbox
        self.tasks_topic = tasks_topic.encode() if isinstance(tasks_topic, str) else tasks_topic
        self.acks_topic = acks_topic.encode() if isinstance(acks_topic, str) else acks_topic
        self.tls = tls
        self.ca = ca
        self.resend_ms = resend_s * 1000
        self.window = window
        self.client = MQTTClient(
            client_id,
            host,
            port,
            keepalive_s=keepalive_s,
            user=user,
            password=password,
            server_hostname=server_hostname,
            timeout_ms=timeout_ms,
        )
        self.client.on_message = self._on_message
        self.backoff = backoff or Backoff(1000, 60000)
        self.stats = {  # type: dict
            "published": 0,
            "queued": 0,
            "acked": 0,
            "rejected": 0,
            "reconnects": 0,
            "connects": 0,
            "failed_connects": 0,
            "bad_acks": 0,
            "rejected_reasons": {},
            "last_error": None,
        }
        self._body = bytearray(outbox.max_body)
        self._acks = []
        self._sent = 0  # highest nonce published on this connection
        self._progress_at = time.ticks_ms()
        self._up_at = None  # ticks_ms of the current connection
        self._no_station = False  # the station was down at the last step

    def connected(self):
        return self.client.connected()

    def step(self, budget_ms):
        """Do what fits in budget_ms; returns early when nothing waits for an ack.

        A (re)connect is bounded by timeout_ms, not by the budget (a TLS
        handshake on an ESP32 takes seconds), so that step may run longer.
        """
        deadline = time.ticks_add(time.ticks_ms(), budget_ms)
        for _ in range(2):  # a link that dropped after a good while is retried at once
            c = self.client
            if not c.connected():
                if not station_up():
                    # No network to reach the broker through: no attempt (nor a
                    # longer backoff for it); when the station is back, at once.
                    self._no_station = True
                    return
                if self._no_station:
                    self._no_station = False
                    self.backoff.reset()
                if not (self.backoff.ready() and self._connect()):
                    return
            try:
                self._work(deadline)
                return
            except MQTTError as e:
                self._lost(e)
            if _ms_left(deadline) <= 0:
                return

    def _work(self, deadline):
        c = self.client
        ob = self.outbox
        c.poll(0)
        self._apply_acks()
        self._maybe_resend()
        # Publish while the window has room; wait out the budget only while
        # readings wait for their ack.
        while len(ob) and _ms_left(deadline) > 0:
            n = ob.next_after(self._sent)
            if n is not None and ob.count_upto(self._sent) < self.window:
                self._publish(n)
                c.poll(0)
            else:
                c.poll(_ms_left(deadline))
            self._apply_acks()

    def _publish(self, n):
        try:
            k = self.outbox.read_into(n, self._body)
        except OutboxError as e:
            self.stats["last_error"] = str(e)
            self._sent = n  # skip it on this connection; tried again after a reconnect
            return
        self.client.publish(self.tasks_topic, self._body, 1, k)
        self._sent = n
        self.stats["published"] += 1
        self._progress_at = time.ticks_ms()

    def _maybe_resend(self):
        # Everything was published and no ack came for resend_ms: the relay may
        # have missed them (e.g. it had no persistent session). Publish again.
        if self._sent and time.ticks_diff(time.ticks_ms(), self._progress_at) > self.resend_ms:
            if self.outbox.count_upto(self._sent):
                self._sent = 0

    def _connect(self):
        c = self.client
        c.close()
        st = self.stats
        try:
            if self.tls:
                # TLS needs ~20 KB for the handshake on an ESP32: drop the
                # previous context and collect before building the next one.
                c.ssl_context = None
                gc.collect()
                c.ssl_context = self._ssl_context()
            gc.collect()
            c.connect(clean_session=False)
            c.subscribe(self.acks_topic, 1)
        except (MQTTError, OSError) as e:
            self._up_at = None
            st["failed_connects"] += 1
            self._lost(e)
            return False
        st["connects"] += 1
        if st["connects"] > 1:
            st["reconnects"] += 1
        self._up_at = time.ticks_ms()
        self._sent = 0  # publish every pending reading again on this connection
        self._progress_at = time.ticks_ms()
        self.backoff.reset()
        return True

    def _ssl_context(self):
        import tls

        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED  # type: ignore[attr-defined]
        try:
            with open(self.ca, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MQTTError("cannot read CA certificate %s (errno %s)" % (self.ca, e.errno))
        try:
            ctx.load_verify_locations(_der(data))  # tls takes cadata positionally
        except (OSError, ValueError) as e:
            raise MQTTError("bad CA certificate %s: %s" % (self.ca, e))
        return ctx

    def _lost(self, e):
        # A failed connect, or a link that died young, backs off; a link that
        # served for a while (broker restart, keepalive lapse while the app
        # slept) may be reconnected at once.
        self.stats["last_error"] = str(e)
        self.client.close()
        up = self._up_at
        self._up_at = None
        if up is not None and time.ticks_diff(time.ticks_ms(), up) >= _STABLE_MS:
            self.backoff.reset()
        else:
            self.backoff.failed()

    def _on_message(self, topic, msg):
        # Called inside MQTTClient.poll/publish: queue and return.
        if topic == self.acks_topic and len(self._acks) < _MAX_ACKS:
            self._acks.append(msg)

    def _apply_acks(self):
        st = self.stats
        while self._acks:
            msg = self._acks.pop(0)
            try:
                a = _parse_ack(msg)
                nonce = a["nonce"]
                status = a["status"]
            except (ValueError, KeyError, TypeError):
                st["bad_acks"] += 1
                continue
            if status not in _STATUSES or not isinstance(nonce, int):
                st["bad_acks"] += 1
                continue
            try:
                removed = self.outbox.remove(nonce)
            except OutboxError as e:
                st["last_error"] = str(e)
                continue
            if not removed:
                continue  # a second ack of a reading already gone
            self._progress_at = time.ticks_ms()
            if status == "queued":
                st["queued"] += 1
            elif status == "accepted":
                st["acked"] += 1
            else:
                st["rejected"] += 1
                reason = a.get("reason")
                reason = str(reason)[:_REASON_LEN] if reason else "unknown"
                rr = st["rejected_reasons"]
                if reason not in rr and len(rr) >= _MAX_REASONS:
                    reason = "other"
                rr[reason] = rr.get(reason, 0) + 1
