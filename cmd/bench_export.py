"""`siot bench export`: points/s a `db` node exports to a real InfluxDB 1.x, beside the points/s
the same daemon ingests, in one run, with the daemon's CPU per point.

Setup: a `siot serve` and an `influxd` (Debian's `influxdb`, siot.cmd.tsdb_servers) of its own in
a temp dir; the seed's tree (a group with manufacturer/family tags, `--devices` devices with
component_id/calibration_date tags) and a `db` node with its defaults (5,000 lines per request,
1 s batch wait). Two phases, each writing `--points` float readings in acked batches of
`--batch` points, up to 8 in flight, over the devices:

- backlog: the db node is disabled while the points are written (ingest alone), then enabled;
  the clock runs until its lag is 0: export alone, from the log, as after an outage;
- live: the db node runs while the points are written: ingest and export at once, the export
  timed from the first write until its lag is 0.

CPU is siot serve's (and influxd's) user + system time over each phase, per point. Every phase
ends with InfluxQL counting the points: all of them, no more.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from siot.client import Client
from siot.cmd.bench import Instance, _free_port, _run, connect_when_ready, serve_process
from siot.cmd.bench_rules import cpu_s
from siot.cmd.common import dumps
from siot.cmd.tsdb_servers import InfluxServer
from siot.points import Point

DATABASE = "siot"
DEFAULT_POINTS = 200_000
DEFAULT_DEVICES = 10
DEFAULT_BATCH = 1_000
IN_FLIGHT = 8
POLL_S = 0.05
PHASE_TIMEOUT_S = 900.0


async def seed(client: Client, devices: int) -> list[str]:
    group = await client.create_node(
        client.root_id,
        "group",
        [
            Point("description", "line 3"),
            Point("tag", "Acme", key="manufacturer"),
            Point("tag", "PV", key="family"),
        ],
    )
    return [
        await client.create_node(
            group,
            "device",
            [
                Point("description", f"PV sensor {i}"),
                Point("tag", f"C-{1000 + i}", key="component_id"),
                Point("tag", "2024-03-01", key="calibration_date"),
            ],
        )
        for i in range(devices)
    ]


async def write(client: Client, devices: list[str], measurement: str, points: int, batch: int) -> float:
    """Write `points` readings over `devices`, acked, up to IN_FLIGHT batches at once; seconds."""
    t0 = time.time_ns() - 86_400 * 10**9  # a day ago: one InfluxDB shard, clear of "now"
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(device: str, first: int, count: int) -> None:
        async with gate:
            await client.send_points(
                device,
                [Point(measurement, float(i), time=t0 + i * 1000) for i in range(first, first + count)],
            )

    jobs = []
    per_device = points // len(devices)
    for index, device in enumerate(devices):
        total = per_device + (points % len(devices) if index == 0 else 0)
        for first in range(0, total, batch):
            jobs.append(one(device, first, min(batch, total - first)))
    start = time.perf_counter()
    await asyncio.gather(*jobs)
    return time.perf_counter() - start


async def caught_up(client: Client, db: str, instance: Instance, deadline_s: float = PHASE_TIMEOUT_S) -> None:
    """Until the exporter's lag is 0 (every log entry scanned, every line acknowledged)."""
    async with asyncio.timeout(deadline_s):
        while True:
            instance.check_alive()
            status = (await client.stats())["export"].get(db)
            if status and status["lagRows"] == 0 and status["state"] == "ok":
                return
            await asyncio.sleep(POLL_S)


def count(influx: InfluxServer, measurement: str) -> int:
    rows = influx.rows(f'SELECT COUNT("value") FROM "{measurement}"', DATABASE)
    return int(rows[0]["count"]) if rows else 0


def cpu(pid: int | None) -> float:
    return cpu_s(pid) or 0.0


