"""Helpers for the sync tests: build trees fast, snapshot a subtree, wait for sync to settle."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from support import SiotProcess

from siot import subjects
from siot.client import Client
from siot.codec import encode
from siot.errors import RequestFailed
from siot.points import Point
from siot.store.tree import NODE_TYPE, TOMBSTONE
from siot.sync import protocol

POLL_S = 0.05


async def start(proc: SiotProcess) -> SiotProcess:
    """`SiotProcess.start` runs its own event loop: give it a thread."""
    return await asyncio.to_thread(proc.start)


async def connect(proc: SiotProcess) -> Client:
    """A client of `proc` with its root loaded."""
    client = await Client.connect(proc.url, reconnect_forever=False)
    await client.load_root()
    return client


async def until(check: Callable[[], Awaitable[Any]], timeout_s: float = 30.0) -> Any:
    """Re-check a condition across processes until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(POLL_S)


async def build_tree(client: Client, root: str, fanout: int, per_branch: int) -> list[str]:
    """`fanout` branches under `root`, each with `per_branch` leaves; published without waiting
    for each ack (one connection keeps order), then one acked write proves all are committed."""
    nodes = []
    for b in range(fanout):
        branch = str(uuid.uuid4())
        await client.send_edge_points(
            branch, root, [Point(NODE_TYPE, "group"), Point(TOMBSTONE, 0)], ack=False
        )
        await client.send_points(branch, [Point("description", f"branch {b}")], ack=False)
        nodes.append(branch)
        for leaf in range(per_branch):
            node = str(uuid.uuid4())
            await client.send_edge_points(
                node, branch, [Point(NODE_TYPE, "device"), Point(TOMBSTONE, 0)], ack=False
            )
            await client.send_points(
                node, [Point("description", f"leaf {b}.{leaf}"), Point("value", leaf)], ack=False
            )
            nodes.append(node)
    await client.send_points(root, [Point("built", len(nodes))])
    return nodes


async def snapshot(client: Client, top: str) -> dict[Any, Any]:
    """Everything below and at `top` as comparable data (the edge `parent -> top` excluded)."""
    result: dict[Any, Any] = {}
    stack = [top]
    seen = {top}
    while stack:
        node = stack.pop()
        info = (await client.nodes(subjects.ALL, node, deleted=True))[0]
        result[node] = sorted(
            (p.type, p.key, p.time, repr(p.value), p.tombstone, p.origin) for p in info.points
        )
        for child in await client.children(node, deleted=True):
            result[(node, child.id)] = sorted(
                (p.type, p.key, p.time, repr(p.value), p.tombstone, p.origin) for p in child.edge_points
            )
            if child.id not in seen:
                seen.add(child.id)
                stack.append(child.id)
    return result


async def sync_status(client: Client) -> dict[str, Any]:
    return await client.request(protocol.STATUS, encode({}))


async def upstream_peers(client: Client) -> list[dict[str, Any]]:
    """The instance's upstream peer records; none while its sync service is still starting
    (`SiotProcess.start` returns when the API answers, before node clients are up)."""
    try:
        status = await sync_status(client)
    except RequestFailed:
        return []
    return [p for p in status["peers"] if p["role"] == "upstream"]


async def upstream_settled(edge: Client) -> dict[str, Any] | None:
    """The edge's upstream peer record once it is connected, caught up and digest-verified."""
    for peer in await upstream_peers(edge):
        if peer["state"] == "connected" and peer["backlog"] == 0 and peer["digestOk"]:
            return peer
    return None
