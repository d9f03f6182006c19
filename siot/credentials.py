"""Device and edge credentials (DESIGN §10, docs/security.md): who may connect to the embedded
nats-server, and to what each connection is confined.

**The model.** A credential is a node of type `credential` directly under the instance root, with
points `node` (its scope: the device or edge node it confines its holder to), `kind` (`device`
or `edge`), `user`, `secretHash` (bcrypt; the secret itself is shown once, when issued, and
stored nowhere), `parent` (an edge credential: where the edge attaches), `expires` (ns since the
epoch; 0 = never) and `disabled`. Why under the root and not under the device: a device can
write its own subtree, so a credential there would be within reach of the very device it
confines (to read its hash, or to mint more); under the root it is only the admin's. Only
credential nodes under *this* instance's root count: one that reaches us by sync (an edge's own
credentials, which sit under the edge's root here) confers nothing on this instance.

**Enforcement.** Each credential becomes a nats-server user with bcrypt password and allow lists
(the same user serves NATS and MQTT): it may publish `p.<node>` (its own points: what an MQTT
device sends), `history.<node>`, `nodes.<node>.*`, `nodes.all.<node>` and `s.<node>.>` (the
scoped subjects, siot/subjects.py), and subscribe to `up.<node>` / `up.<node>.>` (its subtree's
committed changes: setpoints and commands sent to it) and its own inbox `_INBOX_<user>.>`. An
edge credential adds `sync.<verb>.<node>` and `sync.notify.<node>`. What no static list can name
(the members of a subtree, which change as nodes are created) goes through the scoped subjects:
the broker guarantees that only a holder of scope N (or the admin) publishes `s.N.…`, and siot
serves such a request only for nodes at or under N (`check_scoped_*`). So siot never needs to
know which user sent a message; the subject says whose scope it claims and the broker vouches
for the claim (nats-server's `Nats-Request-Info` header would name the user, but only across
accounts, and per-device accounts would each need JetStream for MQTT).

**Changes apply at once**: every change of a credential node re-renders the broker's users and
reloads nats-server (SIGHUP): a removed user's connections are closed, the others keep theirs.
An expiring credential (the old secret of a rotation) is removed at its expiry.

**Open until the first credential**: an instance without credential nodes (and without
`--require-credentials`) renders no users, so a loopback instance works as before. Once a
credential exists - deleted ones count - users are required (the admin's and the credentials'),
so revoking the last credential does not open the broker again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bcrypt
from nats.aio.msg import Msg

from siot import credfile, subjects
from siot.broker import Broker, BrokerUser, Permissions, TlsFiles, write_config
from siot.bus import Change, Scope, Watch
from siot.codec import decode_request, encode
from siot.errors import BrokerError, InvalidInput, SiotError
from siot.points import TOMBSTONE, Point
from siot.store.tree import Tree
from siot.sync import protocol

if TYPE_CHECKING:
    from siot.runtime import AppContext

logger = logging.getLogger(__name__)

NODE_TYPE = "credential"
DEVICE = "device"
EDGE = "edge"
KINDS = (DEVICE, EDGE)
# A secret is 256 random bits: no dictionary to try, so bcrypt's work factor adds nothing an
# attacker would notice, while nats-server pays it on every CONNECT (MQTT too): 18 ms of its CPU
# per connect at cost 8, 1.2 ms at bcrypt's minimum, 4 (docs/benchmarks.md, `siot bench tls`).
# So the minimum: a fleet reconnecting after a restart costs the broker seconds, not minutes.
BCRYPT_COST = 4
BCRYPT_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
USER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_GRACE_S = 3600.0
MAX_GRACE_S = 30 * 86_400.0
USERS_CACHE = "users.json"  # beside nats-server.conf: the users the broker starts with

ISSUE = "siot.cred.issue"
REVOKE = "siot.cred.revoke"
LIST = "siot.cred.list"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """bcrypt, the one hash nats-server checks itself. Blocks for a few ms: call it on a thread."""
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


@dataclass(slots=True, frozen=True)
class Honored:
    """A credential this instance renders into the broker."""

    id: str
    user: str
    password_hash: str
    node: str
    kind: str
    parent: str = ""
    expires_ns: int = 0

    def broker_user(self) -> BrokerUser:
        return BrokerUser(self.user, self.password_hash, permissions(self.node, self.user, self.kind))


def permissions(node: str, user: str, kind: str) -> Permissions:
    """What a credential for `node` may publish and subscribe to (the module docstring says why)."""
    publish = [
        subjects.points(node),
        subjects.history(node),
        subjects.nodes(node, "*"),
        subjects.nodes(subjects.ALL, node),
        f"{subjects.SCOPED}.{node}.>",
    ]
    subscribe = [f"up.{node}", subjects.up_all(node), f"{subjects.inbox_prefix(user)}.>"]
    if kind == EDGE:
        publish += [s.replace("*", node) for s in protocol.SERVER_SUBJECTS]
        subscribe.append(protocol.notify(node))
    return Permissions(tuple(publish), tuple(subscribe))


def admin_user(user: str, secret: str) -> BrokerUser:
    """The admin: the daemon's own connection and local client commands; no limits."""
    return BrokerUser(user, hash_secret(secret))


