"""An asyncio face on paho-mqtt for the simulator, the MQTT benchmark and the tests.

Why paho and a thread: paho-mqtt is the well-kept MQTT 3.1.1 client; its network loop runs in
its own thread (`loop_start`), and we hand its callbacks back to the event loop as futures.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import paho.mqtt.client as paho

from siot.errors import RequestFailed

DEFAULT_MQTT_HOST = "127.0.0.1"
DEFAULT_MQTT_PORT = 1883
CONNECT_TIMEOUT_S = 10.0
MAX_INFLIGHT = 1_000


class MqttLink:
    """One MQTT connection. `await MqttLink.connect(...)` returns when the broker accepted it
    (else raises `RequestFailed` with the broker's reason); `publish` returns a future that
    resolves when the message is out (QoS 0) or acknowledged by the broker (QoS 1)."""

    def __init__(self, client_id: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._lock = threading.RLock()  # paho may call on_publish from inside publish()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._early: set[int] = set()  # acked before publish() returned its mid to us
        self._connected: asyncio.Future[str] = self._loop.create_future()
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish

    @classmethod
    async def connect(
        cls, host: str = DEFAULT_MQTT_HOST, port: int = DEFAULT_MQTT_PORT, *, client_id: str, token: str = ""
    ) -> MqttLink:
        link = cls(client_id)
        if token:
            link._client.username_pw_set("siot", token)  # nats-server takes the token as password
        try:
            await asyncio.to_thread(link._client.connect, host, port)
        except OSError as exc:
            raise RequestFailed(f"cannot reach the MQTT listener at {host}:{port}: {exc}") from exc
        link._client.loop_start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reason = await link._connected
        except TimeoutError:
            link.close()
            raise RequestFailed(f"MQTT broker at {host}:{port} did not answer CONNECT") from None
        if reason != "Success":
            link.close()
            raise RequestFailed(f"MQTT broker at {host}:{port} refused the connection: {reason}")
        return link

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not self._connected.done():
            self._loop.call_soon_threadsafe(self._set_connected, str(reason))

    def _set_connected(self, reason: str) -> None:
        if not self._connected.done():
            self._connected.set_result(reason)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early.add(mid)
                return
        self._loop.call_soon_threadsafe(_resolve, future)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        with self._lock:
            info = self._client.publish(topic, payload, qos=qos)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                future.set_exception(RequestFailed(f"MQTT publish failed: {paho.error_string(info.rc)}"))
            elif info.mid in self._early:
                self._early.discard(info.mid)
                future.set_result(None)
            else:
                self._pending[info.mid] = future
        return future

    def close(self) -> None:
        """Disconnect and stop the network thread; pending publishes fail."""
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(RequestFailed("MQTT connection closed before the broker acknowledged"))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
