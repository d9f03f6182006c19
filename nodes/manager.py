"""The node-client manager (Simple IoT's client-manager pattern): one manager per node type.

It finds every live node of its type in the tree, decodes the node's points into a typed
pydantic config, runs one `NodeRunner` per node, passes later point changes on, and stops the
runner when the node is deleted.

A node's problem stays that node's: a config the model refuses, and any exception while starting,
updating or stopping its runner, becomes an `error` point on the node and one WARNING log line
naming it. The manager goes on with the other nodes, and `siot serve` starts whatever the tree
holds. A node that failed is retried when its points change; the error the manager wrote is
deleted (tombstoned) once the node runs.

Writes from runners go through the in-process client (the one write path, DESIGN §1), with
`origin` set to the node id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import pydantic

from siot.bus import Change, Scope, Watch
from siot.client import NodeInfo
from siot.errors import SiotError
from siot.nodes.config import ConfigError, NodeConfig, decode_config
from siot.points import NODE_TYPE, TOMBSTONE, Point
from siot.runtime import AppContext
from siot.store.tree import ROOT_PARENT as ROOT

logger = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=pydantic.BaseModel)


# How the errors this manager writes begin, so that one left from before a restart is known as
# the manager's to delete once the node runs (a runner's own `error` points are left alone).
ERROR_PREFIXES = ("invalid config:", "failed to start:", "failed to update:", "internal error:")


class ManagedConfig(NodeConfig):
    """Base of a managed node's config: the fields every node of a NodeManager has. `id` and
    `parent` come from the tree; the others are points (`siot.nodes.config.decode_config`). Point names
    may be used as aliases (camelCase), unknown points are ignored, floats are finite, and
    durations are `siot.nodes.config.Duration`s with bounds."""

    id: str
    parent: str
    description: str = ""
    disabled: bool = False


class NodeRunner(Protocol[ConfigT]):
    """One running node. `start` returns once it is working; `update` gets every config that
    differs from the last one it was given (a change that leaves the decoded config as it was,
    such as the fan-out of the very points `start` was read from, is not passed on); `stop` must
    release everything (tasks, sockets) before it returns."""

    async def start(self) -> None: ...

    async def update(self, config: ConfigT, change: Change | None) -> None: ...

    async def stop(self) -> None: ...


RunnerFactory = Callable[[AppContext, ConfigT], NodeRunner[ConfigT]]


class NodeManager(Generic[ConfigT]):
    """Runs a `NodeRunner` for every live node of `node_type`. Use as an async context manager;
    on enter, runners for existing nodes have started; on exit, all have stopped.

    It watches narrowly (siot/bus.py), so a daemon full of managers is not shown every write
    once per manager: edge changes (rare) reveal nodes of its type, and each such node's own
    points arrive through a watch of that node. Changes are handled one at a time, in commit
    order, by the manager's own task.
    """

    def __init__(
        self, ctx: AppContext, node_type: str, model: type[ConfigT], factory: RunnerFactory[ConfigT]
    ) -> None:
        self.ctx = ctx
        self.node_type = node_type
        self.model = model
        self.factory = factory
        self.runners: dict[str, NodeRunner[ConfigT]] = {}
        self._configs: dict[str, ConfigT] = {}  # what each runner was last started or updated with
        self._watched: dict[str, Watch] = {}
        self._edge_watch: Watch | None = None
        self._errors: dict[str, str] = {}  # node -> the error this manager has written on it
        # Changes of our nodes and of every edge, in commit order, for `_consume`.
        self._changes: asyncio.Queue[Change] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NodeManager[ConfigT]:
        # Watch before reading the tree, so a node created meanwhile is queued, not missed.
        self._edge_watch = self.ctx.client.watch(ROOT, Scope.EDGES, self._on_change_committed)
        tree = self.ctx.store.tree
        for (_parent, node), state in list(tree.edges.items()):
            if state.node_type == self.node_type and tree.live_parents(node):
                await self._guarded(node, self._watch(node))
        self._consumer = asyncio.create_task(self._consume(), name=f"{self.node_type} manager")
        logger.info("%s manager: %d node(s) running", self.node_type, len(self.runners))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._edge_watch is not None:
            self._edge_watch.cancel()
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        for node in list(self._watched):
            await self._unwatch(node)

    def _on_change_committed(self, _ancestor: str, change: Change) -> None:
        if self._is_ours(change.node):
            self._changes.put_nowait(change)

    async def _consume(self) -> None:
        while True:
            change = await self._changes.get()
            await self._guarded(change.node, self._on_change(change))

    async def _guarded(self, node: str, work: Awaitable[None]) -> None:
        """Run `work` for `node`; whatever it raises is the node's error, not the manager's."""
        try:
            await work
        except Exception as exc:
            logger.debug("%s manager: %s failed", self.node_type, node, exc_info=True)
            await self.report_error(node, f"internal error: {_exception(exc)}")

    def _is_ours(self, node: str) -> bool:
        return self.ctx.store.tree.node_type(node) == self.node_type and self.ctx.manages(node)

    async def _on_change(self, change: Change) -> None:
        node = change.node
        if change.parent is not None:
            if any(p.type in (TOMBSTONE, NODE_TYPE) for p in change.points):
                if self.ctx.store.tree.live_parents(node):
                    await self._watch(node)
                else:
                    await self._unwatch(node)
            return
        if self._own_echo(node, change):
            return
        await self._refresh(node, change)

    async def _watch(self, node: str) -> None:
        """Follow a node's own points; watch before reading it so no write falls between."""
        if node not in self._watched:
            self._watched[node] = self.ctx.client.watch(node, Scope.OWN, self._on_change_committed)
        await self._refresh(node, None)

    async def _unwatch(self, node: str) -> None:
        watch = self._watched.pop(node, None)
        if watch is not None:
            watch.cancel()
        await self._stop(node)

    @staticmethod
    def _own_echo(node: str, change: Change) -> bool:
        """Points the runner wrote itself (origin = its node id) do not reconfigure it."""
        return all(p.origin == node for p in change.points)

    async def _refresh(self, node: str, change: Change | None) -> None:
        try:
            info = await self.ctx.client.get_node(node, deleted=False)
        except SiotError:
            await self._stop(node)
            return
        if not info.points and node not in self.runners:
            # `create_node` writes the edge before the points: wait for them rather than
            # reporting an "invalid config" that is only a node half-way through creation.
            return
        try:
            config = decode_config(self.model, info.points, id=info.id, parent=info.parent)
        except ConfigError as exc:
            await self._fail(node, f"invalid config: {str(exc).removeprefix('invalid config: ')}")
            return
        runner = self.runners.get(node)
        starting = runner is None
        try:
            if runner is None:
                runner = self.factory(self.ctx, config)
                self.runners[node] = runner
                self._configs[node] = config
                await runner.start()
                logger.info("%s manager: started %s", self.node_type, node)
            elif config != self._configs.get(node):
                self._configs[node] = config
                await runner.update(config, change)
        except Exception as exc:
            logger.debug("%s manager: %s failed", self.node_type, node, exc_info=True)
            await self._fail(node, f"failed to {'start' if starting else 'update'}: {_exception(exc)}")
            return
        await self._clear_error(node, info)

    async def _fail(self, node: str, message: str) -> None:
        """The node cannot run as configured: say why on the node, and stop its runner (the next
        change of its points tries again)."""
        await self.report_error(node, message)
        await self._stop(node)

    async def _stop(self, node: str) -> None:
        runner = self.runners.pop(node, None)
        self._configs.pop(node, None)
        if runner is not None:
            try:
                await runner.stop()
            except Exception as exc:
                logger.debug("%s manager: stopping %s failed", self.node_type, node, exc_info=True)
                logger.warning("%s %s: stop failed: %s", self.node_type, node, _exception(exc))
            else:
                logger.info("%s manager: stopped %s", self.node_type, node)

    async def report_error(self, node: str, message: str) -> None:
        """Record an error on the node as an `error` point written with the node as origin, and
        log it as a WARNING naming the node (a bad node is not an error of the daemon)."""
        if self._errors.get(node) == message:
            return  # said already (a node being created is refreshed more than once)
        logger.warning("%s %s: %s", self.node_type, node, message)
        self._errors[node] = message
        with contextlib.suppress(SiotError):
            await self.ctx.client.send_points(node, [Point("error", message, origin=node)])

    async def _clear_error(self, node: str, info: NodeInfo) -> None:
        """Delete the error this manager wrote on a node that now runs: written in this process,
        or before a restart (recognised by its prefix)."""
        current = info.value("error")
        ours = node in self._errors or (isinstance(current, str) and current.startswith(ERROR_PREFIXES))
        self._errors.pop(node, None)
        if current is not None and ours:
            with contextlib.suppress(SiotError):
                await self.ctx.client.send_points(node, [Point("error", "", origin=node, tombstone=1)])


def _exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def managed(
    node_type: str, model: type[ConfigT], factory: RunnerFactory[ConfigT]
) -> Callable[[AppContext], contextlib.AbstractAsyncContextManager[NodeManager[ConfigT]]]:
    """The node-client factory for a type whose nodes each get one runner, for
    siot/node_clients.py: `managed(TYPE, Config, Runner)`."""

    def start(ctx: AppContext) -> NodeManager[ConfigT]:
        return NodeManager(ctx, node_type, model, factory)

    return start
