"""MQTT and ingest mapping against a real App with nats-server's MQTT listener and a token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ingest_support import wait_children, wait_listening, wait_point
from support import free_port

from siot.app import App, ServeConfig
from siot.client import Client
from siot.cmd.mqtt_link import MqttLink
from siot.errors import RequestFailed
from siot.nodes.ingest import IngestConfig, TimeUnit, map_message, parse_time_ns, topic_filter_to_subjects
from siot.points import Point

TOKEN = "s3cret"


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
    with pytest.raises(ValueError, match=r"refused: 'p' subjects are siot's own"):
        IngestConfig(id="i", parent="p", topic="p/#")
    config = IngestConfig(id="i", parent="p", topic="/pressure/data", deviceField="deviceid", timeField="t")
    [reading] = map_message(config, "/.pressure.data", b'{"deviceid":"W4uk2","pressure":812,"t":5,"x":{}}', 9)
    assert reading.device == "W4uk2"
    assert [(p.type, p.value, p.time) for p in reading.points] == [("pressure", 812, 5 * 10**9)]


def test_nested_objects_flatten_to_point_types() -> None:
    config = IngestConfig(id="i", parent="p", subject="plant", deviceField="meta_id", timeField="meta_t")
    message = {"meta": {"id": "b1", "t": 7}, "env": {"t": 21.5, "air": {"co2": 400}}, "tags": [1, 2]}
    [reading] = map_message(config, "plant", json.dumps(message).encode(), 9)
    assert reading.device == "b1"
    assert [(p.type, p.value, p.time) for p in reading.points] == [
        ("env_t", 21.5, 7 * 10**9),
        ("env_air_co2", 400, 7 * 10**9),
    ]
    mapped = IngestConfig(id="i", parent="p", subject="plant", deviceField="meta_id", field={"env_t": "temp"})
    assert [p.type for p in map_message(mapped, "plant", json.dumps(message).encode(), 9)[0].points] == [
        "temp"
    ]
    with pytest.raises(ValueError, match="'env_t' appears twice"):
        map_message(config, "plant", b'{"meta": {"id": "b1"}, "env_t": 1, "env": {"t": 2}}', 9)


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
    await wait_listening(client, soil)
    await wait_listening(client, pressure)
    soil_msg = {"name": "soilSensor3", "humidity": 29, "timeStampEpoch": 1598536072677}
    await mqtt.publish("sensors/soil3", json.dumps(soil_msg).encode(), qos=1)
    await mqtt.publish(
        "sensors/soil3",
        json.dumps({**soil_msg, "humidity": 30.5, "timeStampEpoch": 1598536073000}).encode(),
        qos=1,
    )
    pmsg = {"pressure": 812, "viscosity": 40, "deviceid": "W4uk2", "sensordatetime": "2020-08-27T13:47:52Z"}
    await mqtt.publish("/pressure/data", json.dumps(pmsg).encode(), qos=0)
    [device] = await wait_children(client, soil, 1)
    p = await wait_point(client, device.id, "humidity", 30.5)  # sent after the device's metadata
    assert p.time == 1598536073000 * 10**6
    device = await client.get_node(device.id)
    assert device.description == "soilSensor3" and device.type == "device"
    assert device.value("tag", "site") == "north"
    history = await client.history(device.id, "humidity")
    assert {h.value for h in history} >= {29, 30.5} and isinstance(history[0].value, int)
    [pdev] = await wait_children(client, pressure, 1)
    point = await wait_point(client, pdev.id, "viscosity")
    assert point.value == 40 and point.time == 1598536072 * 10**9
    assert (await client.get_node(pdev.id)).description == "W4uk2"
    # a bad message becomes an error point on the ingest node, not a crash
    await mqtt.publish("/pressure/data", b'{"pressure": 1}', qos=1)
    await wait_point(client, pressure, "error", where=lambda p: "no device field 'deviceid'" in p.value)
    assert len(await client.children(pressure)) == 1


async def test_deleted_device_stays_deleted_across_restart_until_undeleted(tmp_path: Path) -> None:
    """Over NATS requests the ingest node replies after commit, so no waiting is needed."""
    config = ServeConfig(data_dir=tmp_path / "data", nats_port=free_port(), monitor_port=0)
    boiler = json.dumps({"temp": 80, "env": {"rh": 40}}).encode()
    async with App(config) as app, await Client.connect(app.context.broker_url) as client:
        await client.load_root()
        ingest = await client.create_node(
            client.root_id, "ingest", [Point("subject", "plant.*"), Point("deviceTopicLevel", 1)]
        )
        await wait_listening(client, ingest)
        assert await client.request("plant.boiler", boiler) == {"ok": True}
        [device] = await client.children(ingest)
        assert device.description == "boiler" and device.value("temp") == 80
        assert device.value("env_rh") == 40  # nested objects are flattened with "_"
        await client.delete_node(device.id, ingest)
        with pytest.raises(RequestFailed, match=r"device 'boiler' \(.+\) was deleted; .* \(1 so far\)"):
            await client.request("plant.boiler", boiler)
        await wait_point(client, ingest, "error", where=lambda p: "was deleted" in p.value)
    async with App(config) as app, await Client.connect(app.context.broker_url) as client:
        await wait_listening(client, ingest)  # written by the runner before App returned
        with pytest.raises(RequestFailed, match="was deleted"):
            await client.request("plant.boiler", boiler)
        assert await client.children(ingest) == []
        await client.undelete_node(device.id, ingest)
        assert await client.request("plant.boiler", json.dumps({"temp": 81}).encode()) == {"ok": True}
        [again] = await client.children(ingest, deleted=True)
        assert again.id == device.id and again.value("temp") == 81
