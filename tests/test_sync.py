"""Edge <-> cloud sync between real instances (each its own nats-server and SQLite) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import SiotProcess
from sync_support import build_tree, snapshot, sync_status, until, upstream_settled

from siot.client import Client
from siot.points import Point


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[SiotProcess]:
    proc = SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud").start()
    try:
        yield proc
    finally:
        proc.stop()


async def start(proc: SiotProcess) -> SiotProcess:
    """`SiotProcess.start` runs its own event loop: give it a thread."""
    return await asyncio.to_thread(proc.start)


async def connect(proc: SiotProcess) -> Client:
    client = await Client.connect(proc.url, reconnect_forever=False)
    await client.load_root()
    return client


@pytest.fixture
async def cloud_client(cloud: SiotProcess) -> AsyncIterator[Client]:
    client = await connect(cloud)
    yield client
    await client.close()


async def test_attach_initial_sync_and_changes_both_ways(
    tmp_path: Path, cloud: SiotProcess, cloud_client: Client
):
    edge_proc = await start(SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-1"))
    try:
        edge = await connect(edge_proc)
        nodes = await build_tree(edge, edge.root_id, fanout=10, per_branch=99)
        assert len(nodes) == 1_000
        # Attach at run time with a sync node (what --upstream does on start).
        await edge.create_node(edge.root_id, "sync", [Point("uri", cloud.url)])
        await until(lambda: upstream_settled(edge), timeout_s=60)
        attached = await cloud_client.children(cloud_client.root_id)
        assert [n.id for n in attached] == ["edge-1"]
        assert await snapshot(edge, "edge-1") == await snapshot(cloud_client, "edge-1")

        # Edge -> cloud, then cloud -> edge, each seen as a committed change on the other side.
        leaf = nodes[-1]
        async with cloud_client.changes(leaf) as changes:
            await edge.send_points(leaf, [Point("temperature", 21.5)])
            async with asyncio.timeout(5):
                while not any(p.type == "temperature" for p in (await changes.get()).points):
                    pass
        async with edge.changes(leaf) as changes:
            await cloud_client.send_points(leaf, [Point("setpoint", 19.0)])
            async with asyncio.timeout(5):
                while not any(p.type == "setpoint" for p in (await changes.get()).points):
                    pass
        status = await sync_status(cloud_client)
        assert [p["peer"] for p in status["peers"]] == ["edge-1"]
        await edge.close()
    finally:
        edge_proc.stop()
