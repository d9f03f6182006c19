"""The NATS API (DESIGN §3): the one door through which every change enters the store.

Write subjects never await a commit inside the subscription callback (nats-py runs a
subscription's callbacks one at a time, so that would serialise everything on commit latency).
They validate, submit to the store and return; the store's commit listener sends each ack and
the fan-out, after the transaction has committed.
"""

from __future__ import annotations

import asyncio
import logging
import reprlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from siot import scope as scopes
from siot import subjects
from siot.codec import decode_points, decode_request, encode
from siot.errors import InvalidInput, SiotError, StoreBusy, UnknownNode
from siot.fair import FairScheduler, requester_of
from siot.fanout import Fanout
from siot.points import INT64_MAX, INT64_MIN, Point
from siot.reads import selected_edges
from siot.store import Write
from siot.write_path import WritePath

logger = logging.getLogger(__name__)

OK_REPLY = encode({"ok": True})
DEFAULT_HISTORY_LIMIT = 10_000
MAX_HISTORY_LIMIT = 1_000_000
HISTORY_READ_CHUNK = 5_000
YIELD_EVERY_MESSAGES = 64
# What nats-py may hold for p.> before the callback takes it; past it nats-server's messages are
# dropped as a slow consumer's (reported by the connection's error callback). The callback only
# decodes and queues (the store's own queue is bounded), so this fills only when decoding falls
# behind a flood; 64 MB keeps the daemon inside its memory budget then.
SUBSCRIPTION_PENDING_MSGS = 200_000
SUBSCRIPTION_PENDING_BYTES = 64 * 1024 * 1024
# Read requests (nodes.*, history.*) run at most this many at once, round-robin across
# requesters, each of which may have this many waiting (siot/fair.py).
READ_CONCURRENCY = 4
READS_PER_REQUESTER = 1_000
# Room kept in a reply for its envelope (`ok`, `next`); the rest of the broker's max_payload is
# for the page's items. nats-server drops a larger message without a word to either side.
REPLY_ENVELOPE_BYTES = 4096
MAX_SCOPE_KEYS = 10_000  # scopes counted apart in scope_refused; the rest together


def node_wire(
    node_id: str, node_type: str, parent: str, points: list[Point], edge_points: list[Point]
) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": node_type,
        "parent": parent,
        "points": [p.to_wire() for p in points],
        "edgePoints": [p.to_wire() for p in edge_points],
    }


