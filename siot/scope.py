"""The scope checks of scoped requests (`s.<scope>.…`, siot/subjects.py): the broker lets only
holders of scope N's credentials (and the admin) publish `s.N.…`; these checks make sure such a
request reaches nothing outside N's subtree (siot/credentials.py says why it is done this way)."""

from __future__ import annotations

from siot import subjects
from siot.errors import InvalidInput
from siot.store.tree import Tree


def in_scope(tree: Tree, scope: str, node: str) -> bool:
    """`node` is `scope` or below it over live edges."""
    return node == scope or scope in tree.ancestors(node)


def check_scoped_node(tree: Tree, scope: str, node: str) -> None:
    if not in_scope(tree, scope, node):
        raise InvalidInput(f"not allowed: node '{node}' is outside the subtree of '{scope}' (your scope)")


def check_scoped_edge(tree: Tree, scope: str, node: str, parent: str) -> None:
    """An edge parent -> node may be written under scope when the parent is in it and the node is
    new, already in the scope, or already on that edge (undeleting a child): never a node from
    elsewhere, which a new edge would bring into the scope and so make writable."""
    if not in_scope(tree, scope, parent):
        raise InvalidInput(
            f"not allowed: parent '{parent}' of edge {parent} -> {node} is outside the subtree of '{scope}'"
        )
    if tree.has_node(node) and tree.edge(parent, node) is None and not in_scope(tree, scope, node):
        raise InvalidInput(f"not allowed: node '{node}' exists outside the subtree of '{scope}'")


def check_scoped_read(tree: Tree, scope: str, parent: str, node: str) -> None:
    """`nodes.<parent>.<node>` under scope: children of a member, or the parents of a member."""
    if parent == subjects.ALL:
        check_scoped_node(tree, scope, node)
    else:
        check_scoped_node(tree, scope, parent)