async def export_main(
    instance: Instance, influx: InfluxServer, points: int, devices: int, batch: int
) -> dict[str, Any]:
    client = await connect_when_ready(instance, "")
    siot_pid = instance.pid
    influx_pid = influx.proc.pid if influx.proc else None
    try:
        sensors = await seed(client, devices)
        db_points = {"url": influx.url, "database": DATABASE, "disabled": True}
        db = await client.create_node(client.root_id, "db", [Point(k, v) for k, v in db_points.items()])
        await client.send_points(db, [Point("disabled", False)])
        await caught_up(client, db, instance)  # the seed's own points, exported

        # backlog: ingest alone, then export alone
        await client.send_points(db, [Point("disabled", True)])
        cpu0 = cpu(siot_pid)
        ingest_s = await write(client, sensors, "pressure", points, batch)
        cpu1, influx_cpu1 = cpu(siot_pid), cpu(influx_pid)
        start = time.perf_counter()
        await client.send_points(db, [Point("disabled", False)])
        await caught_up(client, db, instance)
        export_s = time.perf_counter() - start
        cpu2, influx_cpu2 = cpu(siot_pid), cpu(influx_pid)
        backlog_count = await asyncio.to_thread(count, influx, "pressure")

        # live: both at once
        start = time.perf_counter()
        live_ingest_s = await write(client, sensors, "viscosity", points, batch)
        await caught_up(client, db, instance)
        live_export_s = time.perf_counter() - start
        cpu3, influx_cpu3 = cpu(siot_pid), cpu(influx_pid)
        live_count = await asyncio.to_thread(count, influx, "viscosity")
        for name, found in (("backlog", backlog_count), ("live", live_count)):
            if found != points:
                raise click.ClickException(f"{name}: InfluxDB holds {found} of the {points} points written")
        return {
            "points": points,
            "devices": devices,
            "batch": batch,
            "backlog": {
                "ingestPointsS": points / ingest_s,
                "ingestCpuUsPerPoint": (cpu1 - cpu0) / points * 1e6,
                "exportPointsS": points / export_s,
                "exportCpuUsPerPoint": (cpu2 - cpu1) / points * 1e6,
                "influxdCpuUsPerPoint": (influx_cpu2 - influx_cpu1) / points * 1e6,
            },
            "live": {
                "ingestPointsS": points / live_ingest_s,
                "exportPointsS": points / live_export_s,
                "cpuUsPerPoint": (cpu3 - cpu2) / points * 1e6,
                "influxdCpuUsPerPoint": (influx_cpu3 - influx_cpu2) / points * 1e6,
            },
            "influxCounts": {"backlog": backlog_count, "live": live_count},
        }
    finally:
        await client.close()


def print_report(r: dict[str, Any]) -> None:
    b, live = r["backlog"], r["live"]
    counts = r["influxCounts"]
    click.echo(f"export of {r['points']:,} points per phase over {r['devices']} devices to InfluxDB 1.x")
    click.echo("  backlog (db node disabled while writing, then enabled)")
    click.echo(
        f"    ingest  {b['ingestPointsS']:>10,.0f} points/s  siot CPU {b['ingestCpuUsPerPoint']:.1f} µs/point"
    )
    click.echo(
        f"    export  {b['exportPointsS']:>10,.0f} points/s  siot CPU {b['exportCpuUsPerPoint']:.1f} µs/pt, "
        f"influxd {b['influxdCpuUsPerPoint']:.1f} µs/point"
    )
    click.echo("  live (exporting while writing)")
    click.echo(f"    ingest  {live['ingestPointsS']:>10,.0f} points/s")
    click.echo(
        f"    export  {live['exportPointsS']:>10,.0f} points/s  siot CPU {live['cpuUsPerPoint']:.1f} µs/pt "
        f"(ingest + export), influxd {live['influxdCpuUsPerPoint']:.1f} µs/point"
    )
    click.echo(f"  InfluxDB counts {counts['backlog']:,} + {counts['live']:,} (every point, no more)")


@click.command(name="export")
@click.option(
    "--points",
    envvar="SIOT_BENCH_EXPORT_POINTS",
    default=DEFAULT_POINTS,
    show_default=True,
    type=click.IntRange(1_000),
    help="Points written in each phase.",
)
@click.option(
    "--devices",
    envvar="SIOT_BENCH_EXPORT_DEVICES",
    default=DEFAULT_DEVICES,
    show_default=True,
    type=click.IntRange(1),
    help="Devices the points are spread over.",
)
@click.option(
    "--batch",
    envvar="SIOT_BENCH_EXPORT_BATCH",
    default=DEFAULT_BATCH,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Points per acked write.",
)
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print JSON instead of text.")
def bench_export(points: int, devices: int, batch: int, json_: bool) -> None:
    """Points/s exported to InfluxDB beside points/s ingested, and CPU per point.

    Starts its own siot instance and influxd (Debian's influxdb package, installed when
    missing as root) in a temp dir.

    Example usage:

    \b
        siot bench export
        siot bench export --points 50000 --json
    """
    with tempfile.TemporaryDirectory(prefix="siot-bench-export-") as tmp:
        root = Path(tmp)
        with InfluxServer(root / "influxdb") as influx, serve_process(root, _free_port()) as instance:
            influx.create_database(DATABASE)
            report = _run(export_main(instance, influx, points, devices, batch))
    if json_:
        click.echo(dumps(report))
    else:
        print_report(report)
