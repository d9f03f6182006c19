"""One session per edge id, and every downstream root in `siot sync status` (issue 12, item 5).

Before, two edges started with the same `--id` both showed `connected` on the cloud and wrote
the same subtree there, and diverged; an edge that was attached but had not said hello since the
cloud started did not show in `siot sync status` at all."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import msgpack
from support import SIOT_BIN, SiotProcess, stop_all
from sync_support import connect, start, sync_status, until, upstream_peers, upstream_settled

from siot.client import Client
from siot.errors import RequestFailed
from siot.points import Point

CONFLICT = "is already connected from another instance"


def edge(tmp_path: Path, name: str, cloud: SiotProcess, instance_id: str = "edge-1") -> SiotProcess:
    return SiotProcess(
        data_dir=tmp_path / name, instance_id=instance_id, extra_args=["--upstream", cloud.url]
    )


async def peer_record(client: Client, peer: str) -> dict | None:
    for record in (await sync_status(client))["peers"]:
        if record["peer"] == peer:
            return record
    return None


async def in_conflict(client: Client) -> dict | None:
    for peer in await upstream_peers(client):
        if peer["state"] == "conflict" and CONFLICT in peer["lastError"]:
            return peer
    return None


async def value(client: Client, node: str, ptype: str) -> object:
    return (await client.get_node(node)).value(ptype)


def cli_status(proc: SiotProcess) -> str:
    return subprocess.run(
        [SIOT_BIN, "sync", "status", "--url", proc.url], check=True, capture_output=True, text=True
    ).stdout


async def test_a_second_edge_with_the_same_id_is_refused_on_both_sides_until_the_first_stops(
    tmp_path: Path,
) -> None:
    cloud = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    first = await start(edge(tmp_path, "first", cloud))
    second: SiotProcess | None = None
    try:
        cloud_client, a = await connect(cloud), await connect(first)
        await until(lambda: upstream_settled(a))
        second = await start(edge(tmp_path, "second", cloud))
        b = await connect(second)
        await b.send_points("edge-1", [Point("written", "on the second")])

        # Refused, and said so on the second edge...
        refused = await until(lambda: in_conflict(b))
        assert "give one of them another --id" in refused["lastError"]
        assert "refused by upstream" in second.log() and CONFLICT in second.log()
        text = cli_status(second)
        assert ": conflict" in text and CONFLICT in text and "to cloud" in text
        # ...and on the cloud, where the first one stays connected.
        record = await until(lambda: peer_record(cloud_client, "edge-1"))
        assert record["state"] == "connected" and record["conflicts"] >= 1
        assert CONFLICT in record["lastConflict"] and record["lastConflictTime"] > 0
        assert CONFLICT in cloud.log()
        assert "CONFLICT: refused" in cli_status(cloud)

        # The first keeps syncing both ways; the second's writes never reach the cloud.
        await a.send_points("edge-1", [Point("from-first", 1)])
        await until(lambda: value(cloud_client, "edge-1", "from-first"))
        await cloud_client.send_points("edge-1", [Point("from-cloud", 2)])
        await until(lambda: value(a, "edge-1", "from-cloud"))
        await asyncio.sleep(1)
        assert await value(cloud_client, "edge-1", "written") is None
        assert await value(b, "edge-1", "from-cloud") is None
        assert (await until(lambda: in_conflict(b)))["state"] == "conflict"

        # A clean stop says bye: the second takes the id over without waiting for the timeout.
        await a.close()
        await asyncio.to_thread(first.stop)
        await until(lambda: upstream_settled(b), timeout_s=30)
        assert "edge edge-1 (session" in cloud.log() and "said bye" in cloud.log()
        assert "takes over from session" not in cloud.log()
        assert await until(lambda: value(cloud_client, "edge-1", "written")) == "on the second"
        assert [p["peer"] for p in (await sync_status(cloud_client))["peers"]] == ["edge-1"]
        await b.close()
        await cloud_client.close()
    finally:
        stop_all(*(p for p in (second, first, cloud) if p is not None))


async def test_a_killed_edge_is_taken_over_after_the_session_timeout_and_restarts_at_once(
    tmp_path: Path,
) -> None:
    cloud = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    first = await start(edge(tmp_path, "first", cloud))
    second: SiotProcess | None = None
    try:
        a = await connect(first)
        await until(lambda: upstream_settled(a))
        await a.close()
        # Killed, then restarted from its data: the same session (kept with the data), so it
        # is not refused as its own duplicate.
        await asyncio.to_thread(first.kill)
        await start(first)
        a = await connect(first)
        await until(lambda: upstream_settled(a), timeout_s=15)
        assert not await in_conflict(a)
        await a.close()

        second = await start(edge(tmp_path, "second", cloud))
        b = await connect(second)
        await until(lambda: in_conflict(b))
        # No bye from a killed edge: the cloud frees the id once it has been silent for 20 s.
        await asyncio.to_thread(first.kill)
        await until(lambda: upstream_settled(b), timeout_s=60)
        assert "takes over from session" in cloud.log()
        await b.close()
    finally:
        stop_all(*(p for p in (second, first, cloud) if p is not None))


async def test_status_lists_every_downstream_root(tmp_path: Path) -> None:
    cloud = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    one = await start(edge(tmp_path, "one", cloud, "edge-1"))
    two = await start(edge(tmp_path, "two", cloud, "edge-2"))
    try:
        for proc in (one, two):
            client = await connect(proc)
            await until(lambda c=client: upstream_settled(c))
            await client.close()
        await asyncio.to_thread(two.stop)
        await asyncio.to_thread(cloud.stop)
        await start(cloud)
        cloud_client = await connect(cloud)
        one_client = await connect(one)
        await until(lambda: upstream_settled(one_client), timeout_s=60)
        # edge-2 has not been heard from since the cloud started: listed all the same.
        status = {p["peer"]: p for p in (await sync_status(cloud_client))["peers"]}
        assert sorted(status) == ["edge-1", "edge-2"]
        assert status["edge-1"]["state"] == "connected"
        assert status["edge-2"]["state"] == "disconnected" and status["edge-2"]["role"] == "downstream"
        assert status["edge-2"]["lastSeenTime"] > 0  # when its cursors last moved
        # Deleted from the cloud's tree: still listed, as detached.
        await cloud_client.send_edge_points("edge-2", cloud_client.root_id, [Point("tombstone", 1)])
        record = await until(lambda: peer_record(cloud_client, "edge-2"))
        assert record["state"] == "detached"
        text = cli_status(cloud)
        assert "edge edge-1: connected" in text and "edge edge-2: detached" in text
        await one_client.close()
        await cloud_client.close()
    finally:
        stop_all(one, two, cloud)


async def test_sessions_windows_and_upstream_ids_are_checked(tmp_path: Path) -> None:
    """The same rules for any client on the NATS port, request by request."""
    cloud = await start(SiotProcess(data_dir=tmp_path / "cloud", instance_id="cloud"))
    first = await start(edge(tmp_path, "first", cloud))
    try:
        c = await connect(cloud)

        async def ask(subject: str, payload: dict) -> dict:
            return await c.request(subject, msgpack.packb(payload))

        async def refused(subject: str, payload: dict, text: str) -> None:
            try:
                await ask(subject, payload)
            except RequestFailed as exc:
                assert text in str(exc), exc
            else:
                raise AssertionError(f"{subject} {payload} was served")

        assert (await ask("sync.hello.x", {"session": "A"}))["attached"]
        await refused("sync.hello.x", {"session": "B"}, CONFLICT)
        await refused("sync.pull.x", {"session": "B"}, CONFLICT)
        await refused("sync.up.x", {"session": "B", "from": 0, "to": 0, "rows": []}, CONFLICT)
        await refused("sync.digest.x", {"session": "B"}, CONFLICT)
        await refused("sync.hello.x", {"session": "B" * 65}, "at most 64 characters")
        await ask("sync.bye.x", {"session": "B"})  # not the current session: changes nothing
        await refused("sync.pull.x", {"session": "B"}, CONFLICT)
        # A log window must continue what the cloud has applied of the edge's log.
        await refused("sync.up.x", {"session": "A", "from": 5, "to": 9, "rows": []}, "leaves a gap")
        await refused("sync.up.x", {"session": "A", "from": 3, "to": 2, "rows": []}, "'from' <= 'to'")
        await refused("sync.up.x", {"session": "A", "to": 2, "rows": []}, "'from' <= 'to'")
        assert (await ask("sync.up.x", {"session": "A", "from": 0, "to": 4, "rows": []}))["ack"] == 4
        assert (await ask("sync.up.x", {"session": "A", "from": 4, "to": 7, "rows": []}))["ack"] == 7
        await ask("sync.bye.x", {"session": "A"})
        assert (await ask("sync.hello.x", {"session": "B"}))["inCursor"] == 7
        await refused("sync.pull.x", {"session": "A"}, CONFLICT)
        await c.close()

        # An instance's own upstream cannot say hello to it as an edge (that reset the cursors
        # of its link to that upstream, and with them what it still had to send).
        e = await connect(first)
        await until(lambda: upstream_settled(e))
        try:
            await e.request("sync.hello.cloud", msgpack.packb({"session": "Z"}))
        except RequestFailed as exc:
            assert "is an upstream of edge-1" in str(exc)
        else:
            raise AssertionError("hello as the upstream's id was served")
        assert [p["peer"] for p in (await sync_status(e))["peers"]] == ["cloud"]
        await e.close()
    finally:
        stop_all(first, cloud)