# ---- reading credential nodes ----


def honored(node_id: str, points: list[Point], now_ns: int) -> Honored | None:
    """The credential a node's points describe, if it is complete, well-formed, enabled and not
    expired; None otherwise (a credential written by hand with a plain secret, a malformed hash
    or user: nothing of it reaches the broker's config)."""
    values = {p.type: p.value for p in points if p.key == "0" and not p.deleted}
    user, password_hash = values.get("user"), values.get("secretHash")
    node, kind = values.get("node"), values.get("kind") or DEVICE
    expires = values.get("expires") or 0
    if values.get("disabled") or not isinstance(expires, int) or (expires and expires <= now_ns):
        return None
    if not (isinstance(user, str) and USER_RE.match(user)):
        return None
    if not (isinstance(password_hash, str) and BCRYPT_RE.match(password_hash)):
        return None
    if not isinstance(node, str) or kind not in KINDS:
        return None
    try:
        subjects.check_node_token(node)
    except InvalidInput:
        return None
    parent = values.get("parent") or ""
    return Honored(
        node_id, user, password_hash, node, kind, parent if isinstance(parent, str) else "", expires
    )


def check_points(tree: Tree, node: str, parent: str, points: list[Point]) -> None:
    """Write-path validator: a credential node never takes a plain secret, and its hash must be
    bcrypt (nats-server reads it as one). Cheap for every other write: one type lookup."""
    if parent or tree.node_type(node) != NODE_TYPE:
        return
    for index, point in enumerate(points):
        if point.type in ("secret", "password"):
            raise InvalidInput(
                f"point {index}: a credential keeps only the bcrypt hash of its secret ('secretHash'); "
                "issue one with `siot device credential` instead of writing a secret"
            )
        if (
            point.type == "secretHash"
            and not point.deleted
            and not (isinstance(point.value, str) and BCRYPT_RE.match(point.value))
        ):
            raise InvalidInput(f"point {index}: 'secretHash' must be a bcrypt hash")


# ---- the service ----


