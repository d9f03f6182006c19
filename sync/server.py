"""The upstream side of sync: serves edges that connect to this instance's NATS server.

Every instance runs one, so any instance can be an upstream. An edge says hello (which attaches
its root under ours the first time), pushes windows of its log on `sync.up.<edge>`, pulls ours
on `sync.pull.<edge>` (each pull acknowledges the window before it, which is when our cursor
for that edge advances), and checks digests. Nothing here blocks the NATS callback on a commit,
except that `sync.up` rows are queued to the store inside the callback so that windows are
committed exactly in the order they arrived.
"""

from __future__ import annotations

import asyncio
import logging
import reprlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from siot import subjects
from siot.codec import decode_request, encode
from siot.errors import InvalidInput, SiotError, UnknownNode
from siot.points import INT64_MAX, Point
from siot.store import NODE_TYPE, TOMBSTONE, Store, Write
from siot.store.log import LogRow, log_backlog, log_window, node_digests, state_rows, total_digest
from siot.sync import protocol
from siot.sync.apply import MAX_REPORTED_ERRORS, PendingWrite, collect, submit_rows
from siot.sync.cursors import IN, OUT, CursorBook
from siot.sync.status import LinkState, PeerStatus, Role

logger = logging.getLogger(__name__)

SCAN_ROWS = 5_000
MAX_SCAN_PER_PULL = 100_000
DIGEST_PAGE_NODES = 5_000
MAX_STATE_NODES = 1_000
# An edge polls every few seconds: silence beyond this means it is gone.
STALE_AFTER_S = protocol.SESSION_TIMEOUT_S
CONFLICT_WARN_EVERY_S = 60.0  # one WARNING per refused session and minute, not one per retry
SUBSCRIPTION_PENDING_MSGS = 100_000
SUBSCRIPTION_PENDING_BYTES = 256 * 1024 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Detached(InvalidInput):
    """The edge's root has no live parent here: it was deleted from our tree and stays detached
    until someone re-adds (undeletes) it here."""


class Conflict(InvalidInput):
    """Another session (another instance started with the same id) is live for this edge id."""


@dataclass(slots=True)
class Session:
    """The one link currently served for an edge id: its token and when we last heard from it."""

    token: str
    seen: float  # time.monotonic()


def _session_token(request: dict[str, Any]) -> str:
    token = request.get(protocol.SESSION) or ""
    if not isinstance(token, str) or len(token) > protocol.MAX_SESSION_CHARS:
        limit = protocol.MAX_SESSION_CHARS
        raise InvalidInput(f"'{protocol.SESSION}' must be a string of at most {limit} characters")
    return token


def _int_field(request: dict[str, Any], name: str, default: int | None) -> int | None:
    """A non-negative int64 (cursors are stored in SQLite: a larger one would fail every save)."""
    value = request.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise InvalidInput(f"'{name}' must be an integer within 0..{INT64_MAX}, got {reprlib.repr(value)}")
    return value


