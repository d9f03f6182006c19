"""The `db` exporter against a real InfluxDB 1.x (Debian's `influxd`, started here on free loopback
ports with its own data directory): the seed's tags and fields read back with InfluxQL, an outage
of InfluxDB and a SIGKILL of siot without loss or duplicates, bad lines reported without
blocking the rest, filters, `disabled`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from export_support import (
    DATABASE,
    DEVICE_TAGS,
    GROUP_TAGS,
    db_points,
    influx_rows,
    node_value,
    seed_tree,
    until,
    wait_rows,
)
from support import SiotProcess, connected, running, serve_config

from siot.app import App
from siot.client import Client
from siot.cmd.tsdb_servers import InfluxServer, http
from siot.points import Point

NS = 1_000_000_000
PASSWORD = "pa55-not-for-logs"
DASHBOARD_JSON = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with App(serve_config(tmp_path)) as running:
        yield running


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    assert app.context is not None
    async with await Client.connect(app.context.broker_url) as c:
        await c.load_root()
        yield c


async def test_seed_values_arrive_with_device_and_group_metadata(
    influx: InfluxServer, client: Client
) -> None:
    seed = await seed_tree(client, client.root_id)
    db = await client.create_node(client.root_id, "db", db_points(influx.url))
    t0 = time.time_ns() - 60 * NS
    await client.send_points(
        seed.device,
        [
            Point("pressure", 812.5, time=t0),
            Point("pressure", 813.25, time=t0 + NS),
            Point("viscosity", 1450, time=t0),  # an int stays an int
            Point("valveOpen", True, time=t0),
            Point("state", "filling", time=t0),
            Point("pressure", 2.5, key="inlet", time=t0),
        ],
    )
    rows = await wait_rows(influx, 'SELECT * FROM "pressure" WHERE "key" = \'0\'', 2)
    metadata = {**GROUP_TAGS, **DEVICE_TAGS}
    for row, expected_value, expected_time in zip(rows, (812.5, 813.25), (t0, t0 + NS), strict=True):
        assert row["value"] == expected_value and row["time"] == expected_time
        assert {name: row[name] for name in metadata} == metadata
        assert row["id"] == seed.device
        assert row["description"] == "PV sensor, tank 2"
        assert row["nodeType"] == "device"
    [viscosity] = await wait_rows(influx, 'SELECT "valueInt", "family", "component_id" FROM "viscosity"', 1)
    assert viscosity["valueInt"] == 1450 and viscosity["family"] == "PV-200"
    assert viscosity["component_id"] == "C-1042"
    fields = await asyncio.to_thread(influx.query, 'SHOW FIELD KEYS FROM "viscosity"', DATABASE)
    assert fields[0]["values"] == [["valueInt", "integer"]]
    [valve] = await wait_rows(influx, 'SELECT "valueBool" FROM "valveOpen"', 1)
    assert valve["valueBool"] is True
    [state] = await wait_rows(influx, 'SELECT "valueText" FROM "state"', 1)
    assert state["valueText"] == "filling"
    [inlet] = await wait_rows(influx, 'SELECT * FROM "pressure" WHERE "key" = \'inlet\'', 1)
    assert inlet["value"] == 2.5
    # The seed's dashboard query: by the group's metadata, grouped by the device's.
    grouped = await influx_rows(
        influx,
        'SELECT last("value") FROM "pressure" WHERE "manufacturer" = \'Acme Instruments\' '
        'AND "key" = \'0\' GROUP BY "component_id"',
    )
    assert [(r["component_id"], r["last"]) for r in grouped] == [("C-1042", 813.25)]
    # The exporter's own points (url, database) and the group's description are not values of
    # the subtree's devices, but the db node itself is never exported.
    assert not await influx_rows(influx, 'SELECT * FROM "url"')
    assert (await client.stats())["export"][db]["state"] == "ok"


async def test_tag_changes_apply_to_later_values(influx: InfluxServer, client: Client) -> None:
    seed = await seed_tree(client, client.root_id)
    await client.create_node(client.root_id, "db", db_points(influx.url))
    t0 = time.time_ns() - 60 * NS
    await client.send_points(seed.device, [Point("pressure", 1.0, time=t0)])
    await wait_rows(influx, 'SELECT * FROM "pressure"', 1)
    # The device overrides the group's family; a new calibration date is set.
    await client.send_points(
        seed.device,
        [Point("tag", "PV-210", key="family"), Point("tag", "2025-01-15", key="calibration_date")],
    )
    await client.send_points(seed.device, [Point("pressure", 2.0, time=t0 + NS)])
    rows = await wait_rows(influx, 'SELECT "value", "family", "calibration_date" FROM "pressure"', 2)
    assert [(r["value"], r["family"], r["calibration_date"]) for r in rows] == [
        (1.0, "PV-200", "2024-03-01"),
        (2.0, "PV-210", "2025-01-15"),
    ]


async def test_outage_of_influxdb_loses_nothing_and_duplicates_nothing(
    influx: InfluxServer, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    seed = await seed_tree(client, client.root_id)
    # influxd here has no auth: it ignores the credentials, which must still never be shown.
    db = await client.create_node(
        client.root_id, "db", db_points(influx.url, user="writer", password=PASSWORD)
    )
    t0 = time.time_ns() - 3600 * NS
    await client.send_points(seed.device, [Point("pressure", float(i), time=t0 + i) for i in range(100)])
    await wait_rows(influx, 'SELECT * FROM "pressure"', 100)
    await asyncio.to_thread(influx.stop)
    # Written while InfluxDB is down: in several commits, some of them old readings.
    for batch in range(10):
        points = [Point("pressure", float(i), time=t0 + i) for i in range(100 + batch * 50, 150 + batch * 50)]
        await client.send_points(seed.device, points)
    error = await until(lambda: node_value(client, db, "error"))
    assert "cannot write to" in error and "nothing is lost" in error
    stats = (await client.stats())["export"][db]
    assert stats["state"] == "failing" and stats["lagRows"] > 0
    await asyncio.to_thread(influx.start)
    rows = await wait_rows(influx, 'SELECT * FROM "pressure"', 600)
    assert sorted(r["value"] for r in rows) == [float(i) for i in range(600)]
    # Recovered: the outage's error point is deleted, the lag is gone.
    await until(lambda: _no_error(client, db))
    stats = (await client.stats())["export"][db]
    assert stats["state"] == "ok" and stats["failedRequests"] >= 1
    await asyncio.sleep(0.5)  # nothing more arrives: no duplicates
    assert len(await influx_rows(influx, 'SELECT * FROM "pressure"')) == 600
    assert PASSWORD not in caplog.text and PASSWORD not in error


async def _no_error(client: Client, node: str) -> bool:
    return await node_value(client, node, "error") is None


async def test_bad_lines_are_reported_and_the_rest_goes_on(influx: InfluxServer, client: Client) -> None:
    seed = await seed_tree(client, client.root_id)
    t0 = time.time_ns() - 60 * NS
    # Someone else wrote `temperature` with a string `value` (in the same shard, where InfluxDB
    # 1.x keeps field types): our float `value` conflicts with it.
    line = f'temperature,id=other value="warm" {t0 - 1}'.encode()
    status, body = await asyncio.to_thread(http, "POST", f"{influx.url}/write?db={DATABASE}", line)
    assert status == 204, body
    db = await client.create_node(client.root_id, "db", db_points(influx.url))
    await client.send_points(
        seed.device, [Point("temperature", 21.5, time=t0), Point("pressure", 900.0, time=t0)]
    )
    error = await until(lambda: node_value(client, db, "error"))
    assert "field type conflict" in error
    # The rest of that request was written, and later batches go on.
    await wait_rows(influx, 'SELECT * FROM "pressure"', 1)
    await client.send_points(seed.device, [Point("pressure", 901.0, time=t0 + NS)])
    await wait_rows(influx, 'SELECT * FROM "pressure"', 2)
    stats = (await client.stats())["export"][db]
    assert stats["rejectedRequests"] == 1 and stats["state"] == "ok"


async def test_filters_and_disabled(influx: InfluxServer, client: Client) -> None:
    seed = await seed_tree(client, client.root_id)
    other = await client.create_node(client.root_id, "pump", [Point("description", "pump 1")])
    db = await client.create_node(
        client.root_id, "db", db_points(influx.url, nodeTypes="device", pointTypes="pressure, viscosity")
    )
    t0 = time.time_ns() - 60 * NS
    await client.send_points(seed.device, [Point("pressure", 1.0, time=t0), Point("flow", 3.0, time=t0)])
    await client.send_points(other, [Point("pressure", 5.0, time=t0)])
    await client.send_points(seed.device, [Point("viscosity", 2.0, time=t0)])
    await wait_rows(influx, 'SELECT * FROM "viscosity"', 1)
    assert [r["id"] for r in await influx_rows(influx, 'SELECT * FROM "pressure"')] == [seed.device]
    assert not await influx_rows(influx, 'SELECT * FROM "flow"')
    # Disabled: nothing is written, the cursor waits; enabled again, the backlog goes out.
    await client.send_points(db, [Point("disabled", True)])
    await until(lambda: _state(client, db, "disabled"))
    await client.send_points(seed.device, [Point("pressure", 2.0, time=t0 + NS)])
    await asyncio.sleep(0.5)
    assert len(await influx_rows(influx, 'SELECT * FROM "pressure"')) == 1
    await client.send_points(db, [Point("disabled", False)])
    await wait_rows(influx, 'SELECT * FROM "pressure"', 2)


async def _state(client: Client, db: str, state: str) -> bool:
    return (await client.stats())["export"].get(db, {}).get("state") == state


def test_siot_killed_mid_export_resumes_without_loss(influx: InfluxServer, tmp_path: Path) -> None:
    """SIGKILL while the exporter is behind (small batches), then a restart: every value arrives
    once. Readings are written before the db node exists, so the export is the only thing going
    on when siot is killed."""
    proc = SiotProcess(data_dir=tmp_path / "siot").start()
    try:
        asyncio.run(_kill_mid_export(proc, influx))
        proc.start()
        asyncio.run(_all_arrive(influx))
    finally:
        proc.stop()


COUNT = 20_000


async def _kill_mid_export(proc: SiotProcess, influx: InfluxServer) -> None:
    async with connected(proc) as client:
        seed = await seed_tree(client, client.root_id)
        t0 = time.time_ns() - 3600 * NS
        for start in range(0, COUNT, 1000):
            points = [Point("pressure", float(i), time=t0 + i) for i in range(start, start + 1000)]
            await client.send_points(seed.device, points)
        db = await client.create_node(client.root_id, "db", db_points(influx.url, batchLines=200))

        async def some_exported() -> bool:
            return (await client.stats())["export"].get(db, {}).get("exportedLines", 0) >= 2_000

        await until(some_exported)
    proc.kill()
    rows = await influx_rows(influx, 'SELECT COUNT("value") FROM "pressure"')
    assert 0 < rows[0]["count"] < COUNT, "the kill came after the export had finished: nothing tested"


async def _all_arrive(influx: InfluxServer) -> None:
    rows = await wait_rows(influx, 'SELECT "value" FROM "pressure"', COUNT, timeout_s=120)
    assert sorted(r["value"] for r in rows) == [float(i) for i in range(COUNT)]


async def test_the_grafana_dashboard_queries_the_seed_data(influx: InfluxServer, client: Client) -> None:
    """docs/export.md's dashboard: valid JSON whose variable and panel queries (with Grafana's
    macros filled in as Grafana would) return the seed's exported pressure and viscosity."""
    seed = await seed_tree(client, client.root_id)
    await client.create_node(client.root_id, "db", db_points(influx.url))
    t0 = time.time_ns() - 600 * NS
    await client.send_points(
        seed.device,
        [Point("pressure", 800.0 + i, time=t0 + i * NS) for i in range(10)]
        + [Point("viscosity", 1400 + i, time=t0 + i * NS) for i in range(10)],
    )
    await wait_rows(influx, 'SELECT * FROM "viscosity"', 10)
    text = (Path(__file__).resolve().parent.parent / "docs" / "export.md").read_text()
    dashboard = json.loads(DASHBOARD_JSON.search(text).group(1))  # type: ignore[union-attr]
    macros = {
        "$manufacturer": GROUP_TAGS["manufacturer"],
        "$family": GROUP_TAGS["family"],
        "$component": DEVICE_TAGS["component_id"],
        "$timeFilter": "time > now() - 1h",
        "$__interval": "1m",
    }

    def filled(query: str) -> str:
        for name, value in macros.items():
            query = query.replace(name, value)
        return query

    for variable in dashboard["templating"]["list"][1:]:
        series = await asyncio.to_thread(influx.query, filled(variable["query"]), DATABASE)
        assert series and series[0]["values"], variable["name"]
    answered = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            answered[(panel["title"], target["refId"])] = await influx_rows(influx, filled(target["query"]))
    assert any(r["mean"] is not None for r in answered[("Pressure", "A")])
    assert any(r["mean"] is not None for r in answered[("Viscosity", "B")])  # ints: valueInt
    [last] = answered[("Last calibration per component", "A")]
    assert last["pressure"] == 809.0 and last["calibration_date"] == DEVICE_TAGS["calibration_date"]


