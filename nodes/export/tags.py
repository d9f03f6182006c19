"""The tags every exported line carries: the node's id, description, node type and the point's key,
and the node's metadata: its `tag` points (key = tag name, value = tag value) and those of its
ancestors, so metadata set once on a group lands on every value of every device under it. The
nearest wins: a device's own `tag` overrides its group's, and the built-in tags override any
`tag` point of the same name.

Why cached, and invalidated from the log: every exported value needs its series key, and reading
a node and its ancestors from SQLite per value would cost more than the export itself. The
exporter reads the log in order; a window that holds a `tag` or `description` point, or an edge
change (a node moved, created, deleted), drops what it may have changed before that window's
lines are built. Lines therefore carry the metadata as it stands when they are exported (after an
outage, the current metadata), not as it was when the value was taken.
"""

from __future__ import annotations

from collections.abc import Iterable

from siot.nodes.export.lines import series_key, tag_text
from siot.store import ROOT_PARENT, Store
from siot.store.log import ValueRow

TAG_POINT = "tag"
DESCRIPTION_POINT = "description"
ID_TAG = "id"
DESCRIPTION_TAG = "description"
NODE_TYPE_TAG = "nodeType"
KEY_TAG = "key"
METADATA_POINTS = frozenset((TAG_POINT, DESCRIPTION_POINT))


class SeriesKeys:
    """Series keys (`measurement,tags`) of exported points, cached per (node, type, key)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # node -> (description, its own tags): what one read of its points gave
        self._own: dict[str, tuple[str, dict[str, str]]] = {}
        # node -> every tag of its lines but the key: built-ins, own and inherited metadata
        self._node_tags: dict[str, dict[str, str]] = {}
        self._keys: dict[tuple[str, str, str], str] = {}

    def invalidate(self, rows: Iterable[ValueRow]) -> None:
        """Forget what the rows of a log window may have changed: the metadata of a node whose
        `tag` or `description` points are in it, and every node's inherited tags after a `tag`
        point (it may be an ancestor's) or an edge change (ancestry)."""
        for row in rows:
            node, parent, ptype = row[1], row[2], row[3]
            if parent:
                self._node_tags.clear()
                self._keys.clear()
            elif ptype in METADATA_POINTS:
                self._own.pop(node, None)
                self._node_tags.clear()
                self._keys.clear()

    async def key(self, node: str, ptype: str, key: str) -> str:
        cached = self._keys.get((node, ptype, key))
        if cached is None:
            tags = dict(await self.node_tags(node))
            tags[KEY_TAG] = key
            cached = self._keys[(node, ptype, key)] = series_key(ptype, tags)
        return cached

    async def node_tags(self, node: str) -> dict[str, str]:
        """The tags of `node`'s lines except the point key."""
        tags = self._node_tags.get(node)
        if tags is not None:
            return tags
        description, own = await self._own_metadata(node)
        tags = {}
        # Farthest first, so nearer ancestors and then the node itself overwrite.
        for ancestor in reversed(self._ancestors_nearest_first(node)):
            tags.update((await self._own_metadata(ancestor))[1])
        tags.update(own)
        tags[ID_TAG] = node
        tags[NODE_TYPE_TAG] = self.store.tree.node_type(node)
        tags[DESCRIPTION_TAG] = description
        self._node_tags[node] = tags
        return tags

    def _ancestors_nearest_first(self, node: str) -> list[str]:
        tree = self.store.tree
        order: list[str] = []
        seen = {node}
        level = sorted(tree.live_parents(node))
        while level:
            next_level: list[str] = []
            for parent in level:
                if parent in seen or parent == ROOT_PARENT:
                    continue
                seen.add(parent)
                order.append(parent)
                next_level.extend(sorted(tree.live_parents(parent)))
            level = next_level
        return order

    async def _own_metadata(self, node: str) -> tuple[str, dict[str, str]]:
        cached = self._own.get(node)
        if cached is not None:
            return cached
        description = ""
        tags: dict[str, str] = {}
        for p in await self.store.node_points(node):
            if p.deleted:
                continue
            if p.type == TAG_POINT and p.key:
                tags[p.key] = tag_text(p.value)
            elif p.type == DESCRIPTION_POINT and p.key == "0":
                description = tag_text(p.value)
        self._own[node] = (description, tags)
        return description, tags
