"""Readings an edge buffered while offline reach the cloud's InfluxDB once the edge syncs up, late
ones that lose the merge on arrival included: the cloud's exporter ships its log, not current
values (a real influxd, two `siot serve` processes)."""

from __future__ import annotations

from pathlib import Path

from export_support import DEVICE_TAGS, GROUP_TAGS, db_points, seed_tree, wait_rows
from support import SiotProcess
from sync_support import connect, start, until, upstream_settled

from siot.client import Client
from siot.cmd.tsdb_servers import InfluxServer
from siot.points import Point

T0 = 1_700_000_000_000_000_000
BUFFERED = 500


async def test_history_synced_up_late_is_exported(tmp_path: Path, influx: InfluxServer) -> None:
    cloud_proc = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    edge_proc = await start(SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-x"))
    try:
        cloud = await connect(cloud_proc)
        edge = await connect(edge_proc)
        try:
            await cloud.create_node(cloud.root_id, "db", db_points(influx.url, pointTypes="pressure"))
            seed = await seed_tree(edge, edge.root_id)
            # Offline: the live reading first, then the ones the device had buffered (older:
            # they lose the merge on the cloud as they did on the edge, and are history only).
            await edge.send_points(seed.device, [Point("pressure", -1.0, time=T0 + BUFFERED * 1000)])
            for first in range(0, BUFFERED, 100):
                batch = [Point("pressure", float(i), time=T0 + i * 1000) for i in range(first, first + 100)]
                await edge.send_points(seed.device, batch)
            await edge.create_node(edge.root_id, "sync", [Point("uri", cloud_proc.url)])
            await until(lambda: upstream_settled(edge), timeout_s=60)
            rows = await wait_rows(influx, 'SELECT * FROM "pressure"', BUFFERED + 1)
            assert sorted(r["value"] for r in rows) == [-1.0, *(float(i) for i in range(BUFFERED))]
            metadata = {**GROUP_TAGS, **DEVICE_TAGS}
            assert all({name: r[name] for name in metadata} == metadata for r in rows)
            assert {r["id"] for r in rows} == {seed.device}

            # The link's lag as siot stats and /metrics show it (syncPeers), on both sides.
            async def caught_up(client: Client, role: str) -> bool:
                peers = (await client.stats())["syncPeers"]
                return any(
                    p["role"] == role and p["state"] == "connected" and p["lagRows"] == 0 for p in peers
                )

            await until(lambda: caught_up(edge, "upstream"))
            await until(lambda: caught_up(cloud, "downstream"))
        finally:
            await edge.close()
            await cloud.close()
    finally:
        edge_proc.stop()
        cloud_proc.stop()