def test_refused_credentials_are_retried_until_fixed(tmp_path: Path) -> None:
    """InfluxDB with auth: a wrong password is a 401, not bad data: nothing is skipped, the
    cursor waits, and once the password is right every value arrives. The password never
    appears in siot's log nor on the node."""
    with InfluxServer(tmp_path / "influxdb", auth=True) as influx:
        influx.create_database(DATABASE)
        with running(tmp_path / "siot") as proc:
            asyncio.run(_credentials(proc, influx))
        assert PASSWORD not in proc.log() and influx.password not in proc.log()


async def _credentials(proc: SiotProcess, influx: InfluxServer) -> None:
    async with connected(proc) as client:
        seed = await seed_tree(client, client.root_id)
        db = await client.create_node(
            client.root_id, "db", db_points(influx.url, user=influx.user, password=PASSWORD)
        )
        t0 = time.time_ns() - 60 * NS
        await client.send_points(seed.device, [Point("pressure", float(i), time=t0 + i) for i in range(50)])
        error = await until(lambda: node_value(client, db, "error"))
        assert "answered 401" in error and PASSWORD not in error
        assert (await client.stats())["export"][db]["state"] == "failing"
        await client.send_points(db, [Point("password", influx.password)])
        await wait_rows(influx, 'SELECT * FROM "pressure"', 50)
        await until(lambda: _no_error(client, db))
