"""What each loaded rule depends on, and which rule owns which node: the lookups that take a
committed point to exactly the conditions it concerns (nodes/rules/manager.py).

- a condition naming a node (`nodeID`) is indexed under that node, for its own points;
- a condition watching a subtree (blank `nodeID`: the rule's parent; `offline`) is indexed under
  the subtree's top, for every point at or under it;
- every rule and each of its children is owned by the rule, so the engine knows its own writes
  (state points, setValues' origins) from a device's.
"""

from __future__ import annotations

from collections.abc import Iterable

from siot.nodes.rules.rule import ConditionRuntime, RuleRuntime

Watcher = tuple[RuleRuntime, ConditionRuntime]


class RuleIndex:
    """The dependency index of the loaded rules."""

    def __init__(self) -> None:
        self._exact: dict[str, list[Watcher]] = {}
        self._subtree: dict[str, list[Watcher]] = {}
        self._owner: dict[str, str] = {}  # rule and child node id -> rule id

    def add(self, runtime: RuleRuntime, children: Iterable[str]) -> None:
        """Index a (re)loaded rule: it and its children are owned by it, each condition is
        indexed under the node it watches."""
        self.own(runtime.id, runtime.id)
        for child in children:
            self.own(child, runtime.id)
        for cond in runtime.conditions:
            if cond.watch.node:
                index = self._subtree if cond.watch.subtree else self._exact
                index.setdefault(cond.watch.node, []).append((runtime, cond))

    def own(self, node: str, rule_id: str) -> None:
        """Mark `node`'s writes as the engine's (a rule not loaded still owns its error point)."""
        self._owner[node] = rule_id

    def remove(self, rule_id: str, runtime: RuleRuntime | None) -> None:
        """Forget a rule: what it owns and every condition `runtime` indexed."""
        self._owner.pop(rule_id, None)
        if runtime is None:
            return
        for node in [n for n, r in self._owner.items() if r == rule_id]:
            del self._owner[node]
        for index in (self._exact, self._subtree):
            for key in list(index):
                index[key] = [(r, c) for r, c in index[key] if r is not runtime]
                if not index[key]:
                    del index[key]

    def owner(self, node: str) -> str | None:
        """The rule that owns `node` (the rule itself or one of its children), if any."""
        return self._owner.get(node)

    def owned(self, node: str) -> bool:
        return node in self._owner

    def naming(self, node: str) -> list[Watcher]:
        """The conditions that name `node` (for its own points)."""
        return self._exact.get(node, [])

    def under(self, ancestor: str, node: str) -> list[Watcher]:
        """The conditions watching the subtree of `ancestor` that a point of `node` concerns:
        none when the node is the engine's own (a rule or a child of one)."""
        return [] if node in self._owner else self._subtree.get(ancestor, [])

    def depends_on(self, ancestor: str, node: str) -> list[Watcher]:
        """Every condition indexed for this delivery, the engine's own nodes included (to tell
        whether a change feeds a rule whose reload is pending)."""
        found = list(self._subtree.get(ancestor, ()))
        if ancestor == node:
            found += self._exact.get(node, ())
        return found

    def watches_subtree(self, node: str) -> bool:
        return node in self._subtree

    def watches_node(self, node: str) -> bool:
        return node in self._exact
