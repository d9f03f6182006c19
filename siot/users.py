"""Users (DESIGN §10): `user` nodes, their password hashes, and finding them.

A user is a node of type `user` with points `email`, `firstName`, `lastName`, `role` (one of
`ROLES`) and `passwordHash`; its parents are where its scope starts. A password is written as a
`password` point, by anyone and through any door (NATS, MQTT, the in-process client, the CLI,
`siot import`, rows from a sync peer): the store's commit-time check for `user` nodes
(`check_user_write`, installed by `attach`) replaces it with a `passwordHash` point before the
merge, on a worker thread, so the plain text is never stored, logged, synced nor exported.

The same check refuses, with the point and field named: a `role` other than `ROLES`; a
`passwordHash` that is not an argon2id hash within siot.passwords' bounds (one that is — from an
export being imported, or a peer — is taken as it is: whoever may write it may write a password
anyway); an empty, oversized or deleted `password`; and these fields written as edge points.
A `password` point on a node of another type (an SMTP login of a notify node) is left alone.

Lookups are synchronous: `attach` loads the user fields of every node into memory once and keeps
them current from the store's commit listener, so a login or a token check reads no SQLite and a
changed password counts from the commit that stored it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from siot.errors import InvalidPoint
from siot.passwords import MAX_PASSWORD_BYTES, hash_password, is_password_hash
from siot.points import DEFAULT_KEY, Point, supersedes
from siot.subjects import ROOT as ROOT_PARENT

if TYPE_CHECKING:
    from siot.runtime import AppContext
    from siot.store import Store, Write

logger = logging.getLogger(__name__)

USER_TYPE = "user"
ROLES = ("view", "edit", "admin")
EMAIL = "email"
FIRST_NAME = "firstName"
LAST_NAME = "lastName"
ROLE = "role"
PASSWORD = "password"  # accepted on the way in, never stored
PASSWORD_HASH = "passwordHash"
# What the index keeps of each node (key "0" only).
FIELDS = frozenset((EMAIL, FIRST_NAME, LAST_NAME, ROLE, PASSWORD_HASH))
# A user node without a `role` point gets the least of them.
DEFAULT_ROLE = "view"
# The first start's admin (`bootstrap_admin`).
ADMIN_EMAIL_ENV = "SIOT_ADMIN_EMAIL"
ADMIN_PASSWORD_ENV = "SIOT_ADMIN_PASSWORD"
DEFAULT_ADMIN_EMAIL = "admin"
INITIAL_PASSWORD_FILE = "initial-admin-password"


@dataclass(frozen=True, slots=True)
class User:
    """A live user as the index sees it. `parents`: the live parents, where its scope starts;
    `password_hash` is "" when no password was ever set (such a user cannot log in)."""

    id: str
    email: str
    first_name: str
    last_name: str
    role: str
    password_hash: str
    parents: tuple[str, ...]


def check_user_write(node: str, parent: str, points: list[Point]) -> Callable[[], list[Point]] | None:
    """The store's check of writes to `user` nodes (see the module docstring and
    `siot.store.store.NodeCheck`): refuse bad fields, and return the rewrite that hashes
    `password` points when there are any. Error messages never quote a password."""
    has_password = False
    for index, p in enumerate(points):
        if p.type not in (PASSWORD, PASSWORD_HASH, ROLE):
            continue
        if parent:
            raise InvalidPoint(
                f"'{p.type}' is a point of the user node, not of its edge", index=index, field="type"
            )
        if p.type == PASSWORD:
            if p.deleted:
                raise InvalidPoint(
                    "a password cannot be deleted: set a new one, or delete the user",
                    index=index,
                    field="tombstone",
                )
            if not isinstance(p.value, str) or not p.value or len(p.value.encode()) > MAX_PASSWORD_BYTES:
                raise InvalidPoint(
                    f"a password must be a non-empty string of at most {MAX_PASSWORD_BYTES} bytes",
                    index=index,
                    field="value",
                )
            has_password = True
        elif p.deleted:
            continue
        elif p.type == ROLE and (not isinstance(p.value, str) or p.value not in ROLES):
            raise InvalidPoint(
                f"role must be one of {', '.join(ROLES)}, not {p.value!r}", index=index, field="value"
            )
        elif p.type == PASSWORD_HASH and not is_password_hash(p.value):
            raise InvalidPoint(
                "passwordHash must be an argon2id hash (as siot makes them); to set a password, "
                "write it as a 'password' point and siot stores its hash",
                index=index,
                field="value",
            )
    if not has_password:
        return None

    def hashed() -> list[Point]:
        return [
            Point(PASSWORD_HASH, hash_password(p.value), p.key, p.time, p.tombstone, p.origin)  # type: ignore[arg-type]
            if p.type == PASSWORD
            else p
            for p in points
        ]

    return hashed


class UserIndex:
    """The user fields (`FIELDS`, key "0") of every node that has any, merged by the merge rule
    from the store's commits, and the nodes by email (case-folded). Whether a node is a live
    user is decided at lookup from the store's tree, so a node created, retyped or deleted after
    its points were written is seen as it is now."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._fields: dict[str, dict[str, Point]] = {}
        self._by_email: dict[str, set[str]] = {}

    async def load(self) -> None:
        """Read the fields of every node from the store (the commit listener must be on first:
        what commits meanwhile is merged either way, by rank)."""
        from siot.store.writer import unpack_value

        marks = ", ".join("?" * len(FIELDS))
        rows = await self.store.fetch(
            "SELECT node, type, key, time, value, tombstone, origin FROM points "
            f"WHERE type IN ({marks}) AND key = ?",
            (*sorted(FIELDS), DEFAULT_KEY),
        )
        for node, ptype, key, t, blob, tombstone, origin in rows:
            self.merge(node, Point(ptype, unpack_value(blob), key, t, tombstone, origin))

    async def on_commit(self, writes: list[Write]) -> None:
        for write in writes:
            if write.error is None and not write.parent:
                for p in write.changed:
                    if p.type in FIELDS and p.key == DEFAULT_KEY:
                        self.merge(write.node, p)

    def merge(self, node: str, point: Point) -> None:
        fields = self._fields.setdefault(node, {})
        if not supersedes(point, fields.get(point.type)):
            return
        if point.type == EMAIL:
            self._index_email(node, fields.get(EMAIL), point)
        fields[point.type] = point

    def _index_email(self, node: str, old: Point | None, new: Point) -> None:
        if (old_email := _email_of(old)) is not None:
            holders = self._by_email.get(old_email, set())
            holders.discard(node)
            if not holders:
                self._by_email.pop(old_email, None)
        if (new_email := _email_of(new)) is not None:
            self._by_email.setdefault(new_email, set()).add(node)

    def user(self, node: str) -> User | None:
        """The user `node` is, if it is one with a live edge."""
        tree = self.store.tree
        if tree.node_type(node) != USER_TYPE:
            return None
        parents = tuple(sorted(tree.live_parents(node)))
        if not parents:
            return None
        fields = self._fields.get(node, {})
        role = _text(fields.get(ROLE))
        return User(
            id=node,
            email=_text(fields.get(EMAIL)),
            first_name=_text(fields.get(FIRST_NAME)),
            last_name=_text(fields.get(LAST_NAME)),
            role=role if role in ROLES else DEFAULT_ROLE,
            password_hash=_text(fields.get(PASSWORD_HASH)),
            parents=parents,
        )

    def by_email(self, email: str) -> User | None:
        """The live user with this email (case-insensitive). Several may share one (the admin
        each synced edge creates at first start is `admin` too): the one nearest the instance
        root is taken, and when that is not one user, none (a login must not guess)."""
        found = [u for n in self._by_email.get(email.strip().casefold(), ()) if (u := self.user(n))]
        if len(found) <= 1:
            return found[0] if found else None
        depth = {u.id: self._depth(u.id) for u in found}
        nearest = min(depth.values())
        best = [u for u in found if depth[u.id] == nearest]
        return best[0] if len(best) == 1 else None

    def _depth(self, node: str) -> int:
        """Live edges from the instance root down to `node` (its nearest path)."""
        tree = self.store.tree
        level, seen, depth = {node}, {node}, 0
        while level and self.store.root_id not in level:
            level = {p for n in level for p in tree.live_parents(n) if p != ROOT_PARENT} - seen
            seen |= level
            depth += 1
        return depth if level else len(seen) + 1  # not under this root (not expected): last

    def users(self) -> list[User]:
        """Every live user, by id."""
        return [u for n in sorted(self._fields) if (u := self.user(n))]


