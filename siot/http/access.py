"""Scope and role checks (DESIGN §10), one place for every endpoint and the stream.

A user's scope is the node(s) it hangs under and everything below them over live edges; a node
whose edges are all deleted is in scope where one of those edges' parents is (so a deleted node
can still be read and restored by who could delete it). Roles add up: `view` reads; `edit` also
writes points and creates, moves and deletes nodes; `admin` also manages `user` nodes. Any user
may set its own password (a `password` point on its own node).

Refusals (the choice DESIGN §9 leaves open): a node outside the user's scope is answered 403
"outside your scope" whether it exists or not, so a user learns nothing about other groups'
node ids; 404 "unknown node" is answered only to a user whose scope is the whole instance (its
parent is the instance root), who could see the node if it existed. A role too low for the
operation is 403 too, with the role named.
"""

from __future__ import annotations

from collections.abc import Iterable

from siot.http.errors import HttpError
from siot.points import Point
from siot.store import ROOT_PARENT, Store
from siot.users import USER_TYPE, User

CREDENTIAL_TYPE = "credential"  # siot/credentials.py (not imported here: it loads bcrypt)

READ, EDIT, ADMIN = "view", "edit", "admin"
ROLE_RANK = {READ: 0, EDIT: 1, ADMIN: 2}
# Points any user may write to its own user node.
SELF_SERVICE_POINTS = frozenset(("password",))


class Access:
    """What one user may do in one store's tree, as the tree is now."""

    def __init__(self, store: Store, user: User) -> None:
        self.store = store
        self.user = user
        self.roots = frozenset(user.parents)

    @property
    def whole_instance(self) -> bool:
        return self.store.root_id in self.roots

    def in_scope(self, node: str) -> bool:
        tree = self.store.tree
        if node in self.roots or not self.roots.isdisjoint(tree.ancestors(node)):
            return True
        if tree.live_parents(node):
            return False  # alive, elsewhere
        # A deleted node: in scope where the parent of one of its (deleted) edges is.
        return any(
            parent in self.roots or not self.roots.isdisjoint(tree.ancestors(parent))
            for parent in tree.parents.get(node, ())
        )

    def _refuse_outside(self, node: str) -> HttpError:
        if self.whole_instance and not self.store.tree.has_node(node):
            return HttpError(404, f"unknown node '{node}'")
        return HttpError(403, f"node '{node}' is outside your scope")

    def check_read(self, node: str) -> None:
        if not self.in_scope(node):
            raise self._refuse_outside(node)

    def _check_role(self, needed: str, what: str) -> None:
        if ROLE_RANK.get(self.user.role, -1) < ROLE_RANK[needed]:
            raise HttpError(403, f"{what} needs the role '{needed}' or above; yours is '{self.user.role}'")

    def _is_user_node(self, node: str) -> bool:
        # Credential nodes are as sensitive: whoever writes one grants NATS/MQTT access.
        return self.store.tree.node_type(node) in (USER_TYPE, CREDENTIAL_TYPE)

    def check_manage_credentials(self, node: str) -> None:
        """Issuing, revoking or listing the device credentials of `node`: `admin` in scope."""
        self.check_read(node)
        self._check_role(ADMIN, "managing credentials")

    def check_write_points(self, node: str, point_types: Iterable[str]) -> None:
        """Writing node points: `edit` in scope; on a user node `admin`, except a user's own
        password."""
        self.check_read(node)
        types = set(point_types)
        if node == self.user.id and types <= SELF_SERVICE_POINTS:
            return
        if self._is_user_node(node):
            self._check_role(ADMIN, "changing a user")
        else:
            self._check_role(EDIT, "writing points")

    def check_edge_change(self, parent: str, node: str, node_type: str | None = None) -> None:
        """Creating, deleting or moving the edge parent -> node: `edit` with the parent in scope
        (so the node is too, and a user cannot cut its own scope's root off); `admin` when the
        node is (or becomes) a user."""
        if parent == ROOT_PARENT:
            raise HttpError(400, f"the instance root hangs under '{ROOT_PARENT}' and stays there")
        self.check_read(parent)
        if self._is_user_node(node) or node_type in (USER_TYPE, CREDENTIAL_TYPE):
            self._check_role(ADMIN, "managing users")
        else:
            self._check_role(EDIT, "creating, moving or deleting nodes")

    def default_stream_node(self) -> str:
        """Where `GET /v1/stream` starts without `?node=`: the user's one scope root."""
        if len(self.roots) != 1:
            raise HttpError(
                400, f"you are under several nodes ({', '.join(sorted(self.roots))}): choose one with ?node="
            )
        return next(iter(self.roots))


# Point types never answered over HTTP: a password hash is for the daemon to check, and a `view`
# user reading a user node must not get something to crack offline.
HIDDEN_POINT_TYPES = frozenset(("passwordHash", "secretHash"))


def visible(points: list[Point]) -> list[Point]:
    return [p for p in points if p.type not in HIDDEN_POINT_TYPES]
