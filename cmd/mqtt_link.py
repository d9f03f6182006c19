"""An asyncio face on paho-mqtt for the simulator, the MQTT benchmark and the tests.

Why paho and a thread: paho-mqtt is the well-kept MQTT 3.1.1 client; its network loop runs in
its own thread (`loop_start`), and we hand its callbacks back to the event loop as futures.

Why no lock of our own: paho calls `on_publish` while holding its message mutex, which
`publish()` also takes; a lock of ours held around `publish()` and taken in the callback
deadlocks under load. So the callback only schedules `_acked(mid)` on the event loop, and since
`publish()` runs on the loop too, the future for a mid is always registered before its
acknowledgement is handled.
"""

from __future__ import annotations

import asyncio
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
        self._pending: dict[int, asyncio.Future[None]] = {}
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
        """Runs in paho's thread (or inside `publish()`), holding paho's mutex: hand over only."""
        self._loop.call_soon_threadsafe(self._acked, mid)

    def _acked(self, mid: int) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> asyncio.Future[None]:
        """Call from the event loop's thread only (see the module docstring)."""
        future: asyncio.Future[None] = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            future.set_exception(RequestFailed(f"MQTT publish failed: {paho.error_string(info.rc)}"))
        else:
            self._pending[info.mid] = future
        return future

    def close(self) -> None:
        """Disconnect and stop the network thread; pending publishes fail."""
        self._client.disconnect()
        self._client.loop_stop()
        pending = list(self._pending.values())
        self._pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(RequestFailed("MQTT connection closed before the broker acknowledged"))
