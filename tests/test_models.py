"""Data models: `model` nodes validate what devices referencing them may send (real App)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from ingest_support import wait_point
from support import free_port

from siot.app import App, ServeConfig
from siot.client import Client
from siot.errors import RequestFailed
from siot.nodes.models import Model, ValueType, compile_model
from siot.points import Point


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    config = ServeConfig(data_dir=tmp_path / "data", nats_port=free_port(), monitor_port=0)
    async with App(config) as running:
        yield running


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    async with await Client.connect(app.context.broker_url, reconnect_forever=False) as c:
        await c.load_root()
        yield c


SOIL_MODEL = [
    Point("description", "soil"),
    Point("valueType", "number", key="humidity"),
    Point("unit", "%", key="humidity"),
    Point("min", 0, key="humidity"),
    Point("max", 100, key="humidity"),
    Point("valueType", "int", key="count"),
    Point("valueType", "bool", key="pump"),
    Point("valueType", "text", key="state"),
]


def test_compile_and_check_rules() -> None:
    model, problems = compile_model("m1", SOIL_MODEL)
    assert problems == []
    assert model.name == "soil" and model.fields["humidity"].unit == "%"
    assert model.fields["count"].value_type is ValueType.INT
    model.check([Point("humidity", 29.5), Point("count", 3), Point("pump", True), Point("state", "ok")])
    cases = [
        (Point("humidity", 150), "field 'value': humidity=150 breaks rule max=100 of model 'soil'"),
        (Point("humidity", -1), "breaks rule min=0"),
        (Point("humidity", "wet"), "breaks rule valueType=number"),
        (Point("humidity", True), "breaks rule valueType=number"),
        (Point("count", 2.5), "breaks rule valueType=int"),
        (Point("pump", 1), "breaks rule valueType=bool"),
        (Point("state", 1), "breaks rule valueType=text"),
        (Point("rain", 1), "field 'type': 'rain' is not a point type of model 'soil'"),
    ]
    for point, message in cases:
        with pytest.raises(ValueError, match="point 1") as info:
            model.check([Point("humidity", 1), point])
        assert message in str(info.value)
    model.check([Point("rain", 1, tombstone=1), Point("description", "x"), Point("model", "soil")])


def test_model_problems_are_reported() -> None:
    _, problems = compile_model(
        "m", [Point("valueType", "float", key="a"), Point("min", 5, key="b"), Point("max", 1, key="b")]
    )
    assert problems == ["a: valueType 'float' is not one of number, int, bool, text", "b: min 5 > max 1"]
    model, _ = compile_model("m", [Point("allowOther", True), Point("recordRejected", False)])
    assert isinstance(model, Model) and model.allow_other and not model.record_rejected


async def test_device_with_model_is_validated_counted_and_rejects_recorded(client: Client) -> None:
    model = await client.create_node(client.root_id, "model", SOIL_MODEL)
    free = await client.create_node(client.root_id, "device")
    device = await client.create_node(client.root_id, "device", [Point("model", model)])
    await client.send_points(device, [Point("humidity", 29.5, time=1)])
    await client.send_points(free, [Point("humidity", 150, time=1), Point("rain", 1, time=1)])
    with pytest.raises(RequestFailed) as info:
        await client.send_points(device, [Point("humidity", 30, time=2), Point("humidity", 150, key="2")])
    assert str(info.value) == "point 1, field 'value': humidity=150 breaks rule max=100 of model 'soil'"
    rejected = await wait_point(client, device, "rejected")
    assert rejected.key == "humidity" and rejected.value["value"] == 150
    assert "max=100" in rejected.value["error"]
    info_node = await client.get_node(device)
    assert info_node.value("humidity") == 29.5  # the whole batch was refused
    assert (await client.stats())["errors"][device] == 1
    # referenced by name works too, and removing the reference lifts the check
    await client.send_points(device, [Point("model", "soil")])
    with pytest.raises(RequestFailed, match="'rain' is not a point type"):
        await client.send_points(device, [Point("rain", 1)])
    await client.send_points(device, [Point("model", "")])
    await client.send_points(device, [Point("rain", 1)])


async def test_model_changes_apply_at_once_and_msgpack_raw_error(client: Client) -> None:
    model = await client.create_node(client.root_id, "model", [*SOIL_MODEL, Point("recordRejected", False)])
    device = await client.create_node(client.root_id, "device", [Point("model", model)])
    await client.send_points(model, [Point("max", 200, key="humidity")])
    await client.send_points(device, [Point("humidity", 150)])
    msg = await client.nc.request(
        f"p.{device}", msgpack.packb([{"type": "humidity", "value": 250}]), timeout=5
    )
    assert "breaks rule max=200" in msgpack.unpackb(msg.data)["error"]
    await client.delete_node(model, client.root_id)
    with pytest.raises(RequestFailed, match=f"references model '{model}', which does not exist"):
        await client.send_points(device, [Point("humidity", 1)])
    assert not any(p.type == "rejected" for p in (await client.get_node(device)).points)


async def test_models_survive_restart(tmp_path: Path) -> None:
    config = ServeConfig(data_dir=tmp_path / "data", nats_port=free_port(), monitor_port=0)
    async with App(config) as app, await Client.connect(app.context.broker_url) as client:
        await client.load_root()
        model = await client.create_node(client.root_id, "model", SOIL_MODEL)
        device = await client.create_node(client.root_id, "device", [Point("model", model)])
    async with App(config) as app, await Client.connect(app.context.broker_url) as client:
        with pytest.raises(RequestFailed, match="max=100"):
            await client.send_points(device, [Point("humidity", 101)])
