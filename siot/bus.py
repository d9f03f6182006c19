"""The in-process change feed: committed changes handed to the daemon's node clients as objects.

Outside the process, committed changes are published on `up.<ancestor>.<node>[.<parent>]`
(DESIGN §3) and every observer decodes them again. Node clients inside the daemon watch the
same changes here instead (DESIGN §1): no encoding, no trip through nats-server, no decoding.
A watch is the in-process twin of one NATS subscription:

- `Scope.OWN`: the node's own points, `up.<node>.<node>`;
- `Scope.SUBTREE`: everything at and under the node, `up.<node>.>`;
- `Scope.EDGES`: edge changes under the node, `up.<node>.*.*`.

Callbacks run synchronously in the store's commit listener, in commit order, so they must be
quick and must not await: a node client that has work to do queues the change for its own task.
A watch added by a callback is live for the next change, and one cancelled is not called again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from siot.points import Point

logger = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Change:
    """Points committed for `node` (edge points of parent -> node when `parent` is set)."""

    node: str
    parent: str | None
    points: list[Point]


class Scope(Enum):
    OWN = "own"
    SUBTREE = "subtree"
    EDGES = "edges"


# (ancestor the change was delivered for, the change)
ChangeCallback = Callable[[str, Change], None]


@dataclass(slots=True)
class _Watchers:
    """The watches of one ancestor, by scope."""

    own: list[Watch] = field(default_factory=list)
    subtree: list[Watch] = field(default_factory=list)
    edges: list[Watch] = field(default_factory=list)

    def of(self, scope: Scope) -> list[Watch]:
        return self.own if scope is Scope.OWN else self.subtree if scope is Scope.SUBTREE else self.edges

    def empty(self) -> bool:
        return not (self.own or self.subtree or self.edges)


class Watch:
    """One registered callback; `cancel()` removes it (idempotent)."""

    __slots__ = ("_bus", "ancestor", "callback", "scope")

    def __init__(self, bus: ChangeBus, ancestor: str, scope: Scope, callback: ChangeCallback) -> None:
        self._bus: ChangeBus | None = bus
        self.ancestor = ancestor
        self.scope = scope
        self.callback = callback

    def cancel(self) -> None:
        if self._bus is not None:
            self._bus._remove(self)
            self._bus = None


class ChangeBus:
    """Watches by ancestor; `publish` hands one committed change to every matching watch."""

    def __init__(self) -> None:
        self._by_ancestor: dict[str, _Watchers] = {}

    def watch(self, ancestor: str, scope: Scope, callback: ChangeCallback) -> Watch:
        """Call `callback(ancestor, change)` for each change committed from now on that the
        subject `up.<ancestor>...` of `scope` would carry."""
        watch = Watch(self, ancestor, scope, callback)
        self._by_ancestor.setdefault(ancestor, _Watchers()).of(scope).append(watch)
        return watch

    def _remove(self, watch: Watch) -> None:
        watchers = self._by_ancestor.get(watch.ancestor)
        if watchers is None:
            return
        listed = watchers.of(watch.scope)
        if watch in listed:
            listed.remove(watch)
        if watchers.empty():
            del self._by_ancestor[watch.ancestor]

    def publish(self, ancestors: Iterable[str], change: Change) -> None:
        """Deliver `change` for each of `ancestors` (the node itself, its ancestors and the
        virtual root, as the `up.*` fan-out does). A callback that raises is logged; the others
        still get the change."""
        by_ancestor = self._by_ancestor
        if not by_ancestor:
            return
        for ancestor in ancestors:
            watchers = by_ancestor.get(ancestor)
            if watchers is None:
                continue
            matching = list(watchers.subtree)
            if change.parent is not None:
                matching += watchers.edges
            elif ancestor == change.node:
                matching += watchers.own
            for watch in matching:
                if watch._bus is None:
                    continue  # cancelled by an earlier callback of this change
                try:
                    watch.callback(ancestor, change)
                except Exception:
                    logger.exception("bus: a watcher of %s failed on a change of %s", ancestor, change.node)