class SyncServer:
    """`async with SyncServer(nc, store, book):` serves the sync subjects until left."""

    def __init__(
        self,
        nc: NATS,
        store: Store,
        book: CursorBook,
        *,
        window_rows: int = protocol.DEFAULT_WINDOW_ROWS,
        window_bytes: int = protocol.DEFAULT_WINDOW_BYTES,
        downstream_roots: set[str] | None = None,
        upstream_ids: Callable[[], set[str]] | None = None,
        attach_parent: Callable[[str], str | None] | None = None,
    ) -> None:
        """`attach_parent(edge)`: where the edge's credentials let it attach (None: it has none,
        and its hello chooses; "" the root), so an edge credential cannot hang its edge under
        some other part of the tree."""
        self.nc = nc
        # Shared with AppContext: attached edges' roots, whose subtrees local node clients leave alone.
        self.downstream_roots = downstream_roots if downstream_roots is not None else set()
        self.store = store
        self.book = book
        self.window_rows = window_rows
        self.window_bytes = window_bytes
        # The upstreams this instance itself syncs to (ids that must never attach here as edges).
        self.upstream_ids = upstream_ids or set
        self.attach_parent = attach_parent or (lambda _: None)
        self.peers: dict[str, PeerStatus] = {}
        # Nodes an edge's accepted edge rows brought in, per edge: a window may name a node that
        # a window before it creates and that is not committed yet (up to 4 are in flight), so
        # the tree alone would refuse it as outside the subtree.
        self._adopted: dict[str, set[str]] = {}
        self.sessions: dict[str, Session] = {}
        self._conflict_warned: dict[tuple[str, str], float] = {}
        self._up_next: dict[str, int] = {}  # per edge: the `from` the next log window may start at
        self.errors: Counter[str] = Counter()
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._remove_listener: Callable[[], None] | None = None

    async def __aenter__(self) -> SyncServer:
        limits = {
            "pending_msgs_limit": SUBSCRIPTION_PENDING_MSGS,
            "pending_bytes_limit": SUBSCRIPTION_PENDING_BYTES,
        }
        handlers = (self._on_hello, self._on_up, self._on_pull, self._on_digest, self._on_state, self._on_bye)
        for subject, handler in zip(protocol.SERVER_SUBJECTS, handlers, strict=True):
            self._subs.append(await self.nc.subscribe(subject, cb=handler, **limits))
        await self.nc.flush()
        self._remove_listener = self.store.add_commit_listener(self._on_commit)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._remove_listener:
            self._remove_listener()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- helpers ----

    def _record(self, edge: str) -> PeerStatus:
        status = self.peers.get(edge)
        if status is None:
            status = self.peers[edge] = PeerStatus(peer=edge, role=Role.DOWNSTREAM)
            status.out_cursor = self.book.get(edge, OUT) or 0
            status.in_cursor = self.book.get(edge, IN) or 0
        return status

    def peer(self, edge: str) -> PeerStatus:
        """The edge's status record, marked as heard from now."""
        status = self._record(edge)
        status.last_seen_ns = time.time_ns()
        return status

    def _claim(self, edge: str, request: dict[str, Any], *, hello: bool = False) -> None:
        """Serve one session per edge id: refuse a request from another session while the
        current one is live (two instances started with the same id would otherwise both sync,
        and diverge). A hello may take over a session silent for `SESSION_TIMEOUT_S`, or one
        that said bye. Synchronous, so two concurrent hellos cannot both pass."""
        token = _session_token(request)
        now = time.monotonic()
        current = self.sessions.get(edge)
        if current is not None and current.token != token:
            quiet = now - current.seen
            if quiet < protocol.SESSION_TIMEOUT_S:
                raise Conflict(
                    f"{protocol.CONFLICT}: edge id '{edge}' is already connected from another instance "
                    f"to {self.store.instance_id} "
                    f"(session {current.token[:8] or '-'}, heard {quiet:.1f} s ago; this is session "
                    f"{token[:8] or '-'}): two instances must not share an id, give one of them another "
                    f"--id; a session silent for {protocol.SESSION_TIMEOUT_S:.0f} s may be taken over"
                )
            if not hello:
                raise InvalidInput(f"session {token[:8] or '-'} of edge '{edge}' must say hello first")
            logger.warning(
                "sync server: edge %s: session %s takes over from session %s, silent for %.0f s",
                edge,
                token[:8] or "-",
                current.token[:8] or "-",
                quiet,
            )
        self.sessions[edge] = Session(token, now)

    def _known_edge(self, edge: str) -> bool:
        """An edge that attached here (now or before a restart: its cursors are in the book)."""
        return (
            edge in self.downstream_roots
            or self.book.get(edge, OUT) is not None
            or self.book.get(edge, IN) is not None
        )

    def _check_attached(self, edge: str, request: dict[str, Any]) -> None:
        tree = self.store.tree
        if not tree.has_node(edge):
            raise UnknownNode(edge, "say hello on sync.hello first")
        if not self._known_edge(edge):
            raise InvalidInput(f"'{edge}' is a node of {self.store.instance_id}, not an edge attached to it")
        self._claim(edge, request)
        if not tree.live_parents(edge):
            self.peer(edge).state = LinkState.DETACHED
            raise Detached(f"detached: edge '{edge}' was deleted from the tree of {self.store.instance_id}")

    def _members(self, edge: str) -> list[str]:
        """The edge's subtree here, parents before children (deleted nodes included, so
        deletes and undeletes keep flowing)."""
        return self.store.tree.descendants(edge, include_deleted=True)

    async def _reply(self, msg: Msg, payload: dict[str, Any]) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, encode(payload))

    async def _fail(self, msg: Msg, edge: str, exc: Exception) -> None:
        self.errors[edge] += 1
        if isinstance(exc, Conflict):
            self._record(edge).conflict(str(exc))
            self._warn_conflict(msg, edge, exc)
        else:
            if not isinstance(exc, Detached):
                logger.warning("sync server: refused %s: %s", msg.subject, exc)
            if edge in self.peers:
                self.peers[edge].error(str(exc))
        await self._reply(msg, {"error": str(exc)})

    def _warn_conflict(self, msg: Msg, edge: str, exc: Conflict) -> None:
        """A refused instance retries every few seconds: warn once a minute per session."""
        try:
            token = _session_token(decode_request(msg.data))
        except InvalidInput:
            token = ""
        now = time.monotonic()
        if now - self._conflict_warned.get((edge, token), -CONFLICT_WARN_EVERY_S) < CONFLICT_WARN_EVERY_S:
            return
        if len(self._conflict_warned) > 1_000:
            self._conflict_warned = {
                k: t for k, t in self._conflict_warned.items() if now - t < CONFLICT_WARN_EVERY_S
            }
        self._conflict_warned[(edge, token)] = now
        logger.warning("sync server: refused %s: %s", msg.subject, exc)

    def _serve(self, msg: Msg, handler: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        """Answer a request in its own task, so a slow one does not hold up other edges."""
        edge = msg.subject.rsplit(".", 1)[1]

        async def run() -> None:
            try:
                subjects.check_node_token(edge, what="edge id")
                reply = await handler(edge, decode_request(msg.data))
            except InvalidInput as exc:
                await self._fail(msg, edge, exc)
                return
            except Exception as exc:
                logger.exception("sync server: %s failed", msg.subject)
                await self._fail(msg, edge, SiotError(f"internal error: {exc}"))
                return
            await self._reply(msg, {"ok": True, **reply})

        self._spawn(run())

    # ---- hello ----

    async def _on_hello(self, msg: Msg) -> None:
        self._serve(msg, self._hello)

    async def _hello(self, edge: str, request: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        self._adopted.pop(edge, None)  # a new session: what it brings in is in the tree by now
        if edge == store.instance_id:
            raise InvalidInput(f"instance '{edge}' cannot sync with itself")
        tree = store.tree
        if edge in self.upstream_ids() or (not tree.has_node(edge) and self._known_edge(edge)):
            # Its cursors in our book are those of our own link to it: attaching would reset them.
            raise InvalidInput(f"'{edge}' is an upstream of {store.instance_id}, not an edge of it")
        if tree.has_node(edge) and not self._known_edge(edge):
            # Saying hello as an existing node would make its subtree writable over sync.up.
            raise InvalidInput(f"'{edge}' is a node of {store.instance_id}, not an edge: it cannot attach")
        self._claim(edge, request, hello=True)
        self._up_next[edge] = self.book.get(edge, IN) or 0
        if not tree.has_node(edge):
            parent = request.get("parent") or store.root_id
            if not isinstance(parent, str):
                raise InvalidInput("'parent' must be a node id")
            allowed = self.attach_parent(edge)
            allowed = None if allowed is None else allowed or store.root_id
            if allowed is not None and parent != allowed:
                if request.get("parent"):
                    raise InvalidInput(
                        f"edge '{edge}' may attach only under '{allowed}' (its credential says so)"
                    )
                parent = allowed
            subjects.check_node_token(parent, what="parent id")
            if not tree.live_parents(parent):
                raise UnknownNode(parent, f"no such parent in the tree of {store.instance_id}")
            await store.submit(
                edge, [Point(NODE_TYPE, "device"), Point(TOMBSTONE, 0)], parent=parent, via=edge
            )
            # Nothing logged before the attach can belong to the edge's subtree.
            self.book.set(edge, OUT, store.last_seq)
            logger.info("sync server: edge %s attached under %s", edge, parent)
        self.downstream_roots.add(edge)
        status = self.peer(edge)
        parents = tree.live_parents(edge)
        status.state = LinkState.CONNECTED if parents else LinkState.DETACHED
        status.out_cursor = self.book.get(edge, OUT) or 0
        if parents:
            session = self.sessions[edge].token[:8] or "-"
            logger.info("sync server: edge %s connected (session %s)", edge, session)
        return {
            "instance": store.instance_id,
            "version": protocol.PROTOCOL_VERSION,
            "attached": bool(parents),
            "parents": sorted(parents),
            "inCursor": self.book.get(edge, IN) or 0,
            "outCursor": status.out_cursor,
            "lastSeq": store.last_seq,
        }

    # ---- up: the edge's log (or state) arriving ----

    async def _on_up(self, msg: Msg) -> None:
        edge = msg.subject.rsplit(".", 1)[1]
        try:
            subjects.check_node_token(edge, what="edge id")
            request = decode_request(msg.data)
            self._check_attached(edge, request)
            to = _int_field(request, "to", None)
            if to is not None:
                self._check_window(edge, _int_field(request, "from", None), to)
            rows = protocol.decode_rows(request.get("rows", []))
            inside, outside = self._in_subtree(edge, rows)
            # Queued here, inside the callback, so windows commit in arrival order.
            pending = submit_rows(self.store, inside, via=edge, fallback_instance=edge)
        except InvalidInput as exc:
            await self._fail(msg, edge, exc)
            return
        except SiotError as exc:  # store closing
            await self._fail(msg, edge, exc)
            return
        if outside:
            self.errors[edge] += 1  # one count per window that reached outside the edge's subtree
        self._spawn(self._finish_up(msg, edge, pending, to, len(rows), outside))

    def _check_window(self, edge: str, start: int | None, to: int) -> None:
        """A log window must continue what we have applied: one starting past it would move our
        cursor over rows we never received. (Windows pipeline, so the next start is tracked as
        they arrive, before their commits.)"""
        if start is None or start > to:
            raise InvalidInput(f"a log window needs 'from' <= 'to', got from {start} to {to}")
        expected = self._up_next.get(edge)
        if expected is None:
            expected = self.book.get(edge, IN) or 0
        if start > expected:
            raise InvalidInput(
                f"window from {start} leaves a gap: {self.store.instance_id} has your log up to {expected}; "
                "say hello and resend from its inCursor"
            )
        self._up_next[edge] = max(expected, to)

    def _in_subtree(
        self, edge: str, rows: list[protocol.SyncRow]
    ) -> tuple[list[protocol.SyncRow], list[str]]:
        """The rows about the edge's subtree as it stands here, and why the others are refused.
        Node points must be of a member; an edge row must hang under a member, and brings its
        node in unless that node exists here outside the subtree (an edge never adopts, and so
        writes, a node it does not own). Refused rows do not stall the window."""
        tree = self.store.tree
        adopted = self._adopted.setdefault(edge, set())
        # Once committed, an adopted node is in the tree and is judged by where it is there.
        adopted.difference_update([node for node in adopted if tree.has_node(node)])
        members = set(self._members(edge)) | adopted
        inside: list[protocol.SyncRow] = []
        outside: list[str] = []
        for index, row in enumerate(rows):
            if row.parent:
                ok = row.parent in members and (row.node in members or not tree.has_node(row.node))
                if ok and row.node not in members:
                    members.add(row.node)
                    adopted.add(row.node)
            else:
                ok = row.node in members
            if ok:
                inside.append(row)
            else:
                where = f"edge '{row.parent}' -> '{row.node}'" if row.parent else f"node '{row.node}'"
                outside.append(f"row {index}: {where} is outside the subtree of '{edge}' here")
        if outside:
            logger.warning("sync server: %d rows from %s refused: %s", len(outside), edge, outside[:5])
        return inside, outside

    async def _finish_up(
        self,
        msg: Msg,
        edge: str,
        pending: list[PendingWrite],
        to: int | None,
        n: int,
        outside: list[str],
    ) -> None:
        try:
            applied = await collect(pending)
        except SiotError as exc:
            await self._fail(msg, edge, exc)
            return
        applied.refused += len(outside)
        applied.errors = (outside + applied.errors)[:MAX_REPORTED_ERRORS]
        status = self.peer(edge)
        status.received += n
        status.state = LinkState.CONNECTED
        if to is not None:
            self.book.set(edge, IN, to)
            status.in_cursor = to
        if applied.errors:
            status.error("; ".join(applied.errors))
            logger.warning("sync server: %d rows from %s refused: %s", applied.refused, edge, applied.errors)
        status.synced()
        await self._reply(
            msg,
            {
                "ok": True,
                "ack": to,
                "changed": applied.changed,
                "refused": applied.refused,
                "outside": len(outside),
                "errors": applied.errors,
            },
        )

    # ---- pull: our log going down ----

    async def _on_pull(self, msg: Msg) -> None:
        self._serve(msg, self._pull)

    async def _pull(self, edge: str, request: dict[str, Any]) -> dict[str, Any]:
        self._check_attached(edge, request)
        status = self.peer(edge)
        ack = _int_field(request, "ack", None)
        if ack is not None and ack > self.store.last_seq:
            # Every `to` we hand out is within our log; a larger ack would skip what comes next.
            raise InvalidInput(f"'ack' {ack} is past the end of this log ({self.store.last_seq})")
        if ack is not None:
            self.book.set(edge, OUT, ack)
            status.out_cursor = ack
        limit = min(_int_field(request, "limit", self.window_rows) or self.window_rows, self.window_rows)
        after = self.book.get(edge, OUT) or 0
        window, to = await self._window(edge, after, limit)
        status.state = LinkState.CONNECTED
        status.shipped += len(window)
        status.synced()
        return {"rows": protocol.encode_rows(window), "to": to, "lastSeq": self.store.last_seq}

    async def _window(self, edge: str, after: int, limit: int) -> tuple[list[LogRow], int]:
        """Rows after `after` that concern the edge's subtree, within the window limits, and the
        seq up to which the log was examined (the edge acknowledges that)."""
        members = set(self._members(edge))
        window: list[LogRow] = []
        size = 0
        position = after
        while position - after < MAX_SCAN_PER_PULL:
            rows, scanned = await log_window(self.store, position, SCAN_ROWS, exclude_via=edge)
            for row in rows:
                node, parent = row[1], row[2]
                if (parent or node) not in members:
                    continue
                size += protocol.row_size(row)
                if window and (len(window) >= limit or size > self.window_bytes):
                    return window, window[-1][0]
                window.append(row)
            position = scanned
            if len(rows) < SCAN_ROWS:
                break
        return window, position

    # ---- verification and repair ----

    async def _on_digest(self, msg: Msg) -> None:
        self._serve(msg, self._digest)

    async def _digest(self, edge: str, request: dict[str, Any]) -> dict[str, Any]:
        self._check_attached(edge, request)
        after = request.get("after") or ""
        if not isinstance(after, str):
            raise InvalidInput("'after' must be a node id")
        limit = min(_int_field(request, "limit", DIGEST_PAGE_NODES) or DIGEST_PAGE_NODES, DIGEST_PAGE_NODES)
        digests = node_digests(await state_rows(self.store, self._members(edge)))
        names = sorted(n for n in digests if n > after)
        return {
            "nodes": {n: digests[n] for n in names[:limit]},
            "more": len(names) > limit,
            "total": total_digest(digests),
        }

    async def _on_state(self, msg: Msg) -> None:
        self._serve(msg, self._state)

    async def _state(self, edge: str, request: dict[str, Any]) -> dict[str, Any]:
        self._check_attached(edge, request)
        nodes = request.get("nodes")
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise InvalidInput("'nodes' must be a list of node ids")
        if len(nodes) > MAX_STATE_NODES:
            raise InvalidInput(f"at most {MAX_STATE_NODES} nodes per state request")
        members = self._members(edge)
        rows = order_state_rows(await state_rows(self.store, members, only=nodes), members)
        return {"rows": protocol.encode_rows(rows)}

    async def _on_bye(self, msg: Msg) -> None:
        self._serve(msg, self._bye)

    async def _bye(self, edge: str, request: dict[str, Any]) -> dict[str, Any]:
        """The current session closes cleanly: the id is free for another at once."""
        token = _session_token(request)
        current = self.sessions.get(edge)
        if current is not None and current.token == token:
            del self.sessions[edge]
            if edge in self.peers and self.peers[edge].state == LinkState.CONNECTED:
                self.peers[edge].state = LinkState.DISCONNECTED
            logger.info("sync server: edge %s (session %s) said bye", edge, token[:8] or "-")
        return {}

    # ---- notify and status ----

    async def _on_commit(self, writes: list[Write]) -> None:
        """Tell connected edges that something in their subtree changed (not what they sent)."""
        connected = {p for p, s in self.peers.items() if s.state == LinkState.CONNECTED}
        if not connected:
            return
        tree = self.store.tree
        hit: set[str] = set()
        for write in writes:
            if write.error is not None or not write.changed:
                continue
            anchor = write.parent or write.node
            # The edge's own root counts too, so an edge learns at once that it was detached.
            targets = connected.intersection(tree.ancestors(anchor) | {anchor, write.node})
            hit.update(targets - {write.rows.via})
        for edge in hit:
            await self.nc.publish(protocol.notify(edge), b"")

    def live_records(self, now_ns: int) -> list[PeerStatus]:
        """The records of the edges heard from since start, a connected one that has gone quiet
        shown as disconnected (as `status` does, without its query for the others)."""
        for status in self.peers.values():
            if status.state == LinkState.CONNECTED and now_ns - status.last_seen_ns > STALE_AFTER_S * 1e9:
                status.state = LinkState.DISCONNECTED
        return [status for _, status in sorted(self.peers.items())]

    async def status(self) -> list[dict[str, Any]]:
        """Every downstream root (each edge attached here, heard from since start or not), and
        any other id that asked (refused ones included, with their error)."""
        now = time.time_ns()
        tree = self.store.tree
        unseen = {e for e in self.downstream_roots if e not in self.peers and tree.has_node(e)}
        if unseen:
            # Not heard from since start: when their cursors last moved is the best we know.
            query = "SELECT peer, MAX(updated_ns) FROM sync_cursors GROUP BY peer"
            saved = dict(await self.store.fetch(query))
            for edge in unseen:
                status = self._record(edge)
                status.state = LinkState.DISCONNECTED if tree.live_parents(edge) else LinkState.DETACHED
                status.last_sync_ns = status.last_seen_ns = int(saved.get(edge) or 0)
        result = []
        for edge, status in sorted(self.peers.items()):
            if edge in self.downstream_roots and tree.has_node(edge):
                # Deleted (or re-added) here since it was last heard from.
                if not tree.live_parents(edge):
                    status.state = LinkState.DETACHED
                elif status.state == LinkState.DETACHED:
                    status.state = LinkState.DISCONNECTED
            if status.state == LinkState.CONNECTED and now - status.last_seen_ns > STALE_AFTER_S * 1e9:
                status.state = LinkState.DISCONNECTED
            backlog = await log_backlog(self.store, status.out_cursor, exclude_via=edge)
            result.append(status.to_wire(backlog))
        return result


def order_state_rows(rows: list[LogRow], members: list[str]) -> list[LogRow]:
    """Parents before children, and each node's edge rows before its node points, so a receiver
    can create nodes before it writes their points."""
    rank = {node: index for index, node in enumerate(members)}
    return sorted(rows, key=lambda r: (rank.get(r[1], len(rank)), r[1], r[2] == "", r[2]))
