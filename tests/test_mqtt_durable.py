"""MQTT QoS 1 through an ingest node: a PUBACK means the reading is kept, even when `siot serve`
is SIGKILLed right after the last one (nats-server holds QoS 1 messages in its `$MQTT_msgs`
stream until the ingest node acks them after commit; nodes/ingest/durable.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import nats.js.errors
import pytest
from ingest_support import wait_children, wait_listening, wait_point
from support import SiotProcess, free_port, wait_port_free

from siot.app import App, ServeConfig
from siot.client import Client
from siot.cmd.mqtt_link import MqttLink
from siot.nodes.ingest.durable import MQTT_STREAM, consumer_name
from siot.points import Point

T = TypeVar("T")
READINGS = 3_000
DEVICES = 10
LINKS = 4
BASE_MS = 1_700_000_000_000
ACK_WAIT_S = 2  # the redelivery delay after the restart: short, so the test is quick
WAIT_S = 60.0


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float = 15.0) -> T:
    """Poll `check` until it gives a value (for state outside the change feed: JetStream)."""
    deadline = time.monotonic() + timeout_s
    while (result := await check()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)
    return result


async def publish_readings(port: int, topic: str, count: int, first: int = 0) -> dict[str, set[int]]:
    """`count` QoS 1 readings `{"name", "t", "v"}` (v = first, first + 1, ...) over LINKS
    connections; returns, per device, the values whose PUBACK came back (all, or it fails)."""
    links = [await MqttLink.connect(port=port, client_id=f"durable-dev-{i}") for i in range(LINKS)]
    try:
        sent: list[tuple[str, int, asyncio.Future[None]]] = []
        for k in range(first, first + count):
            device = f"d{k % DEVICES}"
            payload = json.dumps({"name": device, "t": BASE_MS + k, "v": k}).encode()
            sent.append((device, k, links[k % LINKS].publish(f"{topic}/{device}", payload, qos=1)))
        await asyncio.gather(*(f for _, _, f in sent))
    finally:
        for link in links:
            link.close()
    acked: dict[str, set[int]] = {}
    for device, value, _ in sent:
        acked.setdefault(device, set()).add(value)
    return acked


async def held(nc: nats.NATS, ingest: str) -> int:
    """Messages the broker holds for the ingest node: not yet delivered, or not yet acked."""
    info = await nc.jetstream().consumer_info(MQTT_STREAM, consumer_name(ingest))
    return info.num_pending + info.num_ack_pending


async def history_values(client: Client, ingest: str) -> dict[str, list[int]]:
    return {
        child.description: [p.value for p in await client.history(child.id, "v", limit=100_000)]
        for child in await client.children(ingest)
    }


async def test_puback_means_stored_across_sigkill(tmp_path: Path) -> None:
    mqtt_port = free_port()
    proc = SiotProcess(tmp_path / "data", extra_args=["--mqtt-port", str(mqtt_port)])
    await asyncio.to_thread(proc.start)
    topic = "durable"
    try:
        async with await Client.connect(proc.url, reconnect_forever=False) as client:
            await client.load_root()
            ingest = await client.create_node(
                client.root_id,
                "ingest",
                [
                    Point("topic", f"{topic}/+"),
                    Point("deviceField", "name"),
                    Point("timeField", "t"),
                    Point("field", "v", key="v"),
                    Point("ackWait", ACK_WAIT_S),
                ],
            )
            await wait_listening(client, ingest)
        nc = await nats.connect(proc.url, allow_reconnect=False)
        try:
            acked = await publish_readings(mqtt_port, topic, READINGS // 2)
            # siot stopped (the broker is a process of its own and keeps taking readings): the
            # second half is PUBACKed while siot cannot have stored it, so the kill below
            # happens with readings held for siot, whatever the speed of this machine
            assert proc.proc is not None
            os.kill(proc.proc.pid, signal.SIGSTOP)
            later = await publish_readings(mqtt_port, topic, READINGS - READINGS // 2, first=READINGS // 2)
            for device, values in later.items():
                acked.setdefault(device, set()).update(values)
            held_at_kill = await held(nc, ingest)
            proc.kill()
        finally:
            await nc.close()
        assert held_at_kill > 0, "every reading was committed before the kill; raise READINGS"
        await asyncio.to_thread(wait_port_free, mqtt_port)

        await asyncio.to_thread(proc.start)  # same data dir and ports
        async with await Client.connect(proc.url, reconnect_forever=False) as client:
            await client.load_root()
            expected = {device: sorted(values) for device, values in acked.items()}

            async def all_stored() -> dict[str, list[int]] | None:
                found = await history_values(client, ingest)
                return found if {d: sorted(v) for d, v in found.items()} == expected else None

            try:
                found = await eventually(all_stored, timeout_s=WAIT_S)
            except TimeoutError:
                found = await history_values(client, ingest)
                lost = sum(len(set(v) - set(found.get(d, []))) for d, v in expected.items())
                pytest.fail(
                    f"{lost} of {READINGS} acknowledged readings lost ({held_at_kill} held at the kill)"
                )
            # each reading once: a redelivered message is the identical point, not a second one
            assert all(len(values) == len(set(values)) for values in found.values())
            assert await eventually(lambda: _zero_or_none(held(client.nc, ingest))) == 0
    finally:
        await asyncio.to_thread(proc.stop)


async def _zero_or_none(count: Awaitable[int]) -> int | None:
    return 0 if await count == 0 else None


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    config = ServeConfig(
        data_dir=tmp_path / "data", nats_port=free_port(), monitor_port=0, mqtt_port=free_port()
    )
    async with App(config) as running:
        yield running


async def test_consumer_follows_the_node(app: App) -> None:
    """The consumer is made with the node, follows its filter, goes with `durable=0`, `disabled`
    and deletion; QoS 0, plain NATS and refused messages are each taken once either way."""
    async with await Client.connect(app.context.broker_url, reconnect_forever=False) as client:
        await client.load_root()
        js = client.nc.jetstream()

        async def filters(ingest: str) -> list[str] | None:
            try:
                info = await js.consumer_info(MQTT_STREAM, consumer_name(ingest))
            except nats.js.errors.NotFoundError:
                return None
            return sorted(info.config.filter_subjects or [])

        async def gone(ingest: str) -> bool | None:
            return True if await filters(ingest) is None else None

        ingest = await client.create_node(
            client.root_id,
            "ingest",
            [Point("topic", "life/+"), Point("deviceField", "name"), Point("timeField", "t")],
        )
        await wait_listening(client, ingest)
        assert await filters(ingest) == ["$MQTT.msgs.life.*"]
        link = await MqttLink.connect(port=app.config.mqtt_port, client_id="life-dev")
        try:
            await link.publish("life/a", b'{"name": "a", "t": 1, "x": 1}', qos=1)
            await link.publish("life/a", b'{"name": "a", "t": 2, "x": 2}', qos=0)
            await client.nc.publish("life.a", b'{"name": "a", "t": 3, "x": 3}')
            await link.publish("life/a", b"not json", qos=1)
            [device] = await wait_children(client, ingest, 1)
            await wait_point(client, device.id, "x", 3)
            await wait_point(client, ingest, "error", where=lambda p: "life.a" in p.value)
            assert await eventually(lambda: _zero_or_none(held(client.nc, ingest))) == 0  # refused = acked

            await client.send_points(ingest, [Point("topic", "life/#")])
            want = ["$MQTT.msgs.life", "$MQTT.msgs.life.>"]
            await eventually(lambda: _equal_or_none(filters(ingest), want))

            await client.send_points(ingest, [Point("durable", 0)])
            await eventually(lambda: gone(ingest))
            await link.publish("life/a", b'{"name": "a", "t": 4, "x": 4}', qos=1)  # the broker's PUBACK
            await wait_point(client, device.id, "x", 4)

            await client.send_points(ingest, [Point("durable", 1)])
            await eventually(lambda: filters(ingest))
            await link.publish("life/a", b'{"name": "a", "t": 5, "x": 5}', qos=1)
            await wait_point(client, device.id, "x", 5)
            history = await client.history(device.id, "x")
            assert sorted(p.value for p in history) == [1, 2, 3, 4, 5]  # each message once

            await client.send_points(ingest, [Point("disabled", 1)])
            await eventually(lambda: gone(ingest))
            await client.send_points(ingest, [Point("disabled", 0)])
            await eventually(lambda: filters(ingest))

            await client.delete_node(ingest, client.root_id)
            await eventually(lambda: gone(ingest))
        finally:
            link.close()


async def _equal_or_none(value: Awaitable[T], want: T) -> T | None:
    got = await value
    return got if got == want else None