class Api:
    """Serves the NATS API for one store. `async with Api(nc, write_path):` subscribes and returns
    when every subscription is live; leaving unsubscribes (stops intake) but leaves the store open.

    Writes enter the one write path (siot/write_path.py); this class decodes them, acknowledges
    them after commit, and counts what was refused. The fan-out of committed changes is
    siot/fanout.py's."""

    def __init__(self, nc: NATS, write_path: WritePath, fanout: Fanout | None = None) -> None:
        """`fanout`: the acks go through its ordered queue, so each follows the fan-out of the
        commits before it (siot/fanout.py); without it (a bare API in a test) they are published
        at once."""
        self.nc = nc
        self.fanout = fanout
        self.write_path = write_path
        self.store = write_path.store
        # False until the app has started every node client; served on siot.stats so tools and
        # tests can tell "answers requests" from "fully running".
        self.ready = False
        self.accepted_points = 0
        self._handled = 0  # messages taken from the subscriptions (for `_take_turns`)
        self._reads = FairScheduler(READ_CONCURRENCY, READS_PER_REQUESTER)
        self._subs: list[Subscription] = []
        # Scoped requests (s.<scope>.…) refused as outside their scope, per scope.
        self.scope_refused: Counter[str] = Counter()
        self._remove_listener: Any = None
        self._stats: dict[str, Callable[[], Any]] = {}

    def add_stats(self, name: str, source: Callable[[], Any]) -> Callable[[], None]:
        """Serve `source()` as field `name` of `siot.stats` (e.g. the sync server's error counts),
        so one request shows every counter of the instance. Returns the function that removes it."""
        self._stats[name] = source
        return lambda: self._stats.pop(name, None)

    async def __aenter__(self) -> Api:
        await self._reads.__aenter__()
        self._remove_listener = self.store.add_commit_listener(self._on_commit)
        limits = {
            "pending_msgs_limit": SUBSCRIPTION_PENDING_MSGS,
            "pending_bytes_limit": SUBSCRIPTION_PENDING_BYTES,
        }
        self._subs = [
            await self.nc.subscribe("p.>", cb=self._on_points, **limits),
            await self.nc.subscribe("nodes.*.*", cb=self._on_nodes),
            await self.nc.subscribe("history.*", cb=self._on_history),
            await self.nc.subscribe(subjects.STATS, cb=self._on_stats),
            await self.nc.subscribe(f"{subjects.SCOPED}.*.p.>", cb=self._on_scoped_points, **limits),
            await self.nc.subscribe(f"{subjects.SCOPED}.*.nodes.*.*", cb=self._on_scoped_nodes),
            await self.nc.subscribe(f"{subjects.SCOPED}.*.history.*", cb=self._on_scoped_history),
        ]
        await self.nc.flush()
        logger.info("api: serving instance %s", self.store.instance_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        await self._reads.__aexit__(None, None, None)
        if self._remove_listener:
            self._remove_listener()

    async def _reply_error(self, msg: Msg, node: str, exc: Exception) -> None:
        self.write_path.refused(node, exc)
        if msg.reply:
            await self.nc.publish(msg.reply, encode({"error": str(exc)}))

    async def _take_turns(self) -> None:
        """Let other tasks run every YIELD_EVERY_MESSAGES messages. nats-py hands a
        subscription's queued messages to its callback one after another without giving the
        loop back while the callback does not suspend, and refusing or queueing one does not:
        a burst of 50,000 requests on history.* held every other subscription (the writes on
        p.*, their acks) for over a second."""
        self._handled += 1
        if self._handled % YIELD_EVERY_MESSAGES == 0:
            await asyncio.sleep(0)

    async def _on_points(self, msg: Msg) -> None:
        await self._take_turns()
        if not msg.reply and self.store.full:
            # Nobody waits for this one and the store would refuse it: drop it before paying
            # for decoding, so a fire-and-forget flood drains from the subscription fast and
            # other clients' writes queued behind it are reached sooner.
            self.write_path.busy(self.store.busy_error(), told=False)
            return
        await self._write(msg, msg.subject.split("."), None)

    async def _write(self, msg: Msg, tokens: list[str], scope: str | None) -> None:
        """A write on `p.<node>[.<parent>]` (`tokens`), confined to `scope` when it came scoped."""
        node = tokens[1] if len(tokens) > 1 else ""
        try:
            if len(tokens) not in (2, 3):
                raise InvalidInput(f"subject {msg.subject!r} must be p.<node> or p.<node>.<parent>")
            parent = tokens[2] if len(tokens) == 3 else ""
            self.write_path.check_target(node, parent)
            if scope is not None:
                self._check_scope(scope, node, parent)
            batch = decode_points(msg.data, max_points=self.write_path.max_batch_points)
            self.write_path.submit(node, batch, parent=parent, reply=msg.reply or None)
        except InvalidInput as exc:
            await self._reply_error(msg, node, exc)
        except StoreBusy as exc:
            await self._refuse_busy(msg, exc)
        except SiotError as exc:  # store closing: tell the sender, so it can retry elsewhere
            await self._reply_error(msg, node, exc)

    def _check_scope(self, scope: str, node: str, parent: str = "", read: str = "") -> None:
        """Refuse (and count) a scoped request that reaches outside its scope's subtree."""
        tree = self.store.tree
        try:
            subjects.check_node_token(scope, what="scope")
            if read:
                scopes.check_scoped_read(tree, scope, read, node)
            elif parent:
                scopes.check_scoped_edge(tree, scope, node, parent)
            else:
                scopes.check_scoped_node(tree, scope, node)
        except InvalidInput:
            if scope in self.scope_refused or len(self.scope_refused) < MAX_SCOPE_KEYS:
                self.scope_refused[scope] += 1
            else:
                self.scope_refused["(other)"] += 1
            raise

    async def _on_scoped_points(self, msg: Msg) -> None:
        """`s.<scope>.p.<node>[.<parent>]`: a write confined to the scope's subtree."""
        await self._take_turns()
        tokens = msg.subject.split(".")
        await self._write(msg, tokens[2:], tokens[1])

    async def _on_scoped_nodes(self, msg: Msg) -> None:
        _, scope, _, parent, node = msg.subject.split(".")
        try:
            self._check_scope(scope, node, read=parent)
        except InvalidInput as exc:
            await self._reply_error(msg, node, exc)
            return
        await self._read_fairly(msg, node, lambda req: self._nodes(parent, node, req))

    async def _on_scoped_history(self, msg: Msg) -> None:
        _, scope, _, node = msg.subject.split(".")
        try:
            self._check_scope(scope, node)
        except InvalidInput as exc:
            await self._reply_error(msg, node, exc)
            return
        await self._read_fairly(msg, node, lambda req: self._history(node, req))

    async def _refuse_busy(self, msg: Msg, exc: StoreBusy) -> None:
        """Not bad input, and it comes in floods: counted apart (write_path.busy)."""
        self.write_path.busy(exc, told=bool(msg.reply))
        if msg.reply:
            await self.nc.publish(msg.reply, encode({"error": str(exc)}))

    async def _on_commit(self, writes: list[Write]) -> None:
        """Acknowledge every write of a committed group that asked for it, with its error if it
        has one; count what was stored and refused (in-process writes too: they pass the same
        listener)."""
        publish = self.fanout.send if self.fanout is not None else self.nc.publish
        for write in writes:
            if write.error is not None:
                self.write_path.refused(write.node, write.error)
                if write.reply:
                    await publish(write.reply, encode({"error": str(write.error)}))
                continue
            if write.reply:
                await publish(write.reply, OK_REPLY)
            self.accepted_points += len(write.changed)

    async def _respond(self, msg: Msg, node: str, handler: Any) -> None:
        """Run a request handler and reply with its map, or with {"error"} on bad input."""
        try:
            reply = await handler(decode_request(msg.data))
        except InvalidInput as exc:
            await self._reply_error(msg, node, exc)
            return
        except Exception as exc:
            logger.exception("api: %s failed", msg.subject)
            await self._reply_error(msg, node, SiotError(f"internal error: {exc}"))
            return
        if msg.reply:
            payload = reply.payload() if isinstance(reply, EncodedPage) else encode({"ok": True, **reply})
            await self.nc.publish(msg.reply, payload)

    async def _read_fairly(self, msg: Msg, node: str, handler: Any) -> None:
        """Queue a read request under its requester (siot/fair.py) instead of serving it in the
        subscription's callback, where it would wait behind every request queued before it."""
        await self._take_turns()
        if not msg.reply:  # nobody waits for the answer (e.g. published over MQTT): not served
            self.write_path.refused(
                node, InvalidInput(f"{msg.subject}: a read request needs a reply subject")
            )
            return
        if not self._reads.submit(requester_of(msg.reply), lambda: self._respond(msg, node, handler)):
            await self._refuse_busy(
                msg, StoreBusy(f"busy: {READS_PER_REQUESTER} of your read requests are waiting; retry later")
            )

    async def _on_nodes(self, msg: Msg) -> None:
        _, parent, node = msg.subject.split(".")
        await self._read_fairly(msg, node, lambda req: self._nodes(parent, node, req))

    def _page_budget(self) -> int:
        return self.nc.max_payload - REPLY_ENVELOPE_BYTES

    async def _nodes(self, parent: str, node: str, request: dict[str, Any]) -> EncodedPage:
        """The nodes asked for, in id order, as many as fit in one reply; `next` (an id, passed
        back as `after`) continues the listing when they did not all fit."""
        after = request.get("after")
        if after is not None and not isinstance(after, str):
            raise InvalidInput("nodes field 'after' must be the 'next' id of the previous page")
        edges = selected_edges(
            self.store.tree,
            self.store.root_id,
            parent,
            node,
            node_type=request.get("type") or None,
            deleted=bool(request.get("deleted", False)),
        )
        page = ReplyPage(self._page_budget())
        for edge_parent, child, page_key in edges:
            if after is not None and page_key <= after:
                continue
            state = self.store.tree.edge(edge_parent, child)
            if state is None:  # the tree was reloaded from disk meanwhile (a failed commit)
                continue
            wire = node_wire(
                child,
                state.node_type,
                edge_parent,
                await self.store.node_points(child),
                await self.store.edge_points(edge_parent, child),
            )
            if not page.add(wire, page_key, f"node '{child}'", f"read its points with history.{child}"):
                break
        return page.reply("nodes")

    async def _on_history(self, msg: Msg) -> None:
        node = msg.subject.split(".", 1)[1]
        await self._read_fairly(msg, node, lambda req: self._history(node, req))

    async def _history(self, node: str, request: dict[str, Any]) -> EncodedPage:
        if not self.store.tree.has_node(node):
            raise UnknownNode(node)
        fields = {}
        for name in ("start", "end", "limit"):
            value = request.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not INT64_MIN <= value <= INT64_MAX
            ):
                # reprlib: a hostile value may nest ~1,000 deep, past what repr() can recurse
                raise InvalidInput(
                    f"history field '{name}' must be an integer (ns) within int64, got {reprlib.repr(value)}"
                )
            fields[name] = value
        for name in ("type", "key"):
            if request.get(name) is not None and not isinstance(request[name], str):
                raise InvalidInput(f"history field '{name}' must be a string")
        limit = DEFAULT_HISTORY_LIMIT if fields["limit"] is None else fields["limit"]
        if not 0 < limit <= MAX_HISTORY_LIMIT:
            raise InvalidInput(f"history limit must be 1..{MAX_HISTORY_LIMIT}")
        after = request.get("after")
        if after is not None and not (
            isinstance(after, list)
            and len(after) == 2
            and all(type(v) is int and INT64_MIN <= v <= INT64_MAX for v in after)
        ):
            raise InvalidInput("history field 'after' must be the 'next' [time, seq] of the previous page")
        page = ReplyPage(self._page_budget())
        cursor = None if after is None else (after[0], after[1])
        remaining = limit
        start = fields["start"] or 0
        end = fields["end"] or time.time_ns() + 86_400 * 10**9
        # Read in chunks until the page is full: a request for a million points reads what fits
        # one reply (and one chunk more), not a million rows at once.
        while remaining > 0:
            chunk = min(remaining, HISTORY_READ_CHUNK)
            rows = await self.store.history_page(
                node,
                type=request.get("type"),
                key=request.get("key"),
                start=start,
                end=end,
                limit=chunk,
                after=cursor,
            )
            for seq, point in rows:
                if not page.add(point.to_wire(), [point.time, seq], "one history point", "narrow it by type"):
                    return page.reply("points")
            if len(rows) < chunk:
                break
            remaining -= len(rows)
            cursor = (rows[-1][1].time, rows[-1][0])
        return page.reply("points")

    def stats(self) -> dict[str, Any]:
        """What `siot.stats` answers: the instance's counters and every added source. /metrics
        (siot/metrics.py) renders the same snapshot, so the two always agree."""
        return {
            "instance": self.store.instance_id,
            "ready": self.ready,
            "lastSeq": self.store.last_seq,
            "commits": self.store.commits,
            "committedWrites": self.store.committed_writes,
            "queuedPoints": self.store.queued_points,
            "acceptedPoints": self.accepted_points,
            "busyRefused": self.write_path.busy_refused,
            "busyDropped": self.write_path.busy_dropped,
            "errors": dict(self.write_path.errors),
            "rejectedByReason": dict(self.write_path.reasons),
            "nodes": len(self.store.tree.parents),
            **{name: source() for name, source in self._stats.items()},
        }

    async def _on_stats(self, msg: Msg) -> None:
        async def stats(_: dict[str, Any]) -> dict[str, Any]:
            return self.stats()

        await self._respond(msg, "", stats)