def _text(point: Point | None) -> str:
    if point is None or point.deleted or not isinstance(point.value, str):
        return ""
    return point.value


def _email_of(point: Point | None) -> str | None:
    text = _text(point).strip().casefold()
    return text or None


# The index of each attached store. Keyed by the store itself so the lookups take the `store`
# every caller already has; weak, so a closed store and its index go together.
_indexes: weakref.WeakKeyDictionary[Store, UserIndex] = weakref.WeakKeyDictionary()


async def attach(store: Store) -> UserIndex:
    """Make `store` hash passwords and check user fields (`check_user_write`) and keep a user
    index for the lookups below. Call it right after the store opens, before anything can write
    to it (the API, sync), so no write escapes the check."""
    store.add_node_check(USER_TYPE, check_user_write)
    index = UserIndex(store)
    store.add_commit_listener(index.on_commit)
    await index.load()
    _indexes[store] = index
    return index


def index_of(store: Store) -> UserIndex:
    """The index `attach` made for `store`. Raises RuntimeError when it was not attached."""
    try:
        return _indexes[store]
    except KeyError:
        raise RuntimeError(
            "users are not attached to this store: call `await siot.users.attach(store)`"
        ) from None


def find_user_by_email(store: Store, email: str) -> User | None:
    """The live user with this email, case-insensitive (see `UserIndex.by_email` for several
    users sharing one). Synchronous: reads the in-memory index."""
    return index_of(store).by_email(email)


