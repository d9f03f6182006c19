"""History keeps every reading, through sync too: late buffered readings, same-millisecond
readings and equal-(time, origin) conflicts reach the upstream and both sides end identical."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support import SiotProcess
from sync_support import connect, snapshot, start, until, upstream_settled

from siot.points import Point, encode_value

T0 = 1_700_000_000_000_000_000
BUFFERED = 1_000


async def test_late_and_same_millisecond_readings_reach_the_upstream_history(tmp_path: Path) -> None:
    cloud = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    edge_proc = await start(SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-h"))
    try:
        edge = await connect(edge_proc)
        cloud_client = await connect(cloud)
        try:
            device = await edge.create_node(edge.root_id, "device", [Point("description", "flusher")])
            await edge.send_points(device, [Point("temp", 30.0, time=T0 + 10 * BUFFERED)])  # live
            for first in range(0, BUFFERED, 100):  # then the readings it buffered while offline
                batch = [Point("temp", float(i), time=T0 + i * 10) for i in range(first, first + 100)]
                await edge.send_points(device, batch)
            for value in (1.0, 3.0, 2.0):  # three readings stamped in the same millisecond
                await edge.send_points(device, [Point("humidity", value, time=T0)])
            # The same point written on both sides with equal (time, origin), different values.
            await edge.send_points(device, [Point("mode", "edge-says", time=T0, origin="op")])
            await edge.create_node(edge.root_id, "sync", [Point("uri", cloud.url)])
            await until(lambda: upstream_settled(edge), timeout_s=60)
            await cloud_client.send_points(device, [Point("mode", "cloud-says", time=T0, origin="op")])

            winner = max("edge-says", "cloud-says", key=encode_value)  # the greater encoding

            async def mode_agrees() -> bool:
                values = [(await c.get_node(device)).value("mode") for c in (edge, cloud_client)]
                return values == [winner, winner]

            await until(mode_agrees, timeout_s=30)
            for client in (edge, cloud_client):
                temps = await client.history(device, "temp", limit=10 * BUFFERED)
                assert sorted(p.time for p in temps) == sorted(
                    [T0 + i * 10 for i in range(BUFFERED)] + [T0 + 10 * BUFFERED]
                )
                assert (await client.get_node(device)).value("temp") == 30.0
                humidity = await client.history(device, "humidity")
                assert sorted(p.value for p in humidity) == [1.0, 2.0, 3.0]
                assert (await client.get_node(device)).value("humidity") == 3.0
                modes = await client.history(device, "mode")
                assert sorted(p.value for p in modes) == ["cloud-says", "edge-says"]
            await until(lambda: upstream_settled(edge), timeout_s=30)
            await asyncio.sleep(0.2)
            assert await snapshot(edge, "edge-h") == await snapshot(cloud_client, "edge-h")
        finally:
            await edge.close()
            await cloud_client.close()
    finally:
        edge_proc.stop()
        cloud.stop()
