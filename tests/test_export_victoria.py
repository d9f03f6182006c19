"""The `db` exporter's InfluxDB 2.x write path (`/api/v2/write?org=&bucket=`, a token) against a
real VictoriaMetrics (Debian's `victoria-metrics`), which takes the same line protocol: each
measurement/field pair becomes a metric (`pressure_value`), the tags its labels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from export_support import DEVICE_TAGS, GROUP_TAGS, seed_tree, until
from support import serve_config

from siot.app import App
from siot.client import Client
from siot.cmd.tsdb_servers import VictoriaMetricsServer
from siot.points import Point

NS = 1_000_000_000


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetricsServer]:
    with VictoriaMetricsServer(tmp_path / "victoria-metrics") as server:
        yield server


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    async with App(serve_config(tmp_path)) as app:
        assert app.context is not None
        async with await Client.connect(app.context.broker_url) as c:
            await c.load_root()
            yield c


async def test_v2_write_path_reaches_victoria_metrics(
    victoria: VictoriaMetricsServer, client: Client
) -> None:
    seed = await seed_tree(client, client.root_id)
    points = {"url": victoria.url, "org": "plant", "bucket": "telemetry", "token": "t0ken", "batchWait": 0.05}
    db = await client.create_node(client.root_id, "db", [Point(k, v) for k, v in points.items()])
    t0 = (time.time_ns() - 60 * NS) // 1_000_000 * 1_000_000  # VictoriaMetrics keeps ms
    await client.send_points(
        seed.device,
        [Point("pressure", 812.5 + i, time=t0 + i * NS) for i in range(5)]
        + [Point("viscosity", 1450, time=t0)],
    )

    async def series(match: str, samples: int) -> list[dict[str, Any]] | None:
        found = await asyncio.to_thread(victoria.export, match)
        return found if sum(len(s["values"]) for s in found) == samples else None

    [pressure] = await until(lambda: series("pressure_value", 5))
    assert pressure["values"] == [812.5 + i for i in range(5)]
    assert pressure["timestamps"] == [(t0 + i * NS) // 1_000_000 for i in range(5)]
    labels = pressure["metric"]
    assert {name: labels[name] for name in {**GROUP_TAGS, **DEVICE_TAGS}} == {**GROUP_TAGS, **DEVICE_TAGS}
    assert labels["id"] == seed.device and labels["nodeType"] == "device" and labels["key"] == "0"
    [viscosity] = await until(lambda: series("viscosity_valueInt", 1))
    assert viscosity["values"] == [1450]
    stats = (await client.stats())["export"][db]
    assert stats["state"] == "ok" and stats["exportedLines"] >= 6
