"""`siot bench http`: the HTTP API beside NATS on one instance of our own, in one run.

- writes: REST `POST /v1/nodes/{id}/points` with 1 and with 100 points per request, and the same
  over NATS (`p.<node>` with a reply, i.e. acknowledged after commit), each with the same
  number of requests in flight; points/s and the daemon's CPU per point (siot serve and its
  nats-server, from /proc).
- fan-out: committed changes delivered to 10 SSE streams (`GET /v1/stream`), beside 10 NATS
  subscribers (`up.<node>.>`) of the same changes; changes/s delivered and CPU per delivery.
- latency: a NATS write until an SSE stream has it, p50/p99.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import click

from siot.client import Client
from siot.cmd.bench import _free_port, connect_when_ready, serve_process
from siot.cmd.bench_mqtt import daemon_cpu_s
from siot.cmd.common import dumps
from siot.points import Point

ADMIN_EMAIL = "bench@example.com"
ADMIN_PASSWORD = "bench-password"
DEFAULT_REQUESTS = 4_000
DEFAULT_IN_FLIGHT = 32
DEFAULT_STREAMS = 10
DEFAULT_CHANGES = 20_000
FANOUT_BATCH = 100
LATENCY_SAMPLES = 200


async def in_flight(count: int, limit: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run `one(i)` for i in range(count) with at most `limit` at once; the seconds it took."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await one(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(limit)))
    return time.perf_counter() - started


def run_result(points: int, seconds: float, cpu_s: float | None) -> dict[str, Any]:
    return {
        "points": points,
        "seconds": round(seconds, 3),
        "points_s": round(points / seconds),
        "cpu_us_per_point": None if cpu_s is None else round(cpu_s / points * 1e6, 1),
    }


class Bench:
    def __init__(self, http: aiohttp.ClientSession, token: str, nats: Client, pid: int | None) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"}
        self.nats = nats
        self.pid = pid

    async def device(self, parent: str) -> str:
        return await self.nats.create_node(parent, "device")

    async def measured(self, points: int, run: Callable[[], Awaitable[float]]) -> dict[str, Any]:
        cpu_before = daemon_cpu_s(self.pid)
        seconds = await run()
        cpu_after = daemon_cpu_s(self.pid)
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return run_result(points, seconds, cpu)

    async def rest_writes(self, node: str, requests: int, per_request: int, limit: int) -> dict[str, Any]:
        url = f"/v1/nodes/{node}/points"

        async def one(index: int) -> None:
            body = [{"type": "v", "key": str(k), "value": index} for k in range(per_request)]
            async with self.http.post(url, json=body, headers=self.headers) as resp:
                if resp.status != 200:
                    raise click.ClickException(f"POST {url}: {resp.status} {await resp.text()}")

        return await self.measured(requests * per_request, lambda: in_flight(requests, limit, one))

    async def nats_writes(self, node: str, requests: int, per_request: int, limit: int) -> dict[str, Any]:
        async def one(index: int) -> None:
            await self.nats.send_points(node, [Point("v", index, key=str(k)) for k in range(per_request)])

        return await self.measured(requests * per_request, lambda: in_flight(requests, limit, one))

    async def fanout(self, parent: str, streams: int, changes: int, sse: bool) -> dict[str, Any]:
        """`changes` single-point changes to a device under `parent`, written in batches over
        NATS, until each of `streams` SSE streams (or NATS subscribers) has had all of them."""
        node = await self.device(parent)
        received = [0] * streams
        done = asyncio.Event()

        def count(index: int, points: int) -> None:
            received[index] += points
            if min(received) >= changes:
                done.set()

        opened = asyncio.Event()
        ready = [0]

        async def sse_reader(index: int) -> None:
            async with self.http.get(f"/v1/stream?node={parent}", headers=self.headers) as resp:
                ready[0] += 1
                if ready[0] == streams:
                    opened.set()
                async for line in resp.content:
                    if line.startswith(b"data: ") and b'"parent":null' in line:
                        count(index, line.count(b'"type":"v"'))
                    if done.is_set():
                        return

        async def nats_reader(index: int) -> None:
            async with self.nats.changes(parent) as feed:
                ready[0] += 1
                if ready[0] == streams:
                    opened.set()
                while not done.is_set():
                    change = await feed.get()
                    if change.parent is None and change.node == node:
                        count(index, len(change.points))

        readers = [asyncio.create_task((sse_reader if sse else nats_reader)(i)) for i in range(streams)]
        await opened.wait()
        await asyncio.sleep(0.2)  # every stream's watch is in place

        async def run() -> float:
            started = time.perf_counter()
            for first in range(0, changes, FANOUT_BATCH):
                batch = [Point("v", n, key=str(n)) for n in range(first, min(changes, first + FANOUT_BATCH))]
                await self.nats.send_points(node, batch)
            await done.wait()
            return time.perf_counter() - started

        result = await self.measured(changes * streams, run)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return {"streams": streams, "changes": changes} | {
            "deliveries": result["points"],
            "seconds": result["seconds"],
            "changes_s_per_stream": round(changes / result["seconds"]),
            "deliveries_s": result["points_s"],
            "cpu_us_per_delivery": result["cpu_us_per_point"],
        }

    async def latency(self, parent: str) -> dict[str, float]:
        """A NATS write of one point until an SSE stream delivers it."""
        node = await self.device(parent)
        samples: list[float] = []
        async with self.http.get(f"/v1/stream?node={node}", headers=self.headers) as resp:
            await asyncio.sleep(0.2)
            for n in range(LATENCY_SAMPLES):
                started = time.perf_counter()
                await self.nats.send_points(node, [Point("lat", n)], ack=False)
                while True:
                    line = await resp.content.readline()
                    if line.startswith(b"data: ") and b'"lat"' in line:
                        break
                samples.append((time.perf_counter() - started) * 1e3)
        samples.sort()
        return {
            "samples": len(samples),
            "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2),
            "max_ms": round(samples[-1], 2),
        }


async def http_main(requests: int, limit: int, streams: int, changes: int) -> dict[str, Any]:
    os.environ["SIOT_ADMIN_EMAIL"], os.environ["SIOT_ADMIN_PASSWORD"] = ADMIN_EMAIL, ADMIN_PASSWORD
    http_port = _free_port()
    with (
        tempfile.TemporaryDirectory(prefix="siot-bench-http-") as tmp,
        serve_process(Path(tmp), _free_port(), ["--http-port", str(http_port)]) as instance,
    ):
        nats = await connect_when_ready(instance, "")
        connector = aiohttp.TCPConnector(limit=max(limit, streams) + 4)
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{http_port}", connector=connector) as http:
                credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
                async with http.post("/v1/auth", json=credentials) as resp:
                    token = (await resp.json())["token"]
                bench = Bench(http, token, nats, instance.pid)
                root = nats.root_id
                report: dict[str, Any] = {"requests": requests, "in_flight": limit, "writes": {}}
                for per_request in (1, 100):
                    count = requests if per_request == 1 else max(1, requests // 10)
                    rest = await bench.rest_writes(await bench.device(root), count, per_request, limit)
                    over_nats = await bench.nats_writes(await bench.device(root), count, per_request, limit)
                    report["writes"][f"{per_request}/request"] = {"http": rest, "nats": over_nats}
                group = await nats.create_node(root, "group")
                report["fanout"] = {
                    "sse": await bench.fanout(group, streams, changes, sse=True),
                    "nats": await bench.fanout(group, streams, changes, sse=False),
                }
                report["sse_latency"] = await bench.latency(group)
        finally:
            await nats.close()
        instance.check_alive()
        return report


def print_report(report: dict[str, Any]) -> None:
    click.echo(f"siot bench http ({report['in_flight']} requests in flight)")
    for name, pair in report["writes"].items():
        for door, run in pair.items():
            click.echo(
                f"  writes {name:<12} {door:<5} {run['points_s']:>9,} points/s  "
                f"{run['cpu_us_per_point'] or 0:>7.1f} µs CPU/point  ({run['points']:,} points)"
            )
    for door, run in report["fanout"].items():
        click.echo(
            f"  fan-out to {run['streams']} {door:<5} {run['changes_s_per_stream']:>9,} changes/s per stream "
            f"({run['deliveries_s']:,} deliveries/s, {run['cpu_us_per_delivery'] or 0:.1f} µs CPU/delivery)"
        )
    lat = report["sse_latency"]
    click.echo(f"  NATS write -> SSE  p50 {lat['p50_ms']} ms  p99 {lat['p99_ms']} ms  max {lat['max_ms']} ms")


@click.command(name="http")
@click.option(
    "--requests", default=DEFAULT_REQUESTS, show_default=True, help="Requests of 1 point (of 100: a tenth)."
)
@click.option("--in-flight", "limit", default=DEFAULT_IN_FLIGHT, show_default=True, help="Requests at once.")
@click.option(
    "--streams", default=DEFAULT_STREAMS, show_default=True, help="SSE streams (and NATS subscribers)."
)
@click.option(
    "--changes", default=DEFAULT_CHANGES, show_default=True, help="Changes fanned out to the streams."
)
@click.option("json_", "--json", envvar="SIOT_JSON", is_flag=True, help="Print JSON instead of text.")
def bench_http(requests: int, limit: int, streams: int, changes: int, json_: bool) -> None:
    """Measure the HTTP API beside NATS: REST writes/s (1 and 100 points per request), SSE fan-out
    to STREAMS streams, NATS write -> SSE latency; with the daemon's CPU per point.

    Example usage:

    \b
        siot bench http
        siot bench http --requests 10000 --streams 10 --json
    """
    report = asyncio.run(http_main(requests, limit, streams, changes))
    click.echo(dumps(report) if json_ else "", nl=json_)
    if not json_:
        print_report(report)
