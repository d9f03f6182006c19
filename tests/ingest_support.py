"""Waiting on committed changes (not on sleeps) for the ingest, archive and simulator tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from siot.client import Client, NodeInfo
from siot.nodes.listener import ListenerState, wait_state
from siot.points import Point

T = TypeVar("T")
WAIT_S = 10.0


async def until(client: Client, node: str, check: Callable[[], Awaitable[T | None]]) -> T:
    """Re-check after every committed change at or under `node` until `check` gives a value.
    The change feed is open before the first check, so nothing committed in between is missed."""
    async with client.changes(node) as changes, asyncio.timeout(WAIT_S):
        while (result := await check()) is None:
            await changes.get()
        return result


async def wait_children(client: Client, parent: str, count: int) -> list[NodeInfo]:
    async def check() -> list[NodeInfo] | None:
        kids = await client.children(parent)
        return kids if len(kids) >= count else None

    return await until(client, parent, check)


async def wait_point(
    client: Client,
    node: str,
    ptype: str,
    value: object = None,
    *,
    where: Callable[[Point], bool] | None = None,
) -> Point:
    """The node's current `ptype` point once it exists (and has `value`, and satisfies `where`,
    when given)."""

    async def check() -> Point | None:
        for p in (await client.get_node(node)).points:
            if p.type == ptype and (value is None or p.value == value) and (where is None or where(p)):
                return p
        return None

    return await until(client, node, check)


async def wait_listening(client: Client, node: str) -> None:
    """An ingest or archive node says `listening` once its subscriptions are live."""
    await wait_state(client, node, ListenerState.LISTENING, timeout_s=WAIT_S)
