"""The node-client manager inside a real in-process App (real nats-server, real SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pydantic
import pytest
from support import free_port

from siot.app import App, ServeConfig
from siot.client import Change, Client
from siot.nodes.manager import NodeManager
from siot.points import Point
from siot.runtime import AppContext


class GreeterConfig(pydantic.BaseModel):
    id: str
    parent: str
    description: str = ""
    greeting: str
    repeat: int = 1


class Greeter:
    """Writes `said` = greeting * repeat on start and on every update."""

    events: asyncio.Queue[tuple[str, str]]

    def __init__(self, ctx: AppContext, config: GreeterConfig) -> None:
        self.ctx = ctx
        self.config = config

    async def _say(self) -> None:
        said = self.config.greeting * self.config.repeat
        await self.ctx.client.send_points(self.config.id, [Point("said", said, origin=self.config.id)])
        await Greeter.events.put(("said", said))

    async def start(self) -> None:
        await self._say()

    async def update(self, config: GreeterConfig, change: Change | None) -> None:
        self.config = config
        await self._say()

    async def stop(self) -> None:
        await Greeter.events.put(("stopped", self.config.id))


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[AppContext]:
    """A running in-process App's context, with a fresh queue for the greeters' events."""
    Greeter.events = asyncio.Queue()
    config = ServeConfig(data_dir=tmp_path / "data", nats_port=free_port(), monitor_port=0)
    async with App(config) as running:
        assert running.context is not None
        yield running.context


@asynccontextmanager
async def greeter_manager(ctx: AppContext) -> AsyncIterator[NodeManager[GreeterConfig]]:
    async with NodeManager(ctx, "greeter", GreeterConfig, Greeter) as manager:
        yield manager


async def next_event() -> tuple[str, str]:
    async with asyncio.timeout(5):
        return await Greeter.events.get()


async def test_manager_starts_updates_and_stops_runners(ctx: AppContext) -> None:
    client = ctx.client
    existing = await client.create_node(client.root_id, "greeter", [Point("greeting", "hi")])
    async with greeter_manager(ctx) as manager:
        assert await next_event() == ("said", "hi")  # found at start
        assert list(manager.runners) == [existing]
        new = await client.create_node(client.root_id, "greeter", [Point("greeting", "yo")])
        assert await next_event() == ("said", "yo")  # created later
        await client.send_points(new, [Point("repeat", 3)])
        assert await next_event() == ("said", "yoyoyo")  # reconfigured, own echo ignored
        await client.delete_node(new, client.root_id)
        assert await next_event() == ("stopped", new)
        broken = await client.create_node(client.root_id, "greeter", [Point("repeat", "x")])
        async with client.changes(broken) as changes:
            while True:
                change = await asyncio.wait_for(changes.get(), 5)
                error = [p for p in change.points if p.type == "error"]
                if error:
                    break
        assert "greeting" in error[0].value and error[0].origin == broken
        assert broken not in manager.runners
    assert await next_event() == ("stopped", existing)


async def test_a_node_being_created_gets_no_spurious_error(ctx: AppContext) -> None:
    client = ctx.client
    async with greeter_manager(ctx), client.changes() as changes:
        node = await client.create_node(client.root_id, "greeter", [Point("greeting", "hey")])
        assert await next_event() == ("said", "hey")
        seen = []
        async with asyncio.timeout(5):
            while not any(p.type == "said" for p in seen):
                change = await changes.get()
                if change.node == node and change.parent is None:
                    seen.extend(change.points)
        assert [p.type for p in seen if p.type == "error"] == []


async def test_a_change_that_leaves_the_config_as_it_was_is_not_an_update(ctx: AppContext) -> None:
    client = ctx.client
    node = await client.create_node(client.root_id, "greeter", [Point("greeting", "hi")])
    async with greeter_manager(ctx):
        assert await next_event() == ("said", "hi")
        # A point the config does not have, and a rewrite of the same greeting: no new config.
        await client.send_points(node, [Point("note", "ignored by the model")])
        await client.send_points(node, [Point("greeting", "hi")])
        await client.send_points(node, [Point("repeat", 2)])
        # Events come in order: a spurious update would have said "hi" again before this.
        assert await next_event() == ("said", "hihi")


class Touchy(Greeter):
    """A greeter whose runner raises on start and on update when the greeting is "boom"."""

    async def start(self) -> None:
        if self.config.greeting == "boom":
            raise RuntimeError("cannot say boom")
        await super().start()

    async def update(self, config: GreeterConfig, change: Change | None) -> None:
        if config.greeting == "boom":
            raise RuntimeError("cannot say boom")
        await super().update(config, change)


async def wait_error(client: Client, node: str, pred: Callable[[Any], bool]) -> Any:
    async with asyncio.timeout(5), client.changes(node) as changes:
        current = (await client.get_node(node)).value("error")
        if pred(current):
            return current
        async for change in changes:
            if change.node == node and change.parent is None:
                for p in change.points:
                    if p.type == "error":
                        value = None if p.deleted else p.value
                        if pred(value):
                            return value


async def test_a_runner_that_raises_is_an_error_on_its_node_and_the_others_run(ctx: AppContext) -> None:
    """Issue 12: a runner's exception on start used to stop the manager (and `siot serve`)."""
    client = ctx.client
    bad = await client.create_node(client.root_id, "greeter", [Point("greeting", "boom")])
    good = await client.create_node(client.root_id, "greeter", [Point("greeting", "hi")])
    async with NodeManager(ctx, "greeter", GreeterConfig, Touchy) as manager:
        # the runner that failed to start is stopped (to release what it had started)
        assert {await next_event(), await next_event()} == {("said", "hi"), ("stopped", bad)}
        assert list(manager.runners) == [good]
        error = await wait_error(client, bad, lambda v: isinstance(v, str))
        assert error == "failed to start: RuntimeError: cannot say boom"
        await client.send_points(bad, [Point("greeting", "ok")])  # fixed: it starts, error deleted
        assert await next_event() == ("said", "ok")
        await wait_error(client, bad, lambda v: v is None)
        await client.send_points(good, [Point("greeting", "boom")])  # an update that raises
        error = await wait_error(client, good, lambda v: isinstance(v, str))
        assert error == "failed to update: RuntimeError: cannot say boom"
        assert await next_event() == ("stopped", good)
        assert sorted(manager.runners) == [bad]
