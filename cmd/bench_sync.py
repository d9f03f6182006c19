"""`siot bench sync`: how fast an edge catches up with its upstream after an outage.

Setup: two real instances in a temp dir, a cloud and an edge started with `--upstream`. Once
they are attached, the edge's sync node is disabled (the link closes, as in an outage), the
edge stores the backlog (`--points` values over `--nodes` sensors, in acked batches), and the
sync node is enabled again. The clock runs from that write until the edge reports a backlog of
0 (every row acknowledged by the cloud after its commit), and on until the digests of both
copies of the edge's subtree match. The cloud's history is then checked to hold every value,
and the latency of single changes is sampled both ways while connected.

Beside it, in the same run: a bare nats-py publish loop of one point's payload, and SQLite
`executemany` of the same rows (upsert + log row) into a scratch file. Catch-up pays both on
each side (read the edge's log, ship, merge and log on the cloud), so read the ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from siot.client import Client
from siot.cmd.bench import (
    Instance,
    _free_port,
    _run,
    connect_when_ready,
    raw_publish_msgs_s,
    raw_sqlite_rows_s,
    serve_process,
)
from siot.cmd.common import dumps
from siot.codec import encode
from siot.errors import RequestFailed
from siot.points import Point, encode_value
from siot.sync import protocol

TARGET_POINTS_S = 20_000
DEFAULT_POINTS = 100_000
DEFAULT_NODES = 100
DEFAULT_BATCH = 1_000
POLL_S = 0.1
PHASE_TIMEOUT_S = 600.0
LATENCY_SAMPLES = 50


@contextlib.contextmanager
def instance(root: Path, name: str, port: int, *extra: str) -> Iterator[Instance]:
    """`siot serve --id name` with its own nats-server and data dir; its log is shown if it
    did not stop cleanly."""
    with serve_process(root, port, ["--id", name, *extra], name=name) as running:
        yield running
    proc = running.proc
    assert proc is not None and running.log_path is not None
    if proc.returncode not in (0, -signal.SIGTERM):
        click.echo(f"{name} exited with {proc.returncode}:\n{running.log_path.read_text()}", err=True)


async def upstream_peer(edge: Client) -> dict[str, Any] | None:
    try:
        status = await edge.request(protocol.STATUS, encode({}))
    except RequestFailed:  # the sync service starts after the API answers
        return None
    for peer in status["peers"]:
        if peer["role"] == "upstream":
            return peer
    return None


async def wait_peer(edge: Client, ready: Any) -> dict[str, Any]:
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        while True:
            peer = await upstream_peer(edge)
            if peer is not None and ready(peer):
                return peer
            await asyncio.sleep(POLL_S)


def settled(peer: dict[str, Any]) -> bool:
    return peer["state"] == "connected" and peer["backlog"] == 0 and bool(peer["digestOk"])


async def sync_main(
    cloud_instance: Instance, edge_instance: Instance, points: int, nodes: int, batch: int
) -> dict[str, Any]:
    cloud = await connect_when_ready(cloud_instance, "")
    edge = await connect_when_ready(edge_instance, "")
    try:
        sensors = [await edge.create_node(edge.root_id, "device") for _ in range(nodes)]
        await wait_peer(edge, settled)
        sync_node = (await edge.children(edge.root_id, type="sync"))[0].id
        await edge.send_points(sync_node, [Point("disabled", True)])
        await wait_peer(edge, lambda p: p["state"] == "disabled")

        t0 = time.time_ns()
        per_node = points // nodes
        write_start = time.perf_counter()
        for sensor in sensors:
            for first in range(0, per_node, batch):
                values = range(first, min(first + batch, per_node))
                await edge.send_points(sensor, [Point("temp", float(i), time=t0 + i * 1000) for i in values])
        write_s = time.perf_counter() - write_start
        backlog = per_node * nodes

        start = time.perf_counter()
        await edge.send_points(sync_node, [Point("disabled", False)])
        await wait_peer(edge, lambda p: p["state"] == "connected" and p["backlog"] == 0 and p["shipped"] > 0)
        catch_up_s = time.perf_counter() - start
        await wait_peer(edge, settled)
        digest_s = time.perf_counter() - start

        up_ms = await latency_ms(edge, cloud, sensors[0])
        down_ms = await latency_ms(cloud, edge, sensors[0])
        history = await cloud.history(sensors[-1], "temp", limit=per_node + 1)
        if len(history) != per_node:
            raise click.ClickException(f"cloud history holds {len(history)} of {per_node} values")
        payload = encode([Point("temp", 1.0, time=t0).to_wire()])
        raw_publish = await raw_publish_msgs_s(cloud.nc, payload, min(backlog, 200_000))
        rows = [
            (s, "temp", "0", t0 + i, encode_value(float(i)), 0, "") for i in range(per_node) for s in sensors
        ]
        raw_sqlite = await asyncio.to_thread(raw_sqlite_rows_s, rows)
        return {
            "backlogPoints": backlog,
            "nodes": nodes,
            "edgeWritePointsS": backlog / write_s,
            "catchUpS": catch_up_s,
            "catchUpPointsS": backlog / catch_up_s,
            "untilDigestsMatchS": digest_s,
            "latencyUpMs": up_ms,
            "latencyDownMs": down_ms,
            "rawPublishMsgsS": raw_publish,
            "rawSqliteRowsS": raw_sqlite,
            "targetPointsS": TARGET_POINTS_S,
            "pass": backlog / catch_up_s >= TARGET_POINTS_S,
        }
    finally:
        await edge.close()
        await cloud.close()


async def latency_ms(source: Client, target: Client, node: str) -> dict[str, float]:
    """Milliseconds from writing a point on `source` (before its ack) until `target` has
    committed it (its fan-out arrives), one write at a time; p50 and max."""
    samples = []
    async with target.changes(node) as changes:
        for i in range(LATENCY_SAMPLES):
            start = time.perf_counter()
            await source.send_points(node, [Point("probe", i)])
            async with asyncio.timeout(PHASE_TIMEOUT_S):
                while not any(p.type == "probe" and p.value == i for p in (await changes.get()).points):
                    pass
            samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50": samples[len(samples) // 2], "max": samples[-1]}


def print_report(r: dict[str, Any]) -> None:
    verdict = "PASS" if r["pass"] else "FAIL"
    click.echo(f"sync catch-up of {r['backlogPoints']:,} backlog points over {r['nodes']} nodes")
    click.echo(
        f"  catch-up            {r['catchUpPointsS']:>10,.0f} points/s  ({r['catchUpS']:.2f} s)  "
        f"target >= {r['targetPointsS']:,}  {verdict}"
    )
    click.echo(f"  until digests match {r['untilDigestsMatchS']:>10.2f} s")
    up, down = r["latencyUpMs"], r["latencyDownMs"]
    click.echo(
        f"  change latency      edge->cloud p50 {up['p50']:.1f} ms (max {up['max']:.1f}), "
        f"cloud->edge p50 {down['p50']:.1f} ms (max {down['max']:.1f})"
    )
    click.echo(f"  edge write (acked)  {r['edgeWritePointsS']:>10,.0f} points/s  (for scale)")
    click.echo(f"  raw nats-py publish {r['rawPublishMsgsS']:>10,.0f} msgs/s    (one point per message)")
    click.echo(f"  raw SQLite insert   {r['rawSqliteRowsS']:>10,.0f} rows/s    (upsert + log row, batched)")


@click.command(name="sync")
@click.option(
    "--points",
    envvar="SIOT_BENCH_SYNC_POINTS",
    default=DEFAULT_POINTS,
    show_default=True,
    type=click.IntRange(1_000),
    help="Backlog points written on the edge while its link is down.",
)
@click.option(
    "--nodes",
    envvar="SIOT_BENCH_SYNC_NODES",
    default=DEFAULT_NODES,
    show_default=True,
    type=click.IntRange(1),
    help="Sensor nodes the backlog is spread over.",
)
@click.option(
    "--batch",
    envvar="SIOT_BENCH_SYNC_BATCH",
    default=DEFAULT_BATCH,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Points per write while building the backlog.",
)
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print JSON instead of text.")
def bench_sync(points: int, nodes: int, batch: int, json_: bool) -> None:
    """Catch-up rate of an edge after an outage, and the time until both digests match.

    Starts a cloud and an edge instance of its own in a temp dir, takes the edge's link down,
    writes the backlog on the edge, brings the link back and times the catch-up.

    Example usage:

    \b
        siot bench sync
        siot bench sync --points 20000 --json
    """
    if points < nodes:
        raise click.ClickException("--points must be at least --nodes")
    with tempfile.TemporaryDirectory(prefix="siot-bench-sync-") as tmp:
        root = Path(tmp)
        cloud_port = _free_port()
        with (
            instance(root, "cloud", cloud_port) as cloud,
            instance(root, "edge", _free_port(), "--upstream", cloud.url) as edge,
        ):
            report = _run(sync_main(cloud, edge, points, nodes, batch))
    if json_:
        click.echo(dumps(report))
    else:
        print_report(report)