class CredentialService:
    """Keeps the embedded broker's users in step with the credential nodes, and serves the
    admin requests that issue, rotate, revoke and list credentials (`siot device credential`).

    `async with CredentialService(ctx, broker, admin, require=...)`: `broker` None (an outside
    server, `--nats-url`) or a shared token (`--auth-token`) mean credentials cannot be enforced
    here: the requests then answer with an error that says so."""

    def __init__(
        self,
        ctx: AppContext,
        broker: Broker | None,
        admin: BrokerUser | None,
        *,
        require: bool = False,
        unavailable: str = "",
    ) -> None:
        self.ctx = ctx
        self.broker = broker
        self.admin = admin
        self.require = require
        self.unavailable = unavailable or (
            "" if broker is not None and admin is not None else "credentials need siot's own nats-server"
        )
        self.honored: dict[str, Honored] = {}
        self._known: set[str] = set()  # credential node ids under our root, deleted ones too
        self._dirty = asyncio.Event()
        self._applied = asyncio.Condition()
        self._generation = 0
        self._applied_generation = 0
        self._watches: list[Watch] = []
        self._task: asyncio.Task[None] | None = None
        self._subs: list[Any] = []
        self._remove: list[Any] = []

    # -- lifecycle --

    async def __aenter__(self) -> CredentialService:
        root = self.ctx.store.root_id
        self._remove.append(self.ctx.write_path.add_validator(self._validate))
        self._watches.append(self.ctx.client.watch(root, Scope.EDGES, self._on_edge_change))
        for node in self._credential_nodes():
            self._watch_node(node)
        self._remove.append(self.ctx.api.add_stats("credentials", self.stats))
        if self.unavailable == "":
            await self._apply()
        self._task = asyncio.create_task(self._run(), name="credentials")
        for subject, handler in ((ISSUE, self._on_issue), (REVOKE, self._on_revoke), (LIST, self._on_list)):
            self._subs.append(await self.ctx.nc.subscribe(subject, cb=handler))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for watch in self._watches:
            watch.cancel()
        for remove in self._remove:
            remove()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def stats(self) -> dict[str, Any]:
        broker = self.broker
        return {
            "enforced": bool(self.broker and self.broker.config.users),
            "credentials": len(self.honored),
            "scopeRefused": dict(self.ctx.api.scope_refused),
            "permissionViolations": dict(broker.violations) if broker else {},
            "authFailures": dict(broker.auth_failures) if broker else {},
        }

    def edge_parent(self, edge: str) -> str | None:
        """Where edge credentials for `edge` let it attach: None when it has none (the sync server
        then takes the edge's own choice, as without credentials), "" for the root."""
        parents = [c.parent for c in self.honored.values() if c.kind == EDGE and c.node == edge]
        return parents[0] if parents else None

    # -- following the credential nodes --

    def _credential_nodes(self) -> list[str]:
        tree = self.ctx.store.tree
        root = self.ctx.store.root_id
        return [c for c in tree.children.get(root, ()) if tree.edge(root, c).node_type == NODE_TYPE]  # type: ignore[union-attr]

    def _watch_node(self, node: str) -> None:
        if node not in self._known:
            self._known.add(node)
            self._watches.append(self.ctx.client.watch(node, Scope.OWN, self._on_point_change))

    def _on_edge_change(self, _ancestor: str, change: Change) -> None:
        if (
            change.parent == self.ctx.store.root_id
            and self.ctx.store.tree.node_type(change.node) == NODE_TYPE
        ):
            self._watch_node(change.node)
            self._mark_dirty()

    def _on_point_change(self, _ancestor: str, change: Change) -> None:
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._generation += 1
        self._dirty.set()

    def _validate(self, node: str, parent: str, points: list[Point]) -> None:
        check_points(self.ctx.store.tree, node, parent, points)

    async def _run(self) -> None:
        """Apply changes as they come, and expiries when they fall due."""
        while True:
            now = time.time_ns()
            expiries = [c.expires_ns for c in self.honored.values() if c.expires_ns]
            timeout = max(0.0, (min(expiries) - now) / 1e9) + 0.01 if expiries else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()
            self._dirty.clear()
            if self.unavailable:
                continue
            try:
                await self._apply()
            except SiotError as exc:
                logger.error("credentials: could not apply the credentials to nats-server: %s", exc)
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def _read(self) -> dict[str, Honored]:
        tree = self.ctx.store.tree
        root = self.ctx.store.root_id
        now = time.time_ns()
        found: dict[str, Honored] = {}
        users: set[str] = set()
        for node in sorted(self._credential_nodes()):
            edge = tree.edge(root, node)
            if edge is None or edge.deleted:
                continue
            credential = honored(node, await self.ctx.store.node_points(node), now)
            if credential is None:
                continue
            if credential.kind == EDGE and credential.node == root:
                continue  # an edge credential for ourselves: nothing to attach
            if credential.user in users:
                logger.warning(
                    "credentials: user %s of %s is taken by another credential", credential.user, node
                )
                continue
            users.add(credential.user)
            found[node] = credential
        return found

    def broker_users(self) -> tuple[BrokerUser, ...]:
        """The admin and every honored credential, or nothing while no credential node exists."""
        if self.admin is None or (not self._known and not self.require):
            return ()
        return (self.admin, *(c.broker_user() for c in self.honored.values()))

    async def _apply(self) -> None:
        generation = self._generation
        self.honored = await self._read()
        broker = self.broker
        assert broker is not None
        users = self.broker_users()
        if users != broker.config.users:
            await broker.reload(replace(broker.config, users=users))
            save_users_cache(broker.config.data_dir, users[1:])
            logger.info("credentials: nats-server now has %d credentials", len(users) - 1 if users else 0)
        async with self._applied:
            self._applied_generation = max(self._applied_generation, generation)
            self._applied.notify_all()

    async def settled(self) -> None:
        """Until every credential change committed so far is in force in the broker."""
        wanted = self._generation
        async with self._applied:
            await self._applied.wait_for(lambda: self._applied_generation >= wanted)

    # -- admin requests --

    async def _serve(self, msg: Msg, handler: Any) -> None:
        try:
            if self.unavailable:
                raise InvalidInput(f"{self.unavailable}; this instance does not enforce credentials")
            reply = {"ok": True, **await handler(decode_request(msg.data))}
        except SiotError as exc:
            reply = {"error": str(exc)}
        except Exception as exc:
            logger.exception("credentials: %s failed", msg.subject)
            reply = {"error": f"internal error: {exc}"}
        if msg.reply:
            await self.ctx.nc.publish(msg.reply, encode(reply))

    async def _on_issue(self, msg: Msg) -> None:
        await self._serve(msg, self.issue)

    async def _on_revoke(self, msg: Msg) -> None:
        await self._serve(msg, self.revoke)

    async def _on_list(self, msg: Msg) -> None:
        await self._serve(msg, self.list)

    async def issue(self, request: dict[str, Any]) -> dict[str, Any]:
        """A new credential for `node` (`kind` device or edge); `rotate`: the node's other
        credentials of that kind expire after `grace` seconds. Returns once it is in force."""
        node, kind = request.get("node"), request.get("kind") or DEVICE
        if not isinstance(node, str):
            raise InvalidInput("'node' must be a node id")
        subjects.check_node_token(node)
        if kind not in KINDS:
            raise InvalidInput(f"'kind' must be one of {', '.join(KINDS)}")
        tree, store = self.ctx.store.tree, self.ctx.store
        parent = request.get("parent") or ""
        if not isinstance(parent, str):
            raise InvalidInput("'parent' must be a node id")
        if kind == DEVICE:
            if not tree.live_parents(node):
                raise InvalidInput(
                    f"unknown node '{node}': a device credential needs a node of this instance"
                )
            if parent:
                raise InvalidInput("'parent' is for edge credentials (where the edge attaches)")
        else:
            if node == store.root_id:
                raise InvalidInput(f"'{node}' is this instance: an edge credential is for an edge's id")
            if tree.has_node(node) and node not in self.ctx.downstream_roots:
                raise InvalidInput(f"'{node}' is a node of this instance, not an edge: it cannot attach")
            if parent:
                subjects.check_node_token(parent, what="parent id")
                if not tree.live_parents(parent):
                    raise InvalidInput(f"unknown parent '{parent}'")
        grace = request.get("grace", DEFAULT_GRACE_S)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= MAX_GRACE_S:
            raise InvalidInput(f"'grace' must be 0..{MAX_GRACE_S:.0f} seconds")
        description = request.get("description") or f"{kind} credential for {node}"
        if not isinstance(description, str):
            raise InvalidInput("'description' must be a string")
        expired: list[str] = []
        if request.get("rotate"):
            until = time.time_ns() + int(grace * 1e9)
            for credential in list(self.honored.values()):
                if credential.node == node and credential.kind == kind:
                    if not credential.expires_ns or credential.expires_ns > until:
                        await self.ctx.client.send_points(credential.id, [Point("expires", until)])
                    expired.append(credential.user)
        secret = new_secret()
        user = f"{kind[0]}-{secrets.token_hex(6)}"
        points = [
            Point("description", description),
            Point("node", node),
            Point("kind", kind),
            Point("user", user),
            Point("secretHash", await asyncio.to_thread(hash_secret, secret)),
        ]
        if parent:
            points.append(Point("parent", parent))
        credential_id = await self.ctx.client.create_node(store.root_id, NODE_TYPE, points)
        await self.settled()
        logger.info("credentials: issued %s credential %s for %s (user %s)", kind, credential_id, node, user)
        return {
            "user": user,
            "secret": secret,
            "node": node,
            "kind": kind,
            "id": credential_id,
            "expiring": expired,
        }

    async def revoke(self, request: dict[str, Any]) -> dict[str, Any]:
        """Delete the credentials of `node` (or the one of `user`); returns once in force, i.e.
        once their connections are closed."""
        node, user = request.get("node"), request.get("user")
        if not isinstance(node, str | None) or not isinstance(user, str | None) or not (node or user):
            raise InvalidInput("give 'node' (all its credentials) or 'user' (one credential)")
        root = self.ctx.store.root_id
        revoked = []
        for credential in list(self.honored.values()):
            if (node and credential.node == node) or (user and credential.user == user):
                await self.ctx.client.send_edge_points(credential.id, root, [Point(TOMBSTONE, 1)])
                revoked.append(credential.user)
        await self.settled()
        for name in revoked:
            logger.info("credentials: revoked user %s", name)
        return {"revoked": revoked}

    async def list(self, request: dict[str, Any]) -> dict[str, Any]:
        node = request.get("node")
        now = time.time_ns()
        tree, root = self.ctx.store.tree, self.ctx.store.root_id
        found = []
        for credential_id in sorted(self._credential_nodes()):
            values = {
                p.type: p.value for p in await self.ctx.store.node_points(credential_id) if not p.deleted
            }
            if node and values.get("node") != node:
                continue
            edge = tree.edge(root, credential_id)
            active = credential_id in self.honored
            found.append(
                {
                    "id": credential_id,
                    "user": values.get("user", ""),
                    "node": values.get("node", ""),
                    "kind": values.get("kind", DEVICE),
                    "expires": values.get("expires") or 0,
                    "active": active,
                    "state": _state(active, edge is None or edge.deleted, values, now),
                }
            )
        return {"credentials": found}


