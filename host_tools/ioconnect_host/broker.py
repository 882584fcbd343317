"""An MQTT broker for the demo and for development: mosquitto when it is
installed, else an embedded one (amqtt, in this process), or none when the user
names their own.

mosquitto is preferred: MQTT 5 (the relay's shared subscription), persistence,
and the broker most deployments run. amqtt speaks MQTT 3.1.1 only, so a relay
on it uses ``mqtt_version="3.1.1"``.

Example:
    >>> with start_broker("auto") as broker:
    ...     broker.url, broker.mqtt_version
    ('mqtt://127.0.0.1:41213', '5')
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import IoconnectError

__all__ = ["BrokerError", "RunningBroker", "start_broker"]

BrokerKind = Literal["auto", "mosquitto", "embedded"]


class BrokerError(IoconnectError):
    """No broker could be started."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, timeout_s: float, alive: Any = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class RunningBroker:
    """A broker this process started; ``stop()`` ends it."""

    kind: Literal["mosquitto", "embedded"]
    port: int
    mqtt_version: Literal["5", "3.1.1"]
    _stop: Any = field(repr=False, default=None)
    _restart: Any = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def restart(self, down_s: float = 1.0) -> None:
        """Stop the broker, wait ``down_s``, start it again on the same port
        (mosquitto keeps its persistence folder: sessions and queued messages)."""
        if self._restart is None:
            raise BrokerError("this broker was stopped")
        self._restart(down_s)

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(kind: BrokerKind = "auto", *, port: int = 0) -> RunningBroker:
    """Start a broker on 127.0.0.1 (``port`` 0: a free one).

    Raises:
        BrokerError: mosquitto asked for but missing, or nothing starts.
    """
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    port = port or _free_port()
    if kind == "mosquitto" or (kind == "auto" and mosquitto):
        if not mosquitto:
            raise BrokerError("mosquitto is not installed", hint="apt-get install mosquitto")
        return _start_mosquitto(mosquitto, port)
    return _start_embedded(port)


def _start_mosquitto(binary: str, port: int) -> RunningBroker:
    folder = Path(tempfile.mkdtemp(prefix="ioconnect-mosquitto-"))
    conf = folder / "mosquitto.conf"
    conf.write_text(
        # Run as whoever we are: as root, mosquitto would switch to user "mosquitto",
        # which cannot write its persistence file into our private folder.
        f"user {getpass.getuser()}\n"
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {folder}/\n"
        "max_queued_messages 100000\nlog_dest none\n"
    )
    procs: list[subprocess.Popen[bytes]] = []

    def launch() -> None:
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        procs[:] = [proc]
        if not _wait_listening(port, 10, alive=lambda: proc.poll() is None):
            proc.kill()
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise BrokerError(f"mosquitto did not start on port {port}: {err or 'no output'}")

    def end() -> None:
        for proc in procs:
            proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop() -> None:
        end()
        shutil.rmtree(folder, ignore_errors=True)

    def restart(down_s: float) -> None:
        end()
        time.sleep(down_s)
        launch()

    launch()
    return RunningBroker("mosquitto", port, "5", stop, restart)


def _start_embedded(port: int) -> RunningBroker:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise BrokerError(
            "no MQTT broker: mosquitto is not installed and amqtt is missing",
            hint="pip install amqtt, or apt-get install mosquitto, or pass --broker URL",
        ) from None
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failed: list[BaseException] = []
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            broker = Broker(config, loop=loop)
            holder["broker"] = broker
            loop.run_until_complete(broker.start())
        except BaseException as exc:  # reported to the caller below
            failed.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="embedded-mqtt-broker", daemon=True)
    thread.start()
    started.wait(15)
    if failed or not _wait_listening(port, 5):
        why = repr(failed[0]) if failed else "not listening"
        raise BrokerError(f"the embedded MQTT broker did not start on port {port}: {why}")

    def stop() -> None:
        fut = asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop)
        try:
            fut.result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    def restart(down_s: float) -> None:
        # amqtt keeps nothing across a restart: a new broker on the same port.
        stop()
        time.sleep(down_s)
        fresh = _start_embedded(port)
        running._stop, running._restart = fresh._stop, fresh._restart

    running = RunningBroker("embedded", port, "3.1.1", stop, restart)
    return running
