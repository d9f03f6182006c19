"""Ingest limits (issue 12, item 7) against a real `siot serve`: filters over siot's or the
broker's own subjects are refused as an `error` point, and `maxDevices` bounds the devices one
ingest node creates."""

from __future__ import annotations

import asyncio
import json

import pytest
from ingest_support import wait_children, wait_listening, wait_point
from nats.aio.msg import Msg
from support import SiotProcess, connected

from siot import subjects
from siot.client import Client
from siot.codec import decode_any, encode
from siot.errors import RequestFailed
from siot.nodes.ingest import IngestConfig
from siot.nodes.listener import STATE_POINT
from siot.points import Point
from siot.sync import protocol

# Filters that could match siot's own subjects (siot/subjects.py, sync/protocol.py) or the
# broker's internal ones, as NATS subjects and as MQTT topics (checked by the subject they map to).
REFUSED_SUBJECTS = [
    "sync.>",
    "sync.hello.*",
    "sync.digest.edge1",
    "siot.>",
    "siot.stats",
    "p.>",
    "up.>",
    "nodes.*.*",
    "history.*",
    "$MQTT.>",
    "$MQTT.msgs.sensors.>",
    "$JS.API.>",
    "$SYS.>",
    "$KV.bucket.>",
    "$O.store.>",
    "$SRV.PING",
    "$G.x",
    "_INBOX.>",
    "_R_.>",
    ">",
    "*",
    "*.hello.>",
]
REFUSED_TOPICS = ["#", "+", "+/+/#", "sync/#", "siot/stats", "$MQTT/#", "$SYS/#", "p/#", "up/+/+"]


def test_refused_filters_name_the_subject_and_why() -> None:
    for subject in REFUSED_SUBJECTS:
        with pytest.raises(
            ValueError,
            match=rf"filter subject '{subject.replace('$', '[$]').replace('*', '[*]')}' is refused",
        ):
            IngestConfig(id="i", parent="p", subject=subject)
    with pytest.raises(ValueError, match=r"topic 'sync/#' \(subject 'sync\.>'\) is refused: 'sync' subjects"):
        IngestConfig(id="i", parent="p", topic="sync/#")
    with pytest.raises(ValueError, match=r"'\$' \(\$MQTT\) are NATS's internal ones"):
        IngestConfig(id="i", parent="p", topic="$MQTT/msgs/#")
    with pytest.raises(ValueError, match=r"wildcard first token \('>'\)"):
        IngestConfig(id="i", parent="p", topic="#")
    # what only looks like them maps to other subjects, and is taken
    for topic in ("/sync/#", "sensors/#", "sync.x/y", "SYNC/#", "psensors/+"):
        IngestConfig(id="i", parent="p", topic=topic)
    for subject in ("plant.>", "syncing.x", "plant.$MQTT"):
        IngestConfig(id="i", parent="p", subject=subject)


def test_ack_wait_and_max_devices_are_bounded() -> None:
    for bad in (1e300, 0, 0.5, -1, 86_401):
        with pytest.raises(ValueError, match="ackWait"):
            IngestConfig(id="i", parent="p", subject="a", ackWait=bad)
    for bad in (0, -1, 2.5, 1e300, 1_000_001):
        with pytest.raises(ValueError, match="maxDevices"):
            IngestConfig(id="i", parent="p", subject="a", maxDevices=bad)
    config = IngestConfig(id="i", parent="p", subject="a")
    assert (config.ack_wait_s, config.max_devices) == (10.0, 1_000)
    assert IngestConfig(id="i", parent="p", subject="a", maxDevices=5.0, ackWait=2).max_devices == 5


async def replies(client: Client, subject: str, data: bytes = b"", wait_s: float = 0.5) -> list[dict]:
    """Every reply to one request within `wait_s`: a refused ingest node must not be a second
    responder on siot's own subjects."""
    inbox = client.nc.new_inbox()
    got: list[dict] = []

    async def on_reply(msg: Msg) -> None:
        got.append(decode_any(msg.data))

    sub = await client.nc.subscribe(inbox, cb=on_reply)
    try:
        await client.nc.publish(subject, data, reply=inbox)
        await asyncio.sleep(wait_s)
    finally:
        await sub.unsubscribe()
    return got