def _state(active: bool, deleted: bool, values: dict[str, Any], now_ns: int) -> str:
    """Why a credential is or is not in force, for `siot device credential --list`."""
    if active:
        return "active"
    if deleted:
        return "deleted"
    if values.get("disabled"):
        return "disabled"
    expires = values.get("expires") or 0
    if isinstance(expires, int) and expires and expires <= now_ns:
        return "expired"
    return "invalid"


# ---- the admin credential ----

ADMIN_USER = "admin"


def ensure_admin(data_dir: Path, url: str, tls: TlsFiles | None) -> credfile.Credential:
    """The admin credential of this data directory, made on first start (mode 0600); `url` and
    the TLS files are written into it on every start, so `siot --data DIR` reaches the instance
    as it runs now (another port, TLS switched on)."""
    path = credfile.admin_file(data_dir)
    secret = credfile.load(path).secret if path.exists() else new_secret()
    admin = credfile.Credential(
        user=ADMIN_USER,
        secret=secret,
        url=url,
        tls_ca=str(Path(tls.cert).resolve()) if tls else "",
        tls_cert=str(Path(tls.cert).resolve()) if tls and tls.ca else "",
        tls_key=str(Path(tls.key).resolve()) if tls and tls.ca else "",
    )
    credfile.write(path, admin)
    return admin


