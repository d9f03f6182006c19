"""MQTT and ingest mapping against a real App with nats-server's MQTT listener and a token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from support import free_port

from siot.app import App, ServeConfig
from siot.client import Client, NodeInfo
from siot.cmd.mqtt_link import MqttLink
from siot.errors import RequestFailed
from siot.nodes.ingest import IngestConfig, TimeUnit, map_message, parse_time_ns, topic_filter_to_subjects
from siot.points import Point

TOKEN = "s3cret"
T = TypeVar("T")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    config = ServeConfig(
        data_dir=tmp_path / "data",
        nats_port=free_port(),
        monitor_port=0,
        mqtt_port=free_port(),
        auth_token=TOKEN,
    )
    async with App(config) as running:
        yield running


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    async with await Client.connect(app.context.broker_url, token=TOKEN, reconnect_forever=False) as c:
        await c.load_root()
        yield c


@pytest.fixture
async def mqtt(app: App) -> AsyncIterator[MqttLink]:
    link = await MqttLink.connect(port=app.config.mqtt_port, client_id="test-device", token=TOKEN)
    yield link
    link.close()


async def until(client: Client, node: str, check: Callable[[], Awaitable[T | None]]) -> T:
    """Re-check after every committed change under `node` until `check` gives a value."""
    async with client.changes(node) as changes, asyncio.timeout(10):
        while (result := await check()) is None:
            await changes.get()
        return result


async def wait_children(client: Client, parent: str, count: int) -> list[NodeInfo]:
    async def check() -> list[NodeInfo] | None:
        kids = await client.children(parent)
        return kids if len(kids) >= count else None

    return await until(client, parent, check)


async def wait_point(client: Client, node: str, ptype: str, value: object = None) -> Point:
    async def check() -> Point | None:
        for p in (await client.get_node(node)).points:
            if p.type == ptype and (value is None or p.value == value):
                return p
        return None

    return await until(client, node, check)


def test_topic_filters_and_times() -> None:
    assert topic_filter_to_subjects("sensors/#") == ["sensors.>", "sensors"]
    assert topic_filter_to_subjects("/pressure/data") == ["/.pressure.data"]
    assert topic_filter_to_subjects("a/+/v1.2") == ["a.*.v1//2"]
    assert parse_time_ns(1598536072677, TimeUnit.AUTO) == 1598536072677 * 10**6
    assert parse_time_ns(1598536072, TimeUnit.AUTO) == 1598536072 * 10**9
    assert parse_time_ns("2020-08-27T13:47:52.5Z", TimeUnit.AUTO) == 1598536072500000000
    assert parse_time_ns("2020-08-27 13:47:52", TimeUnit.AUTO) == 1598536072 * 10**9
    with pytest.raises(ValueError, match="set exactly one"):
        IngestConfig(id="i", parent="p")
    with pytest.raises(ValueError, match="overlaps siot's own subjects"):
        IngestConfig(id="i", parent="p", topic="p/#")
    config = IngestConfig(id="i", parent="p", topic="/pressure/data", deviceField="deviceid", timeField="t")
    [reading] = map_message(config, "/.pressure.data", b'{"deviceid":"W4uk2","pressure":812,"t":5,"x":{}}', 9)
    assert reading.device == "W4uk2"
    assert [(p.type, p.value, p.time) for p in reading.points] == [("pressure", 812, 5 * 10**9)]


async def test_mqtt_p_topic_qos0_and_qos1_with_token(app: App, client: Client, mqtt: MqttLink) -> None:
    node = await client.create_node(client.root_id, "device")
    await mqtt.publish(f"p/{node}", json.dumps([{"type": "a", "value": 1}]).encode(), qos=1)
    await mqtt.publish(f"p/{node}", json.dumps({"type": "b", "value": 2.5}).encode(), qos=0)
    assert (await wait_point(client, node, "a")).value == 1
    assert (await wait_point(client, node, "b")).value == 2.5
    with pytest.raises(RequestFailed, match="refused"):
        await MqttLink.connect(port=app.config.mqtt_port, client_id="intruder", token="wrong")


async def test_ingest_seed_payloads_create_devices_once(app: App, client: Client, mqtt: MqttLink) -> None:
    soil = await client.create_node(
        client.root_id,
        "ingest",
        [
            Point("topic", "sensors/#"),
            Point("deviceField", "name"),
            Point("timeField", "timeStampEpoch"),
            Point("tag", "north", key="site"),
        ],
    )
    pressure = await client.create_node(
        client.root_id,
        "ingest",
        [
            Point("topic", "/pressure/data"),
            Point("deviceField", "deviceid"),
            Point("timeField", "sensordatetime"),
        ],
    )
    await asyncio.sleep(0)  # the manager starts runners from the change feed
    await wait_point(client, soil, "topic")
    soil_msg = {"name": "soilSensor3", "humidity": 29, "timeStampEpoch": 1598536072677}
    async with asyncio.timeout(10):
        while not (await client.children(soil)):
            await mqtt.publish("sensors/soil3", json.dumps(soil_msg).encode(), qos=1)
            await asyncio.sleep(0.05)
    await mqtt.publish(
        "sensors/soil3",
        json.dumps({**soil_msg, "humidity": 30.5, "timeStampEpoch": 1598536073000}).encode(),
        qos=1,
    )
    pmsg = {"pressure": 812, "viscosity": 40, "deviceid": "W4uk2", "sensordatetime": "2020-08-27T13:47:52Z"}
    async with asyncio.timeout(10):
        while not (await client.children(pressure)):
            await mqtt.publish("/pressure/data", json.dumps(pmsg).encode(), qos=0)
            await asyncio.sleep(0.05)
    [device] = await wait_children(client, soil, 1)
    assert device.description == "soilSensor3" and device.type == "device"
    assert device.value("tag", "site") == "north"
    p = await wait_point(client, device.id, "humidity", 30.5)
    assert p.time == 1598536073000 * 10**6
    history = await client.history(device.id, "humidity")
    assert {h.value for h in history} >= {29, 30.5} and isinstance(history[0].value, int)
    [pdev] = await wait_children(client, pressure, 1)
    assert pdev.description == "W4uk2"
    point = await wait_point(client, pdev.id, "viscosity")
    assert point.value == 40 and point.time == 1598536072 * 10**9
    # a bad message becomes an error point on the ingest node, not a crash
    await mqtt.publish("/pressure/data", b'{"pressure": 1}', qos=1)
    error = await wait_point(client, pressure, "error")
    assert "no device field 'deviceid'" in error.value
    assert len(await client.children(pressure)) == 1


async def test_ingest_over_nats_replies_after_commit_and_survives_restart(tmp_path: Path) -> None:
    config = ServeConfig(data_dir=tmp_path / "data", nats_port=free_port(), monitor_port=0)
    for attempt in range(2):
        async with App(config) as app, await Client.connect(app.context.broker_url) as client:
            await client.load_root()
            if attempt == 0:
                ingest = await client.create_node(
                    client.root_id, "ingest", [Point("subject", "plant.*"), Point("deviceTopicLevel", 1)]
                )
            async with asyncio.timeout(10):
                while True:
                    try:
                        reply = await client.request(
                            "plant.boiler", json.dumps({"temp": 80 + attempt}).encode()
                        )
                        break
                    except RequestFailed:  # the runner is not subscribed yet
                        await asyncio.sleep(0.05)
            assert reply == {"ok": True}
            [device] = await client.children(ingest)
            assert device.description == "boiler" and device.value("temp") == 80 + attempt