async def test_refused_filters_get_error_points_and_daemon_serves_on(siot_process: SiotProcess) -> None:
    async with connected(siot_process) as client:
        bad = {}
        for subject in REFUSED_SUBJECTS:
            bad[subject] = await client.create_node(client.root_id, "ingest", [Point("subject", subject)])
        for topic in REFUSED_TOPICS:
            bad[topic] = await client.create_node(client.root_id, "ingest", [Point("topic", topic)])
        good = await client.create_node(client.root_id, "ingest", [Point("subject", "plant.*")])
        await wait_listening(client, good)
        for source, node in bad.items():
            error = await wait_point(client, node, "error")
            assert str(error.value).startswith("invalid config: "), error.value
            assert "is refused" in error.value and repr(source) in error.value, error.value
            assert (await client.get_node(node)).value(STATE_POINT) is None  # never listened

        # a node that worked and is turned to a refused filter stops, with the error point
        turned = await client.create_node(client.root_id, "ingest", [Point("subject", "turned.*")])
        await wait_listening(client, turned)
        await client.send_points(turned, [Point("subject", "sync.>")])
        await wait_point(client, turned, "error", where=lambda p: "'sync.>' is refused" in str(p.value))

        # siot's own subjects each have exactly one responder: siot, not an ingest node
        [stats] = await replies(client, subjects.STATS)
        assert stats["ready"] is True
        assert stats["ingest"]["received"] == 0
        [status] = await replies(client, protocol.STATUS)
        assert status["ok"] is True
        [history] = await replies(client, subjects.history(good), encode({"type": "x"}))
        assert "message on" not in json.dumps(history)
        [node] = await replies(client, subjects.nodes(client.root_id, good))
        assert "message on" not in json.dumps(node)
        # a sync request gets the sync server's answer (an unknown edge is refused by it)
        sync_replies = await replies(client, protocol.state("no-such-edge"), encode({}))
        assert len(sync_replies) == 1 and "message on" not in json.dumps(sync_replies)

        # the good node still ingests, and the API still takes writes
        assert await client.request("plant.boiler", json.dumps({"temp": 80}).encode()) == {"ok": True}
        [device] = await wait_children(client, good, 1)
        assert (await wait_point(client, device.id, "temp")).value == 80
        probe = await client.create_node(client.root_id, "device")
        await client.send_points(probe, [Point("value", 1)])
        assert (await client.get_node(probe)).value("value") == 1


async def test_max_devices_stops_at_the_limit_while_known_devices_ingest(siot_process: SiotProcess) -> None:
    proc = siot_process
    async with connected(proc) as client:
        node = await client.create_node(
            client.root_id,
            "ingest",
            [Point("subject", "farm.*"), Point("deviceField", "id"), Point("maxDevices", 5)],
        )
        await wait_listening(client, node)
        # one message naming 50 devices: the first 5 are created, then the message is refused
        flood = [{"id": f"d{i}", "t": i} for i in range(50)]
        with pytest.raises(RequestFailed, match=r"device limit reached: .* 5 devices \(maxDevices 5\)"):
            await client.request("farm.gw", json.dumps(flood).encode())
        error = await wait_point(client, node, "error")
        assert "device limit reached" in error.value and "'d5'" in error.value, error.value
        assert len(await client.children(node)) == 5

        # devices that exist keep ingesting; new ones keep being refused, one error point
        for i in range(5):
            assert await client.request("farm.gw", json.dumps({"id": f"d{i}", "t": 100 + i}).encode()) == {
                "ok": True
            }
        for i in range(20):
            with pytest.raises(RequestFailed, match="device limit reached"):
                await client.request("farm.gw", json.dumps({"id": f"new{i}", "t": 1}).encode())
        devices = await client.children(node)
        assert len(devices) == 5
        assert sorted(d.value("t") for d in devices) == [100, 101, 102, 103, 104]
        errors = [p for p in (await client.get_node(node)).points if p.type == "error"]
        assert len(errors) == 1  # updated, not one per message
        stats = (await client.stats())["ingest"]
        assert stats["deviceLimit"] == 21 and stats["refused"] == 21 and stats["received"] == 26

        # raising the limit lets new devices in
        await client.send_points(node, [Point("maxDevices", 6)])
        await wait_point(client, node, "maxDevices", 6)

        async def created() -> bool:
            try:
                return await client.request("farm.gw", json.dumps({"id": "late", "t": 1}).encode()) == {
                    "ok": True
                }
            except RequestFailed:
                return False

        for _ in range(200):  # the manager applies the new limit just after its commit
            if await created():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("maxDevices 6 not applied within 10 s")
        assert len(await client.children(node)) == 6
        # the limit holds across a restart (devices are found again by name)
    await asyncio.to_thread(proc.stop)
    await asyncio.to_thread(proc.start)
    async with connected(proc) as client:
        await wait_listening(client, node)
        with pytest.raises(RequestFailed, match="device limit reached"):
            await client.request("farm.gw", json.dumps({"id": "after", "t": 1}).encode())
        assert await client.request("farm.gw", json.dumps({"id": "d0", "t": 7}).encode()) == {"ok": True}
        assert len(await client.children(node)) == 6


async def test_max_devices_out_of_range_is_an_error_point(siot_process: SiotProcess) -> None:
    async with connected(siot_process) as client:
        node = await client.create_node(
            client.root_id, "ingest", [Point("subject", "farm.*"), Point("maxDevices", 1e300)]
        )
        error = await wait_point(client, node, "error")
        assert "maxDevices" in error.value, error.value
        slow = await client.create_node(
            client.root_id, "ingest", [Point("subject", "x.*"), Point("ackWait", 1e300)]
        )
        error = await wait_point(client, slow, "error")
        assert "ackWait" in error.value and "out of range" in error.value, error.value
        assert (await client.stats())["ready"] is True
