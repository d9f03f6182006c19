"""The in-process client: how the daemon's node clients reach the instance they run in.

Same methods as the NATS `Client` (both are `BaseClient`s), same checks and errors as the wire
(siot/write_path.py), and a write with `ack` returns after commit, as over NATS. What it saves is
the transport (DESIGN §1): no encoding, no nats-server round trip, no decoding, no reply subject;
reads come from the store and the in-memory tree, and changes arrive from the `ChangeBus` as
objects.

Errors are raised as the `SiotError` that refused the write (`InvalidInput`, `StoreBusy`,
`StoreError`), where the NATS client raises `RequestFailed` with the same message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Self

from siot import subjects
from siot.bus import Change, ChangeBus, ChangeCallback, Scope, Watch
from siot.client import HISTORY_END_NS, BaseClient, ChangeStream, NodeInfo
from siot.errors import UnknownNode
from siot.points import Point
from siot.reads import selected_edges
from siot.store import Store
from siot.write_path import WritePath

logger = logging.getLogger(__name__)


class LocalChanges(ChangeStream):
    """Committed changes at and under a node, from the bus. A watcher that falls `max_pending`
    changes behind loses the newest ones, with a warning (nats-py's slow-consumer rule)."""

    def __init__(self, bus: ChangeBus, node: str, max_pending: int) -> None:
        super().__init__(node, max_pending)
        self._bus = bus
        self._watch: Watch | None = None
        self.dropped = 0

    def _on_change(self, _ancestor: str, change: Change) -> None:
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("changes of %s: the reader fell behind; dropping changes", self.node)

    async def __aenter__(self) -> Self:
        self._watch = self._bus.watch(self.node, Scope.SUBTREE, self._on_change)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watch is not None:
            self._watch.cancel()


class LocalClient(BaseClient):
    """A node client's handle on the instance it runs in."""

    def __init__(self, write_path: WritePath, bus: ChangeBus) -> None:
        self.write_path = write_path
        self.store: Store = write_path.store
        self.bus = bus
        self._root_id = self.store.root_id

    # ---- writes ----

    def submit(self, node: str, points: Sequence[Point], *, parent: str = "") -> asyncio.Future[list[Point]]:
        """Queue a write without waiting: writes are committed in the order they are submitted,
        and the future resolves after commit (to the points that changed) or raises the write's
        error. Raises at once what is refused before queueing (bad input, a full store)."""
        return self.write_path.submit_points(node, points, parent=parent)

    async def _send(self, node: str, parent: str, points: Sequence[Point], ack: bool) -> None:
        future = self.submit(node, points, parent=parent)
        if ack:
            await future
        else:
            # Like a NATS publish without a reply: nobody waits; the API's commit listener
            # counts an error (siot.stats `errors`).
            future.add_done_callback(_consume)

    # ---- reads ----

    async def nodes(
        self, parent: str, node: str = subjects.ALL, *, type: str | None = None, deleted: bool = False
    ) -> list[NodeInfo]:
        store = self.store
        found = []
        for edge_parent, child, _ in selected_edges(
            store.tree, store.root_id, parent, node, node_type=type, deleted=deleted
        ):
            state = store.tree.edge(edge_parent, child)
            if state is None:  # the tree was reloaded from disk meanwhile (a failed commit)
                continue
            found.append(
                NodeInfo(
                    child,
                    state.node_type,
                    edge_parent,
                    await store.node_points(child),
                    await store.edge_points(edge_parent, child),
                )
            )
        return found

    async def history(
        self,
        node: str,
        type: str | None = None,
        key: str | None = None,
        *,
        start_ns: int = 0,
        end_ns: int = HISTORY_END_NS,
        limit: int = 10_000,
    ) -> list[Point]:
        if not self.store.tree.has_node(node):
            raise UnknownNode(node)
        return await self.store.history(node, type=type, key=key, start=start_ns, end=end_ns, limit=limit)

    # ---- changes ----

    def changes(self, node: str = subjects.ROOT, *, max_pending: int = 100_000) -> LocalChanges:
        return LocalChanges(self.bus, node, max_pending)

    def watch(self, ancestor: str, scope: Scope, callback: ChangeCallback) -> Watch:
        """Call `callback(ancestor, change)` in the commit listener for each matching change (see
        siot/bus.py: quick, no awaiting); live at once."""
        return self.bus.watch(ancestor, scope, callback)


def _consume(future: asyncio.Future[list[Point]]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed write nobody awaits must not warn at exit
