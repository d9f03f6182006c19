"""No reply is silently dropped: replies that would exceed nats-server's max_payload (8 MB) are
paged (`next`/`after`), the client library and the CLI page through, and a node too big for any
reply gets an error that says what to do. Deep trees need no recursion. Against a real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid

import pytest
from support import SIOT_BIN, SiotProcess

from siot import subjects
from siot.client import Client
from siot.cmd.common import deeply
from siot.codec import encode
from siot.errors import RequestFailed
from siot.points import Point
from siot.store.tree import NODE_TYPE, TOMBSTONE

BIG_TEXT = "d" * 6_000
T0 = 1_700_000_000_000_000_000


async def add_children(client: Client, parent: str, count: int) -> list[str]:
    """`count` children with 6 KB descriptions, published without waiting, then one ack."""
    ids = []
    for i in range(count):
        node = str(uuid.uuid4())
        await client.send_edge_points(
            node, parent, [Point(NODE_TYPE, "device"), Point(TOMBSTONE, 0)], ack=False
        )
        await client.send_points(node, [Point("description", f"{i} {BIG_TEXT}")], ack=False)
        ids.append(node)
    await client.send_points(parent, [Point("built", count)])
    return ids


async def test_a_listing_larger_than_max_payload_arrives_in_pages(siot: Client) -> None:
    parent = await siot.create_node(siot.root_id, "group")
    ids = await add_children(siot, parent, 1_500)  # ~9 MB of node wire: more than one reply
    first = await siot.request(subjects.nodes(parent, subjects.ALL), encode({}))
    assert "next" in first and 0 < len(first["nodes"]) < 1_500
    children = await siot.children(parent)
    assert sorted(c.id for c in children) == sorted(ids)
    assert all(c.value("description").endswith(BIG_TEXT) for c in children)


async def test_history_larger_than_max_payload_arrives_in_pages(siot: Client) -> None:
    node = await siot.create_node(siot.root_id, "device")
    for start in range(0, 3_000, 500):  # 3,000 readings of 4 KB: ~12 MB of history
        await siot.send_points(
            node, [Point("log", "x" * 4_000, time=T0 + i) for i in range(start, start + 500)]
        )
    history = await siot.history(node, "log", limit=10_000)
    assert [p.time for p in history] == [T0 + i for i in range(3_000)]
    assert len(await siot.history(node, "log", limit=2_500)) == 2_500


async def test_a_node_too_big_for_any_reply_says_how_to_read_it(siot: Client) -> None:
    node = await siot.create_node(siot.root_id, "device")
    await siot.send_points(node, [Point("image", "a" * 5_000_000)])
    await siot.send_points(node, [Point("image", "b" * 5_000_000, key="2")])
    with pytest.raises(
        RequestFailed, match=f"over the .*-byte reply limit: read its points with history.{node}"
    ):
        await siot.get_node(node)
    images = await siot.history(node, "image")  # one per page
    assert sorted(len(p.value) for p in images) == [5_000_000, 5_000_000]
    assert (await siot.stats())["ready"]  # and the daemon answers as before


DEPTH = 400  # past the ~300 levels at which a recursive walk or a YAML/JSON document broke


async def test_a_deep_tree_is_listed_without_recursion(siot_process: SiotProcess, siot: Client) -> None:
    # The tree is to be one chain: without the first admin (siot/users.py bootstrap_admin).
    for admin in await siot.children(siot.root_id, type="user"):
        await siot.delete_node(admin.id, siot.root_id)
    parent = siot.root_id
    for depth in range(DEPTH):
        node = f"deep-{depth}"
        # Every 50th acked: each new level fans out to all the levels above it.
        ack = depth % 50 == 49
        await siot.send_edge_points(node, parent, [Point(NODE_TYPE, "group"), Point(TOMBSTONE, 0)], ack=ack)
        parent = node
    await siot.send_points(parent, [Point("description", "bottom")])
    tree = await siot.tree()
    depth = 0
    while tree.children:
        (tree,) = tree.children
        depth += 1
    assert depth == DEPTH

    async def cli(*args: str, stdin: str | None = None) -> str:
        """The command's stdout and stderr."""
        result = await asyncio.to_thread(
            subprocess.run,
            [SIOT_BIN, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SIOT_URL": siot_process.url},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    # JSON and YAML nest two levels per tree level: (de)serialised on a deep-stack thread.
    document = deeply(json.loads, await cli("tree", "--json"))  # nothing on stderr
    depth = 0
    while document["children"]:
        (document,) = document["children"]
        depth += 1
    assert depth == DEPTH
    assert {"type": "description", "value": "bottom"}.items() <= document["points"][0].items()
    exported = await cli("export")
    assert exported.count("children:") == DEPTH
    imported = await cli("import", stdin=exported)
    assert "imported: 0 nodes created, 0 points written" in imported  # all of it read, idempotent
    lines = (await cli("tree")).splitlines()
    assert len(lines) == DEPTH + 1
    assert lines[-1].endswith("└── bottom (group)") or "bottom" in lines[-1]
