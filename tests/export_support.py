"""Helpers for the exporter tests: the seed's pressure/viscosity tree, and waiting on InfluxDB.

The seed pipeline (issue 17) tags each pressure/viscosity reading with the device's metadata:
manufacturer and family set once on the group, component_id and calibration_date on the device.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from siot.client import BaseClient
from siot.cmd.tsdb_servers import InfluxServer
from siot.points import Point

POLL_S = 0.05
DATABASE = "siot"
GROUP_TAGS = {"manufacturer": "Acme Instruments", "family": "PV-200"}
DEVICE_TAGS = {"component_id": "C-1042", "calibration_date": "2024-03-01"}


@dataclass(slots=True, frozen=True)
class SeedTree:
    group: str
    device: str


async def seed_tree(client: BaseClient, parent: str) -> SeedTree:
    """A `group` with the seed's family metadata and a pressure/viscosity `device` under it."""
    group = await client.create_node(
        parent,
        "group",
        [Point("description", "line 3 sensors"), *(Point("tag", v, key=k) for k, v in GROUP_TAGS.items())],
    )
    device = await client.create_node(
        group,
        "device",
        [
            Point("description", "PV sensor, tank 2"),
            *(Point("tag", v, key=k) for k, v in DEVICE_TAGS.items()),
        ],
    )
    return SeedTree(group, device)


def db_points(url: str, **extra: Any) -> list[Point]:
    """A `db` node for InfluxDB 1.x database `DATABASE` that writes within 50 ms of a commit."""
    points = {"description": "influx", "url": url, "database": DATABASE, "batchWait": 0.05, **extra}
    return [Point(name, value) for name, value in points.items()]


async def until(check: Callable[[], Awaitable[Any]], timeout_s: float = 60.0) -> Any:
    """Re-check until `check()` returns something truthy; its last value on success."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(POLL_S)


async def influx_rows(influx: InfluxServer, q: str) -> list[dict[str, Any]]:
    """InfluxQL rows, queried off the event loop (the daemon may be running on it)."""
    return await asyncio.to_thread(influx.rows, q, DATABASE)


async def wait_rows(
    influx: InfluxServer, q: str, count: int, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Until `q` returns `count` rows (and no more); those rows."""
    last: list[dict[str, Any]] = []

    async def enough() -> bool:
        nonlocal last
        last = await influx_rows(influx, q)
        if len(last) > count:
            raise AssertionError(f"{q}: {len(last)} rows, more than the {count} written")
        return len(last) == count

    try:
        await until(enough, timeout_s)
    except TimeoutError:
        raise AssertionError(f"{q}: {len(last)} rows after {timeout_s} s, not {count}") from None
    return last


async def node_value(client: BaseClient, node: str, ptype: str) -> Any:
    info = await client.get_node(node)
    return info.value(ptype)
