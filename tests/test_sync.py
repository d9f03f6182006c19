"""Edge <-> cloud sync between real instances (each its own nats-server and SQLite) on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import SIOT_BIN, SiotProcess, free_port, stop_all
from sync_support import (
    build_tree,
    connect,
    snapshot,
    start,
    sync_status,
    until,
    upstream_peers,
    upstream_settled,
)

from siot.client import Client
from siot.codec import encode
from siot.errors import RequestFailed
from siot.points import Point


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[SiotProcess]:
    proc = SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud").start()
    try:
        yield proc
    finally:
        proc.stop()


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
        # beside the cloud's own first admin (siot/users.py bootstrap_admin)
        assert [n.id for n in attached if n.type != "user"] == ["edge-1"]
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


SENSORS = 10
VALUES_PER_SENSOR = 1_000  # 10,000 points written while apart


async def write_history(client: Client, sensors: list[str], per_sensor: int, start_ns: int) -> None:
    """`per_sensor` values of `temp` per sensor, 1 ms apart, one batch per sensor."""
    for sensor in sensors:
        batch = [Point("temp", float(i), time=start_ns + i * 1_000_000) for i in range(per_sensor)]
        await client.send_points(sensor, batch)


async def test_outage_loses_no_history_and_conflicts_converge(tmp_path: Path):
    cloud = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    edge_proc = await start(
        SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-1", extra_args=["--upstream", cloud.url])
    )
    try:
        edge = await connect(edge_proc)
        sensors = [await edge.create_node(edge.root_id, "device") for _ in range(SENSORS)]
        await until(lambda: upstream_settled(edge))

        # Apart: the cloud dies (siot and its nats-server), the edge keeps writing.
        await asyncio.to_thread(cloud.kill)
        t0 = time.time_ns()
        await write_history(edge, sensors, VALUES_PER_SENSOR, t0)
        await edge.send_points(sensors[0], [Point("setpoint", 1.0, time=t0 + 2, origin="edge-user")])
        await edge.send_points(sensors[0], [Point("mode", "edge", time=t0 + 5, origin="edge-user")])

        # The cloud comes back where the edge cannot see it, and its stale copy is written too.
        stale_port = cloud.port
        cloud.port = free_port()
        await start(cloud)
        cloud_client = await connect(cloud)
        await cloud_client.send_points(sensors[0], [Point("setpoint", 2.0, time=t0 + 1, origin="cloud-user")])
        await cloud_client.send_points(sensors[0], [Point("mode", "cloud", time=t0 + 5, origin="cloud-user")])
        await cloud_client.send_points(sensors[1], [Point("setpoint", 7.0, time=t0 + 3, origin="cloud-user")])
        await cloud_client.close()
        await asyncio.to_thread(cloud.stop)

        # Together again, on the address the edge knows; the edge was never restarted.
        cloud.port = stale_port
        await start(cloud)
        cloud_client = await connect(cloud)
        await until(lambda: upstream_settled(edge), timeout_s=60)

        for sensor in sensors:
            history = await cloud_client.history(sensor, "temp", limit=VALUES_PER_SENSOR * 2)
            assert [p.time for p in history] == [t0 + i * 1_000_000 for i in range(VALUES_PER_SENSOR)]
        for client in (edge, cloud_client):
            node = await client.get_node(sensors[0])
            assert node.value("setpoint") == 1.0  # newer time wins
            assert node.value("mode") == "edge"  # equal time: greater origin wins
            assert (await client.get_node(sensors[1])).value("setpoint") == 7.0
            # Both sides keep both sides' values as history, the losers included, each once.
            setpoints = await client.history(sensors[0], "setpoint")
            assert [(p.time, p.value) for p in setpoints] == [(t0 + 1, 2.0), (t0 + 2, 1.0)]
            modes = await client.history(sensors[0], "mode")
            assert sorted(p.value for p in modes) == ["cloud", "edge"]
        assert await snapshot(edge, "edge-1") == await snapshot(cloud_client, "edge-1")
        await cloud_client.close()
        await edge.close()
    finally:
        stop_all(edge_proc, cloud)


async def test_edge_killed_during_catch_up_resumes_without_loss_or_duplicates(tmp_path: Path):
    cloud = SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud")
    edge_proc = await start(
        SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-1", extra_args=["--upstream", cloud.url])
    )
    try:
        edge = await connect(edge_proc)
        sensors = [await edge.create_node(edge.root_id, "device") for _ in range(SENSORS)]
        per_sensor = 3 * VALUES_PER_SENSOR
        t0 = time.time_ns()
        await write_history(edge, sensors, per_sensor, t0)
        await edge.close()

        await start(cloud)  # the edge has been trying all along; catch-up starts now
        cloud_client = await connect(cloud)

        async def catching_up() -> bool:
            return (await cloud_client.stats())["lastSeq"] > 2 * SENSORS

        await until(catching_up)
        await asyncio.to_thread(edge_proc.kill)
        arrived = (await cloud_client.stats())["lastSeq"]
        await start(edge_proc)
        edge = await connect(edge_proc)
        await until(lambda: upstream_settled(edge), timeout_s=60)

        for sensor in sensors:
            history = await cloud_client.history(sensor, "temp", limit=per_sensor * 2)
            assert [p.time for p in history] == [t0 + i * 1_000_000 for i in range(per_sensor)]
        assert await snapshot(edge, "edge-1") == await snapshot(cloud_client, "edge-1")
        print(f"cloud log held {arrived} entries when the edge was killed")
        await cloud_client.close()
        await edge.close()
    finally:
        stop_all(edge_proc, cloud)


async def peer_state(client: Client, state: str) -> dict | None:
    for peer in await upstream_peers(client):
        if peer["state"] == state:
            return peer
    return None


async def test_two_edges_are_isolated_and_cloud_deletes_and_detaches(
    tmp_path: Path, cloud: SiotProcess, cloud_client: Client
):
    site = await cloud_client.create_node(cloud_client.root_id, "group", [Point("description", "site B")])
    a_proc = await start(
        SiotProcess(data_dir=tmp_path / "a", instance_id="edge-a", extra_args=["--upstream", cloud.url])
    )
    b_proc = await start(
        SiotProcess(
            data_dir=tmp_path / "b",
            instance_id="edge-b",
            extra_args=["--upstream", cloud.url, "--upstream-parent", site],
        )
    )
    try:
        a, b = await connect(a_proc), await connect(b_proc)
        a_sensor = await a.create_node(a.root_id, "device", [Point("temp", 1.0)])
        b_sensor = await b.create_node(b.root_id, "device", [Point("temp", 2.0)])
        await until(lambda: upstream_settled(a))
        await until(lambda: upstream_settled(b))
        assert [n.id for n in await cloud_client.children(site)] == ["edge-b"]
        await cloud_client.send_points(b_sensor, [Point("setpoint", 5.0)])

        async def b_has_setpoint() -> bool:
            return (await b.get_node(b_sensor)).value("setpoint") == 5.0

        await until(b_has_setpoint)
        for node in ("edge-b", b_sensor, site):
            with pytest.raises(RequestFailed):
                await a.get_node(node)
        with pytest.raises(RequestFailed):
            await b.get_node(a_sensor)

        # A node deleted in the cloud stays deleted on the edge.
        await cloud_client.delete_node(a_sensor, "edge-a")

        async def a_sensor_deleted() -> bool:
            return (await a.get_node(a_sensor)).deleted

        await until(a_sensor_deleted)

        # An edge deleted from the cloud tree detaches until it is re-added there.
        await cloud_client.delete_node("edge-b", site)
        await until(lambda: peer_state(b, "detached"))
        await b.send_points(b_sensor, [Point("temp", 3.0)])
        assert (await cloud_client.get_node(b_sensor)).value("temp") == 2.0
        await cloud_client.undelete_node("edge-b", site)

        async def cloud_has_new_temp() -> bool:
            return (await cloud_client.get_node(b_sensor)).value("temp") == 3.0

        await until(cloud_has_new_temp, timeout_s=30)
        await until(lambda: upstream_settled(b))
        await a.close()
        await b.close()
    finally:
        stop_all(a_proc, b_proc)


async def test_bad_sync_requests_get_clear_errors(cloud: SiotProcess, cloud_client: Client):
    async def ask(subject: str, payload: bytes) -> str:
        with pytest.raises(RequestFailed) as failed:
            await cloud_client.request(subject, payload)
        return str(failed.value)

    assert "unknown node 'ghost'" in await ask("sync.pull.ghost", encode({}))
    assert "no such parent" in await ask("sync.hello.edge-x", encode({"parent": "nowhere"}))
    assert "cannot sync with itself" in await ask("sync.hello.cloud", encode({}))
    await cloud_client.request("sync.hello.edge-x", encode({}))
    assert "malformed msgpack" in await ask("sync.up.edge-x", b"\xc1")
    assert "11 fields" in await ask("sync.up.edge-x", encode({"rows": [[1, 2]]}))
    assert "'ack' must be" in await ask("sync.pull.edge-x", encode({"ack": -1}))
    assert (await cloud_client.stats())["instance"] == "cloud"  # still serving


def test_sync_status_cli(cloud: SiotProcess):
    text = subprocess.run(
        [SIOT_BIN, "sync", "status", "--url", cloud.url], capture_output=True, text=True, check=True
    ).stdout
    assert "instance cloud" in text and "no sync peers" in text
    reply = json.loads(
        subprocess.run(
            [SIOT_BIN, "sync", "status", "--url", cloud.url, "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert reply["instance"] == "cloud" and reply["peers"] == []
    failed = subprocess.run(
        [SIOT_BIN, "sync", "status", "--url", "nats://127.0.0.1:1", "--timeout", "1"],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and "cannot connect" in failed.stderr


async def test_cloud_restored_from_backup_is_resent_and_repaired(tmp_path: Path):
    """The cloud loses recent data (an old backup is restored) and a point row besides: the edge
    resends what the cloud no longer has, and the digest check repairs the rest from state."""
    cloud = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    edge_proc = await start(
        SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-1", extra_args=["--upstream", cloud.url])
    )
    try:
        edge = await connect(edge_proc)
        sensor = await edge.create_node(edge.root_id, "device", [Point("unit", "C")])
        await until(lambda: upstream_settled(edge))
        await asyncio.to_thread(cloud.stop)
        backup = tmp_path / "backup"
        shutil.copytree(tmp_path / "cloud", backup, ignore=shutil.ignore_patterns("nats", "*.log"))
        await start(cloud)
        t0 = time.time_ns()
        await write_history(edge, [sensor], 100, t0)
        await until(lambda: upstream_settled(edge))

        await asyncio.to_thread(cloud.stop)
        for db in backup.glob("siot.db*"):
            shutil.copy(db, tmp_path / "cloud" / db.name)
        with sqlite3.connect(tmp_path / "cloud" / "siot.db") as db:  # and lose a point besides
            assert db.execute("DELETE FROM points WHERE node = ? AND type = 'unit'", (sensor,)).rowcount == 1
        await start(cloud)
        cloud_client = await connect(cloud)
        peer = await until(lambda: upstream_settled(edge), timeout_s=60)
        assert peer["repairs"] >= 1
        history = await cloud_client.history(sensor, "temp")
        assert [p.time for p in history] == [t0 + i * 1_000_000 for i in range(100)]
        assert (await cloud_client.get_node(sensor)).value("unit") == "C"
        assert await snapshot(edge, "edge-1") == await snapshot(cloud_client, "edge-1")
        await cloud_client.close()
        await edge.close()
    finally:
        stop_all(edge_proc, cloud)


async def test_sync_node_disable_enable_and_flag_reuses_the_node(
    tmp_path: Path, cloud: SiotProcess, cloud_client: Client
):
    edge_proc = await start(
        SiotProcess(data_dir=tmp_path / "edge", instance_id="edge-1", extra_args=["--upstream", cloud.url])
    )
    try:
        edge = await connect(edge_proc)
        await until(lambda: upstream_settled(edge))
        [sync_node] = await edge.children(edge.root_id, type="sync")
        assert sync_node.value("uri") == cloud.url

        await edge.send_points(sync_node.id, [Point("disabled", True)])
        await until(lambda: peer_state(edge, "disabled"))
        await edge.send_points(edge.root_id, [Point("offline", 1)])
        assert (await cloud_client.get_node("edge-1")).value("offline") is None
        await edge.send_points(sync_node.id, [Point("disabled", False)])

        async def cloud_has_it() -> bool:
            return (await cloud_client.get_node("edge-1")).value("offline") == 1

        await until(cloud_has_it)
        await edge.close()

        await asyncio.to_thread(edge_proc.stop)
        await start(edge_proc)  # same --upstream: the node is reused, not duplicated
        edge = await connect(edge_proc)
        assert [n.id for n in await edge.children(edge.root_id, type="sync")] == [sync_node.id]
        await until(lambda: upstream_settled(edge))
        await edge.close()
    finally:
        edge_proc.stop()
