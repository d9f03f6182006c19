"""The engine's watches on the in-process change feed (siot/bus.py): per node, the scopes its
rules need (nodes/rules/manager.py `_wanted_for`), kept in step as rules load and unload."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from siot.bus import ChangeCallback, Scope, Watch
from siot.local import LocalClient

WantedFor = Callable[[str], set[Scope]]


class RuleWatches:
    """Watches by (node, scope); `sync` makes them match what is wanted now."""

    def __init__(self, client: LocalClient, wanted_for: WantedFor, callback: ChangeCallback) -> None:
        self.client = client
        self.wanted_for = wanted_for
        self.callback = callback
        self._watches: dict[tuple[str, Scope], Watch] = {}

    @property
    def current(self) -> dict[tuple[str, Scope], Watch]:
        """What is watched now, by (node, scope) (a copy)."""
        return dict(self._watches)

    def sync(self, nodes: Iterable[str]) -> None:
        """For each of `nodes` (those whose needs may have changed), watch what is wanted and not
        watched yet (live at once) and cancel what is no longer wanted. Per node, not over every
        rule, so loading N rules stays O(N)."""
        for node in set(nodes):
            wanted = self.wanted_for(node)
            for scope in Scope:
                key = (node, scope)
                if scope in wanted and key not in self._watches:
                    self._watches[key] = self.client.watch(node, scope, self.callback)
                elif scope not in wanted and key in self._watches:
                    self._watches.pop(key).cancel()

    def cancel_all(self) -> None:
        for watch in self._watches.values():
            watch.cancel()
        self._watches.clear()
