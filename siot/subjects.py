"""Subject names of the wire contract (DESIGN §3), built and parsed in one place."""

from __future__ import annotations

from siot.errors import InvalidSubject
from siot.points import ILLEGAL_TOKEN_RE, MAX_TOKEN_BYTES

ROOT = "root"
ALL = "all"


def check_node_token(token: str, *, what: str = "node id") -> str:
    """A node id used as a subject token must be non-empty, short and free of . * > and spaces."""
    if not token:
        raise InvalidSubject(f"empty {what}")
    if len(token.encode()) > MAX_TOKEN_BYTES or ILLEGAL_TOKEN_RE.search(token):
        raise InvalidSubject(f"illegal {what} {token[:64]!r}")
    return token


def points(node: str, parent: str | None = None) -> str:
    return f"p.{node}.{parent}" if parent else f"p.{node}"


def up(ancestor: str, node: str, parent: str | None = None) -> str:
    return f"up.{ancestor}.{node}.{parent}" if parent else f"up.{ancestor}.{node}"


def up_all(ancestor: str) -> str:
    """Everything committed under (and at) `ancestor`."""
    return f"up.{ancestor}.>"


def nodes(parent: str, node: str) -> str:
    return f"nodes.{parent}.{node}"


def history(node: str) -> str:
    return f"history.{node}"


STATS = "siot.stats"


# Scoped subjects (docs/security.md): `s.<scope>.` + any of the request subjects above. A device
# or edge credential may publish `s.<its node>.>` and nothing of another scope (nats-server
# enforces that), and siot serves a scoped request only for nodes at or under `<scope>`: so a
# credential reaches its own subtree, whose members no static permission list could name.
SCOPED = "s"


def scoped(scope: str | None, subject: str) -> str:
    """`subject` as a client confined to `scope` sends it (unchanged without a scope)."""
    return f"{SCOPED}.{scope}.{subject}" if scope else subject


def inbox_prefix(user: str) -> str:
    """The reply inbox prefix of a credential's user: the only inbox its holder may subscribe
    to, so no credential can read the replies meant for another."""
    return f"_INBOX_{user}"
