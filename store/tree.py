"""The tree of edges, held in memory by the store's event-loop side.

Why in memory: every write must be checked (unknown node, cycle) and every commit fanned out to
all ancestors; asking SQLite for that on each batch would dominate the hot path. The tree is
loaded once at open and updated by the store as edge writes are accepted, in commit order.
"""

from __future__ import annotations

from dataclasses import dataclass

from siot.points import NO_RANK, NODE_TYPE, TOMBSTONE, MergeRank, Point, merge_rank
from siot.subjects import ROOT as ROOT_PARENT

__all__ = ["NODE_TYPE", "ROOT_PARENT", "TOMBSTONE", "EdgeState", "Tree"]


@dataclass(slots=True)
class EdgeState:
    """What the tree needs of one edge: its node type and whether it is deleted, with the
    merge rank of each so edge writes can be merged here exactly as the store merges them."""

    node_type: str = ""
    type_stamp: MergeRank = NO_RANK
    deleted: bool = False
    deleted_stamp: MergeRank = NO_RANK

    def merged(self, points: list[Point]) -> EdgeState:
        """Return the state after `points` are merged in (self is left unchanged)."""
        state = EdgeState(self.node_type, self.type_stamp, self.deleted, self.deleted_stamp)
        for p in points:
            if p.type == NODE_TYPE:
                rank = merge_rank(p)
                if rank > state.type_stamp:
                    state.node_type = p.value if isinstance(p.value, str) else str(p.value)
                    state.type_stamp = rank
            elif p.type == TOMBSTONE:
                rank = merge_rank(p)
                if rank > state.deleted_stamp:
                    state.deleted = bool(p.value) and p.value not in (0, "0")
                    state.deleted_stamp = rank
        return state

    @property
    def exists(self) -> bool:
        return bool(self.node_type)


class Tree:
    """Edges parent -> node. Ancestors are computed over live (undeleted) edges and cached."""

    __slots__ = ("_ancestors", "children", "edges", "parents")

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str], EdgeState] = {}
        self.children: dict[str, set[str]] = {}
        self.parents: dict[str, set[str]] = {}
        self._ancestors: dict[str, frozenset[str]] = {}

    def set_edge(self, parent: str, node: str, state: EdgeState) -> None:
        self.edges[(parent, node)] = state
        self.children.setdefault(parent, set()).add(node)
        self.parents.setdefault(node, set()).add(parent)
        self._ancestors.clear()

    def edge(self, parent: str, node: str) -> EdgeState | None:
        return self.edges.get((parent, node))

    def has_node(self, node: str) -> bool:
        """A node is known when some edge (even a deleted one) points at it."""
        return node in self.parents

    def node_type(self, node: str) -> str:
        for parent in self.parents.get(node, ()):
            state = self.edges[(parent, node)]
            if state.node_type:
                return state.node_type
        return ""

    def live_parents(self, node: str) -> list[str]:
        return [p for p in self.parents.get(node, ()) if not self.edges[(p, node)].deleted]

    def live_children(self, parent: str) -> list[str]:
        return [c for c in self.children.get(parent, ()) if not self.edges[(parent, c)].deleted]

    def ancestors(self, node: str) -> frozenset[str]:
        """Every node above `node` over live edges (including the virtual 'root'), each once."""
        cached = self._ancestors.get(node)
        if cached is not None:
            return cached
        seen: set[str] = set()
        stack = self.live_parents(node)
        while stack:
            parent = stack.pop()
            if parent in seen:
                continue
            seen.add(parent)
            stack.extend(self.live_parents(parent))
        result = frozenset(seen)
        self._ancestors[node] = result
        return result

    def would_cycle(self, parent: str, node: str) -> bool:
        """True if a live edge parent -> node would make node its own ancestor."""
        return parent == node or node in self.ancestors(parent)

    def descendants(self, node: str, *, include_deleted: bool = False) -> list[str]:
        """`node` and every node below it, each once, parents before children."""
        order = [node]
        seen = {node}
        i = 0
        while i < len(order):
            current = order[i]
            i += 1
            kids = self.children.get(current, ())
            for child in sorted(kids):
                if child in seen:
                    continue
                if not include_deleted and self.edges[(current, child)].deleted:
                    continue
                seen.add(child)
                order.append(child)
        return order
