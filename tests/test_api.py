"""The NATS API of a real `siot serve` process (DESIGN §3)."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest

from siot.client import Client
from siot.errors import RequestFailed
from siot.points import Point


async def raw_request(client: Client, subject: str, payload: bytes) -> dict:
    msg = await client.nc.request(subject, payload, timeout=5)
    return msgpack.unpackb(msg.data)


async def test_root_exists_with_hostname_description(siot: Client) -> None:
    root = await siot.root()
    assert root.type == "device"
    assert root.parent == "root"
    assert root.description  # the hostname


async def test_points_roundtrip_and_ack_after_commit(siot: Client) -> None:
    node = await siot.create_node(siot.root_id, "device", [Point("description", "d1")])
    await siot.send_points(node, [Point("temp", 21.5, time=1000), Point("count", -200, time=1000)])
    info = await siot.get_node(node)
    assert info.value("temp") == 21.5
    assert info.value("count") == -200 and isinstance(info.value("count"), int)
    assert info.type == "device" and info.parent == siot.root_id


async def test_json_payload_with_rfc3339_time(siot: Client) -> None:
    node = await siot.create_node(siot.root_id, "device")
    payload = json.dumps([{"type": "temp", "value": 3, "time": "2024-01-02T03:04:05.123456789Z"}]).encode()
    reply = await raw_request(siot, f"p.{node}", payload)
    assert reply == {"ok": True}
    points = await siot.history(node, "temp")
    assert points[0].time == 1704164645123456789
    assert points[0].value == 3 and isinstance(points[0].value, int)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1garbage", "malformed msgpack"),
        (b"[{not json", "malformed JSON"),
        (msgpack.packb([{"type": "a.b", "value": 1}]), "illegal character"),
        (msgpack.packb([{"type": "t", "value": 1, "time": "x"}]), "field 'time'"),
        (json.dumps([{"type": "t", "value": 2**70}]).encode(), "field 'value'"),
        (msgpack.packb([{"value": 1}]), "field 'type'"),
        (msgpack.packb([{"type": "t", "bogus": 1}]), "unknown field"),
        (msgpack.packb([{"type": "t", "value": 1}] * 10_001), "batch too large"),
        (msgpack.packb(5), "must be an array"),
    ],
)
async def test_bad_input_is_refused_whole_and_counted(siot: Client, payload: bytes, message: str) -> None:
    node = await siot.create_node(siot.root_id, "device")
    await siot.send_points(node, [Point("keep", 1, time=10)])
    reply = await raw_request(siot, f"p.{node}", payload)
    assert message in reply["error"]
    stats = await siot.stats()
    assert stats["errors"][node] == 1
    info = await siot.get_node(node)
    assert [p.type for p in info.points] == ["keep"]


async def test_bad_batch_stores_nothing(siot: Client) -> None:
    node = await siot.create_node(siot.root_id, "device")
    batch = msgpack.packb([{"type": "good", "value": 1}, {"type": "bad type", "value": 2}])
    reply = await raw_request(siot, f"p.{node}", batch)
    assert reply["error"].startswith("point 1, field 'type'")
    assert (await siot.get_node(node)).points == []


async def test_unknown_node_and_missing_node_type(siot: Client) -> None:
    with pytest.raises(RequestFailed, match="unknown node 'ghost'"):
        await siot.send_points("ghost", [Point("temp", 1)])
    with pytest.raises(RequestFailed, match="needs a nodeType"):
        await siot.send_edge_points("ghost", siot.root_id, [Point("tombstone", 0)])


async def test_illegal_subject_tokens(siot: Client) -> None:
    reply = await raw_request(siot, "p.a.b.c", msgpack.packb([{"type": "t"}]))
    assert "must be p.<node>" in reply["error"]


async def test_cycle_refused_and_root_protected(siot: Client) -> None:
    a = await siot.create_node(siot.root_id, "group")
    b = await siot.create_node(a, "group")
    with pytest.raises(RequestFailed, match="cycle"):
        await siot.send_edge_points(a, b, [Point("nodeType", "group")])
    with pytest.raises(RequestFailed, match="cycle"):
        await siot.send_edge_points(a, a, [Point("nodeType", "group")])
    with pytest.raises(RequestFailed, match="cannot be deleted"):
        await siot.delete_node(siot.root_id, "root")


async def test_delete_undelete_move(siot: Client) -> None:
    a = await siot.create_node(siot.root_id, "group")
    b = await siot.create_node(siot.root_id, "group")
    n = await siot.create_node(a, "device")
    await siot.move_node(n, a, b)
    assert [c.id for c in await siot.children(b)] == [n]
    assert await siot.children(a) == []
    assert [c.id for c in await siot.children(a, deleted=True)] == [n]
    await siot.delete_node(n, b)
    assert await siot.children(b) == []
    await siot.undelete_node(n, b)
    assert [c.id for c in await siot.children(b)] == [n]


async def test_nodes_filters(siot: Client) -> None:
    a = await siot.create_node(siot.root_id, "group")
    d = await siot.create_node(a, "device")
    await siot.create_node(a, "rule")
    assert [n.id for n in await siot.children(a, type="device")] == [d]
    parents = await siot.nodes("all", d)
    assert [(n.id, n.parent) for n in parents] == [(d, a)]
    with pytest.raises(RequestFailed, match="unknown node"):
        await siot.children("nope")


async def test_dag_fanout_each_ancestor_once(siot: Client) -> None:
    top = await siot.create_node(siot.root_id, "group")
    left = await siot.create_node(top, "group")
    right = await siot.create_node(top, "group")
    leaf = await siot.create_node(left, "device")
    await siot.mirror_node(leaf, right)  # leaf now under both: a diamond top -> {left,right} -> leaf
    received: list[str] = []
    got_all = asyncio.Event()

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        received.append(msg.subject)
        if len(received) >= 5:
            got_all.set()

    sub = await siot.nc.subscribe(f"up.*.{leaf}", cb=on_msg)
    await siot.nc.flush()
    await siot.send_points(leaf, [Point("temp", 1)])
    async with asyncio.timeout(5):
        await got_all.wait()
    await siot.nc.flush()
    await sub.unsubscribe()
    expected = {f"up.{a}.{leaf}" for a in (leaf, left, right, top, siot.root_id, "root")}
    assert sorted(received) == sorted(expected)  # six subjects, none twice


async def test_changes_iterator_and_history(siot: Client) -> None:
    node = await siot.create_node(siot.root_id, "device")
    async with siot.changes(node) as changes:
        for i in range(3):
            await siot.send_points(node, [Point("v", i, time=1000 + i)])
        seen = [(await changes.get()).points[0].value for _ in range(3)]
    assert seen == [0, 1, 2]
    hist = await siot.history(node, "v", start_ns=1001)
    assert [p.value for p in hist] == [1, 2]
    with pytest.raises(RequestFailed, match="limit"):
        await siot.history(node, "v", limit=0)
