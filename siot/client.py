"""The client library: what devices, the CLI and node clients use to talk to a siot instance.

Example::

    async with await Client.connect("nats://127.0.0.1:4222") as siot:
        sensor = await siot.create_node(siot.root_id, "device", [Point("description", "soil 3")])
        await siot.send_points(sensor, [Point("humidity", 29.5)])      # returns after commit
        async with siot.changes(sensor) as changes:
            async for change in changes:
                print(change.node, change.points)

Every method that writes waits for the store's acknowledgement (the points are committed) unless
`ack=False`. A `{"error": ...}` reply raises `RequestFailed` with the server's message.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from siot import nats_client, subjects
from siot.bus import Change
from siot.codec import decode_reply, decode_trusted_points, encode, point_from_wire
from siot.credfile import Credential, client_tls
from siot.errors import ConnectFailed, RequestFailed
from siot.points import NODE_TYPE, TOMBSTONE, Point

logger = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"
INITIAL_CONNECT_ATTEMPTS = 1
CONNECT_DEADLINE_ATTEMPTS = 3  # the first connection gives up after this many connect timeouts
DEFAULT_TIMEOUT_S = 10.0
HISTORY_END_NS = 2**63 - 1


@dataclass(slots=True)
class NodeInfo:
    """A node as seen under one parent: its points and the points of that edge."""

    id: str
    type: str
    parent: str
    points: list[Point] = field(default_factory=list)
    edge_points: list[Point] = field(default_factory=list)

    def value(self, type: str, key: str = "0", default: Any = None) -> Any:
        for p in self.points:
            if p.type == type and p.key == key and not p.deleted:
                return p.value
        return default

    def edge_value(self, type: str, key: str = "0", default: Any = None) -> Any:
        for p in self.edge_points:
            if p.type == type and p.key == key:
                return p.value
        return default

    @property
    def description(self) -> str:
        return str(self.value("description", default="") or "")

    @property
    def deleted(self) -> bool:
        return bool(self.edge_value(TOMBSTONE, default=0))

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> NodeInfo:
        return cls(
            id=raw["id"],
            type=raw["type"],
            parent=raw["parent"],
            points=[point_from_wire(p) for p in raw.get("points", [])],
            edge_points=[point_from_wire(p) for p in raw.get("edgePoints", [])],
        )


@dataclass(slots=True)
class TreeNode:
    node: NodeInfo
    children: list[TreeNode] = field(default_factory=list)


class ChangeStream(abc.ABC):
    """Live committed changes at and under a node: an async context manager and iterator.

    The feed is live when `__aenter__` returns, so nothing committed after that is missed.
    """

    def __init__(self, node: str, max_pending: int) -> None:
        self.node = node
        self._queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=max_pending)

    @abc.abstractmethod
    async def __aenter__(self) -> Self: ...

    @abc.abstractmethod
    async def __aexit__(self, *exc: object) -> None: ...

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Change:
        return await self._queue.get()

    async def get(self) -> Change:
        return await self._queue.get()


class Changes(ChangeStream):
    """Committed changes over NATS: a subscription to `up.<node>.>`."""

    def __init__(self, nc: NATS, node: str, max_pending: int) -> None:
        super().__init__(node, max_pending)
        self._nc = nc
        self._sub: Any = None

    async def _on_msg(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        parent = tokens[3] if len(tokens) > 3 else None
        change = Change(node=tokens[2], parent=parent, points=decode_trusted_points(msg.data))
        await self._queue.put(change)

    async def __aenter__(self) -> Self:
        self._sub = await self._nc.subscribe(subjects.up_all(self.node), cb=self._on_msg)
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


async def _log_connection_error(exc: Exception) -> None:
    """nats-py prints a traceback per failed attempt by default; one warning line is enough."""
    logger.warning("nats: %s", exc or type(exc).__name__)


class BaseClient(abc.ABC):
    """What every handle on a siot instance offers, whichever way it reaches the instance: over
    NATS (`Client`, for devices, scripts and the CLI) or in process (`siot.local.LocalClient`,
    for the daemon's node clients). The node operations are built here once on four primitives:
    `_send`, `nodes`, `history` and `changes`."""

    _root_id: str | None = None

    @abc.abstractmethod
    async def _send(self, node: str, parent: str, points: Sequence[Point], ack: bool) -> None:
        """Write points to a node (`parent` "") or to the edge parent -> node; with `ack`, return
        after commit and raise the write's error."""

    @abc.abstractmethod
    async def nodes(
        self, parent: str, node: str = subjects.ALL, *, type: str | None = None, deleted: bool = False
    ) -> list[NodeInfo]:
        """The nodes `nodes.<parent>.<node>` names (DESIGN §3): `all` as either token lists
        children or parents."""

    @abc.abstractmethod
    async def history(
        self,
        node: str,
        type: str | None = None,
        key: str | None = None,
        *,
        start_ns: int = 0,
        end_ns: int = HISTORY_END_NS,
        limit: int = 10_000,
    ) -> list[Point]:
        """Up to `limit` logged points with start <= time < end, oldest first."""

    @abc.abstractmethod
    def changes(self, node: str = subjects.ROOT, *, max_pending: int = 100_000) -> ChangeStream:
        """Committed changes at and under `node` (default: everything), from now on."""

    # ---- writes ----

    async def send_points(self, node: str, points: Sequence[Point], *, ack: bool = True) -> None:
        """Write points to `node`; with `ack` (the default) return once they are committed."""
        await self._send(node, "", points, ack)

    async def send_edge_points(
        self, node: str, parent: str, points: Sequence[Point], *, ack: bool = True
    ) -> None:
        """Write points of the edge `parent` -> `node` (nodeType, tombstone, ...)."""
        await self._send(node, parent, points, ack)

    async def create_node(
        self, parent: str, node_type: str, points: Sequence[Point] = (), *, node_id: str | None = None
    ) -> str:
        """Create a node under `parent` (the edge first, then its points); return its id."""
        node_id = node_id or str(uuid.uuid4())
        await self.send_edge_points(node_id, parent, [Point(NODE_TYPE, node_type), Point(TOMBSTONE, 0)])
        if points:
            await self.send_points(node_id, points)
        return node_id

    async def delete_node(self, node: str, parent: str) -> None:
        await self.send_edge_points(node, parent, [Point(TOMBSTONE, 1)])

    async def undelete_node(self, node: str, parent: str) -> None:
        await self.send_edge_points(node, parent, [Point(TOMBSTONE, 0)])

    async def mirror_node(self, node: str, new_parent: str) -> None:
        """Make `node` also appear under `new_parent` (a DAG); it keeps its other parents."""
        info = await self.get_node(node)
        await self.send_edge_points(node, new_parent, [Point(NODE_TYPE, info.type), Point(TOMBSTONE, 0)])

    async def move_node(self, node: str, old_parent: str, new_parent: str) -> None:
        """Add the new edge before deleting the old, so the node is never without a parent."""
        await self.mirror_node(node, new_parent)
        await self.delete_node(node, old_parent)

    # ---- reads ----

    async def root(self) -> NodeInfo:
        return (await self.nodes(subjects.ROOT, subjects.ALL))[0]

    @property
    def root_id(self) -> str:
        if self._root_id is None:
            raise RuntimeError("call `await client.load_root()` (or root()) before using root_id")
        return self._root_id

    async def load_root(self) -> str:
        self._root_id = (await self.root()).id
        return self._root_id

    async def get_node(self, node: str, *, deleted: bool = True) -> NodeInfo:
        """The node under its first parent (live parents first)."""
        found = await self.nodes(subjects.ALL, node, deleted=deleted)
        if not found:
            raise RequestFailed(f"node '{node}' has no parent edge")
        found.sort(key=lambda n: n.deleted)
        return found[0]

    async def children(
        self, parent: str, *, type: str | None = None, deleted: bool = False
    ) -> list[NodeInfo]:
        return await self.nodes(parent, subjects.ALL, type=type, deleted=deleted)

    async def tree(self, node: str | None = None, *, deleted: bool = False) -> TreeNode:
        """The subtree at `node` (default: the root), each node once even in a DAG."""
        top = await self.root() if node is None else await self.get_node(node)
        seen = {top.id}
        result = TreeNode(top)
        stack = [result]  # depth first, without recursion: a tree may be thousands deep
        while stack:
            tree_node = stack.pop()
            added = []
            for child in await self.children(tree_node.node.id, deleted=deleted):
                if child.id in seen:
                    continue
                seen.add(child.id)
                added.append(TreeNode(child))
            tree_node.children += added
            stack += reversed(added)
        return result


class Client(BaseClient):
    """A connection to one siot instance. Build it with `await Client.connect(url)` (it owns and
    closes the NATS connection) or `Client(nc)` around a connection you own."""

    def __init__(
        self,
        nc: NATS,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        owns_connection: bool = False,
        scope: str | None = None,
    ) -> None:
        """`scope`: the node a device or edge credential confines this connection to; requests
        then go out on the scoped subjects (`s.<scope>.…`, docs/security.md)."""
        self.nc = nc
        self.timeout_s = timeout_s
        self.scope = scope or None
        self._owns = owns_connection
        self._root_id: str | None = None

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_URL,
        *,
        name: str = "siot-client",
        token: str | None = None,
        credential: Credential | None = None,
        scope: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        reconnect_forever: bool = True,
        **options: Any,
    ) -> Client:
        """Connect to the NATS server of a siot instance.

        The first connection fails fast (raises after a couple of attempts) so a wrong URL is
        reported at once; once connected, the link reconnects forever unless told not to, since
        an edge's uplink must survive any outage.

        `credential` (siot.credfile: user and secret, e.g. what `siot device credential`
        printed) logs in as that user, receives replies on the user's own inbox prefix (the only
        one it may read) and, when the credential names its node, confines requests to that
        node's subtree (`scope`). `tls://` URLs (or `tls_ca`) use TLS, trusting `tls_ca` (a CA or
        the server's certificate; default: the system's CAs); `tls_cert`/`tls_key` are the client
        certificate for a server that asks for one.
        """
        if credential is not None:
            options.setdefault("user", credential.user)
            options.setdefault("password", credential.secret)
            options.setdefault("inbox_prefix", subjects.inbox_prefix(credential.user))
            scope = scope or credential.node or None
        if "tls" not in options and (tls_ca or tls_cert or url.startswith("tls://")):
            options["tls"] = client_tls(tls_ca, tls_cert, tls_key)
        options.setdefault("reconnect_time_wait", 0.5)
        options.setdefault("error_cb", _log_connection_error)
        later_attempts = -1 if reconnect_forever else options.pop("max_reconnect_attempts", 60)
        options["max_reconnect_attempts"] = INITIAL_CONNECT_ATTEMPTS
        # nats-py reports each failed attempt to error_cb; it is also the reason given when the
        # attempts hang instead of failing (seen with a server certificate that does not verify).
        failures: list[Exception] = []
        connecting = True
        report = options.get("error_cb", _log_connection_error)

        async def on_error(exc: Exception) -> None:
            if connecting:
                failures.append(exc)
            await report(exc)

        options["error_cb"] = on_error
        nc = nats_client.TolerantClient()
        try:
            async with asyncio.timeout(CONNECT_DEADLINE_ATTEMPTS * timeout_s + 1):
                await nc.connect(url, name=name, token=token or None, connect_timeout=timeout_s, **options)
        except (OSError, NatsError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):  # stop its attempts; a failed TLS upgrade's close hangs
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        await nc.close()
            reason = failures[-1] if failures and isinstance(exc, TimeoutError) else exc
            raise ConnectFailed(f"cannot connect to {url}: {reason or type(reason).__name__}") from exc
        connecting = False

        nc.options["max_reconnect_attempts"] = later_attempts  # read by nats-py at each reconnect
        return cls(nc, timeout_s=timeout_s, owns_connection=True, scope=scope)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.drain()

    async def request(self, subject: str, payload: bytes) -> dict[str, Any]:
        """Send a request and return the reply map; `{"error"}` raises `RequestFailed`."""
        try:
            msg = await self.nc.request(subject, payload, timeout=self.timeout_s)
        except NoRespondersError as exc:
            raise RequestFailed(f"no siot instance answers on {subject}") from exc
        except NatsTimeout as exc:
            raise RequestFailed(f"no reply on {subject} within {self.timeout_s} s") from exc
        reply = decode_reply(msg.data)
        if "error" in reply:
            raise RequestFailed(str(reply["error"]))
        return reply

    # ---- writes ----

    async def _send(self, node: str, parent: str, points: Sequence[Point], ack: bool) -> None:
        subject = subjects.scoped(self.scope, subjects.points(node, parent or None))
        payload = encode([p.to_wire() for p in points])
        if ack:
            await self.request(subject, payload)
        else:
            await self.nc.publish(subject, payload)

    # ---- reads ----

    async def nodes(
        self, parent: str, node: str = subjects.ALL, *, type: str | None = None, deleted: bool = False
    ) -> list[NodeInfo]:
        """`nodes.<parent>.<node>`, page after page (a long listing is paged by the daemon so no
        reply exceeds the broker's max_payload)."""
        request: dict[str, Any] = {"deleted": deleted}
        if type:
            request["type"] = type
        found: list[NodeInfo] = []
        while True:
            reply = await self.request(
                subjects.scoped(self.scope, subjects.nodes(parent, node)), encode(request)
            )
            found += [NodeInfo.from_wire(n) for n in reply["nodes"]]
            if reply.get("next") is None:
                return found
            request["after"] = reply["next"]

    async def history(
        self,
        node: str,
        type: str | None = None,
        key: str | None = None,
        *,
        start_ns: int = 0,
        end_ns: int = HISTORY_END_NS,
        limit: int = 10_000,
    ) -> list[Point]:
        """Up to `limit` logged points with start <= time < end, oldest first, page after page."""
        request = {"type": type, "key": key, "start": start_ns, "end": end_ns, "limit": limit}
        points: list[Point] = []
        while True:
            reply = await self.request(subjects.scoped(self.scope, subjects.history(node)), encode(request))
            points += [point_from_wire(p) for p in reply["points"]]
            if reply.get("next") is None or len(points) >= limit:
                return points
            request["after"] = reply["next"]
            request["limit"] = limit - len(points)

    async def root(self) -> NodeInfo:
        """The instance root; for a scoped client, its scope node (the top of what it may see)."""
        if self.scope:
            return await self.get_node(self.scope)
        return await super().root()

    async def stats(self) -> dict[str, Any]:
        return await self.request(subjects.STATS, b"")

    def changes(self, node: str = subjects.ROOT, *, max_pending: int = 100_000) -> Changes:
        """Committed changes at and under `node` (default: everything), from now on."""
        return Changes(self.nc, node, max_pending)


__all__ = ["BaseClient", "Change", "ChangeStream", "Changes", "Client", "NodeInfo", "TreeNode"]