def own_tls(tls: TlsFiles) -> ssl.SSLContext:
    """The TLS context of the daemon's own connections to its broker: the server's certificate
    is the trust anchor (pinned, so its names need not include the loopback address), and it is
    also presented as the client certificate when clients must show one (--tls-ca)."""
    context = credfile.client_tls(tls.cert, tls.cert if tls.ca else None, tls.key if tls.ca else None)
    context.check_hostname = False
    return context


def server_tls(tls: TlsFiles) -> ssl.SSLContext:
    """The HTTP server's TLS context: the same certificate as nats-server's listeners, and with
    `--tls-ca` the same demand for client certificates. `load_cert_chain` again on it (SIGHUP)
    serves a renewed certificate to new connections."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.ca:
        context.load_verify_locations(tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# ---- the users the broker starts with ----


def load_users_cache(data_dir: Path) -> tuple[BrokerUser, ...]:
    """The credential users of the last run (without the admin): the broker starts with them, so
    there is no moment at start when a credential instance accepts anonymous clients, before the
    store is open and the service has read the credential nodes."""
    path = data_dir / USERS_CACHE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        raise BrokerError(
            f"cannot read {path}: {exc}; delete it to rebuild it from the credential nodes"
        ) from exc
    return tuple(
        BrokerUser(u["user"], u["hash"], Permissions(tuple(u["publish"]), tuple(u["subscribe"]))) for u in raw
    )


def save_users_cache(data_dir: Path, users: tuple[BrokerUser, ...]) -> None:
    data = [
        {
            "user": u.user,
            "hash": u.password_hash,
            "publish": list(u.permissions.publish) if u.permissions else [],
            "subscribe": list(u.permissions.subscribe) if u.permissions else [],
        }
        for u in users
    ]
    write_config(data_dir / USERS_CACHE, json.dumps(data))


__all__ = [
    "EDGE",
    "NODE_TYPE",
    "CredentialService",
    "Honored",
    "hash_secret",
    "new_secret",
    "permissions",
]