class ReplyPage:
    """Items of one reply, up to a byte budget, each encoded once: the reply is assembled from
    the encoded items (`EncodedPage`), not encoded again. When an item does not fit, the page is
    cut and its reply carries `next`: the key of the last item taken, which the requester passes
    back as `after` to continue."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.items: list[bytes] = []
        self.size = 0
        self.last_key: Any = None
        self.cut = False

    def add(self, item: Any, key: Any, what: str, hint: str) -> bool:
        """Take `item` if it fits; False when the page is full. An item that fits no page at all
        is refused with an error that says what to do instead."""
        encoded = encode(item)
        if self.size + len(encoded) > self.budget:
            if not self.items:
                raise InvalidInput(
                    f"{what} is {len(encoded):,} bytes, over the {self.budget:,}-byte reply limit: {hint}"
                )
            self.cut = True
            return False
        self.items.append(encoded)
        self.size += len(encoded)
        self.last_key = key
        return True

    def reply(self, name: str) -> EncodedPage:
        return EncodedPage(name, self.items, self.last_key if self.cut else None)


@dataclass(slots=True)
class EncodedPage:
    """A reply `{"ok": true, name: [items], "next": ...}` whose items are msgpack already."""

    name: str
    items: list[bytes]
    next: Any = None

    def payload(self) -> bytes:
        pack = msgpack.Packer(use_bin_type=True).pack
        header = msgpack.Packer().pack_map_header(2 if self.next is None else 3)
        parts = [header, pack("ok"), pack(True), pack(self.name)]
        parts += [msgpack.Packer().pack_array_header(len(self.items)), *self.items]
        if self.next is not None:
            parts += [pack("next"), pack(self.next)]
        return b"".join(parts)


async def wait_closed(nc: NATS) -> None:
    """Drain a connection, ignoring one that is already closed."""
    if not nc.is_closed:
        try:
            await asyncio.wait_for(nc.drain(), timeout=5)
        except Exception:
            logger.debug("drain failed; closing", exc_info=True)
            await nc.close()
