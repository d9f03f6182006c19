"""Which edges a node read names: the one meaning of `nodes.<parent>.<node>` (DESIGN §3), shared
by the NATS API (siot/api.py, which pages the reply) and the in-process client (siot/local.py)."""

from __future__ import annotations

from siot import subjects
from siot.errors import UnknownNode
from siot.store import ROOT_PARENT, Tree


def selected_edges(
    tree: Tree, root_id: str, parent: str, node: str, *, node_type: str | None, deleted: bool
) -> list[tuple[str, str, str]]:
    """(edge parent, child, page key) of every edge the read names, in page-key order: the child
    when listing children, the parent when listing parents (`nodes.all.<node>`). Deleted edges
    only with `deleted`, other node types only without `node_type`. Raises `UnknownNode`."""
    if parent == ROOT_PARENT and node == subjects.ALL:
        node = root_id
    if node == subjects.ALL:
        if parent != ROOT_PARENT and not tree.has_node(parent):
            raise UnknownNode(parent)
        pairs = [(parent, child, child) for child in sorted(tree.children.get(parent, ()))]
    elif parent == subjects.ALL:
        if not tree.has_node(node):
            raise UnknownNode(node)
        pairs = [(edge_parent, node, edge_parent) for edge_parent in sorted(tree.parents.get(node, ()))]
    else:
        if tree.edge(parent, node) is None:
            raise UnknownNode(node, f"no edge from '{parent}'")
        pairs = [(parent, node, node)]
    selected = []
    for edge_parent, child, key in pairs:
        state = tree.edge(edge_parent, child)
        if state is None or (state.deleted and not deleted):
            continue
        if node_type and state.node_type != node_type:
            continue
        selected.append((edge_parent, child, key))
    return selected