def user_by_id(store: Store, node_id: str) -> User | None:
    """The user node `node_id`, or None if it is not a user or has no live edge. Synchronous."""
    return index_of(store).user(node_id)


@contextlib.asynccontextmanager
async def users_client(ctx: AppContext) -> AsyncIterator[None]:
    """The node client of users (siot/node_clients.py): at start, `bootstrap_admin`."""
    await bootstrap_admin(ctx)
    yield


async def bootstrap_admin(ctx: AppContext) -> str | None:
    """On a start with no live user, create an admin under the instance root so the instance can
    be managed at all; return its id (None when there were users).

    Its email and password come from SIOT_ADMIN_EMAIL / SIOT_ADMIN_PASSWORD; without a password
    a random one is made, logged once at WARNING (the one secret siot ever logs: whoever runs
    the daemon needs it to get in) and written to `<data>/initial-admin-password` (mode 0600).
    The password is written as a `password` point, so it is stored only as its hash. A later
    start with a user does nothing, and an instance whose users were all deleted gets a new
    admin at its next start, which is the way back in."""
    if index_of(ctx.store).users():
        return None
    email = os.environ.get(ADMIN_EMAIL_ENV, "").strip() or DEFAULT_ADMIN_EMAIL
    password = os.environ.get(ADMIN_PASSWORD_ENV, "")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(18)
    root = ctx.store.root_id
    fields = {EMAIL: email, ROLE: "admin", FIRST_NAME: "Admin", PASSWORD: password}
    node = await ctx.client.create_node(
        root, USER_TYPE, [Point(ptype, value, origin=root) for ptype, value in fields.items()]
    )
    if generated:
        path = Path(ctx.config.data_dir) / INITIAL_PASSWORD_FILE
        _write_private(path, password + "\n")
        logger.warning(
            "users: created the admin user %r (%s) with the password %s (also in %s); "
            "change it with `siot user passwd %s`",
            email,
            node,
            password,
            path,
            email,
        )
    else:
        logger.info("users: created the admin user %r (%s) from %s", email, node, ADMIN_PASSWORD_ENV)
    return node


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, created so from the start (no moment at
    the umask's mode), replacing one a previous bootstrap left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an existing file keeps its old mode through O_CREAT
        f.write(text)
