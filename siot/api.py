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
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from siot import subjects
from siot.codec import DEFAULT_MAX_BATCH_POINTS, decode_points, decode_request, encode
from siot.errors import InvalidInput, SiotError, StoreBusy, UnknownNode
from siot.fair import FairScheduler, requester_of
from siot.outbox import Outbox
from siot.points import INT64_MAX, INT64_MIN, Point
from siot.store import ROOT_PARENT, Store, Write

logger = logging.getLogger(__name__)

OK_REPLY = encode({"ok": True})
DEFAULT_HISTORY_LIMIT = 10_000
MAX_HISTORY_LIMIT = 1_000_000
# What nats-py may hold for p.> before the callback takes it; past it nats-server's messages are
# dropped as a slow consumer's (reported by the connection's error callback). The callback only
# decodes and queues (the store's own queue is bounded), so this fills only when decoding falls
# behind a flood; 64 MB keeps the daemon inside its memory budget then.
SUBSCRIPTION_PENDING_MSGS = 200_000
SUBSCRIPTION_PENDING_BYTES = 64 * 1024 * 1024
BUSY_LOG_INTERVAL_S = 10.0
MAX_ERROR_KEYS = 10_000
# Read requests (nodes.*, history.*) run at most this many at once, round-robin across
# requesters, each of which may have this many waiting (siot/fair.py).
READ_CONCURRENCY = 4
READS_PER_REQUESTER = 1_000
OTHER_ERRORS_KEY = "(other)"
# Rejected inputs are logged one line each, up to this many per interval: a flood of bad input
# must not become a flood of log lines (disk, journald).
ERROR_LOG_BURST = 50
ERROR_LOG_INTERVAL_S = 10.0
# Room kept in a reply for its envelope (`ok`, `next`); the rest of the broker's max_payload is
# for the page's items. nats-server drops a larger message without a word to either side.
REPLY_ENVELOPE_BYTES = 4096

# Checks a decoded batch before it is stored: (node, parent, points); raises `InvalidInput`
# (usually `InvalidPoint`) to refuse the whole batch. Runs on the hot path: keep it cheap.
Validator = Callable[[str, str, list[Point]], None]


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
    """Serves the NATS API for one store. `async with Api(nc, store):` subscribes and returns when
    every subscription is live; leaving unsubscribes (stops intake) but leaves the store open."""

    def __init__(self, nc: NATS, store: Store, *, max_batch_points: int = DEFAULT_MAX_BATCH_POINTS) -> None:
        self.nc = nc
        self.store = store
        self.max_batch_points = max_batch_points
        self.errors: Counter[str] = Counter()
        # False until the app has started every node client; served on siot.stats so tools and
        # tests can tell "answers requests" from "fully running".
        self.ready = False
        self.accepted_points = 0
        # Writes refused because the store's queue was full: with a reply subject the sender was
        # told "busy"; without one they are dropped (like nats-server's slow-consumer count).
        self.busy_refused = 0
        self.busy_dropped = 0
        self._busy_logged_at = 0.0
        self._error_log = LogBudget(ERROR_LOG_BURST, ERROR_LOG_INTERVAL_S)
        self._reads = FairScheduler(READ_CONCURRENCY, READS_PER_REQUESTER)
        self._subs: list[Subscription] = []
        self._remove_listener: Any = None
        self._validators: list[Validator] = []
        self._stats: dict[str, Callable[[], Any]] = {}

    def add_validator(self, validator: Validator) -> Callable[[], None]:
        """Check every batch on `p.*` before it is stored (e.g. data models); a refusal is replied
        and counted like any bad input. Returns the function that removes the validator."""
        self._validators.append(validator)
        return lambda: self._validators.remove(validator)

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

    def _count_error(self, node: str, exc: Exception) -> None:
        # Keyed by a token the sender chose: past MAX_ERROR_KEYS distinct ones (a flood of
        # p.<random>), the rest are counted together so the counter and siot.stats stay bounded.
        if node not in self.errors and len(self.errors) >= MAX_ERROR_KEYS:
            node = OTHER_ERRORS_KEY
        self.errors[node] += 1
        held_back = self._error_log.take()
        if held_back is not None:
            more = f" ({held_back} more rejected inputs not logged)" if held_back else ""
            logger.warning("api: rejected input for %s: %s%s", node or "?", exc, more)

    async def _reply_error(self, msg: Msg, node: str, exc: Exception) -> None:
        self._count_error(node, exc)
        if msg.reply:
            await self.nc.publish(msg.reply, encode({"error": str(exc)}))

    async def _on_points(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        node = tokens[1] if len(tokens) > 1 else ""
        try:
            if len(tokens) not in (2, 3):
                raise InvalidInput(f"subject {msg.subject!r} must be p.<node> or p.<node>.<parent>")
            subjects.check_node_token(node)
            parent = subjects.check_node_token(tokens[2], what="parent id") if len(tokens) == 3 else ""
            batch = decode_points(msg.data, max_points=self.max_batch_points)
            for validate in self._validators:
                validate(node, parent, batch)
            self.store.submit(node, batch, parent=parent, reply=msg.reply or None)
        except InvalidInput as exc:
            await self._reply_error(msg, node, exc)
        except StoreBusy as exc:
            await self._refuse_busy(msg, exc)
        except SiotError as exc:  # store closing: tell the sender, so it can retry elsewhere
            await self._reply_error(msg, node, exc)

    async def _refuse_busy(self, msg: Msg, exc: StoreBusy) -> None:
        """Not bad input, and it comes in floods: counted apart, logged at most every 10 s."""
        if msg.reply:
            self.busy_refused += 1
            await self.nc.publish(msg.reply, encode({"error": str(exc)}))
        else:
            self.busy_dropped += 1
        now = time.monotonic()
        if now - self._busy_logged_at >= BUSY_LOG_INTERVAL_S:
            self._busy_logged_at = now
            logger.warning(
                "api: %s (so far %d writes refused with a reply, %d dropped without one)",
                exc,
                self.busy_refused,
                self.busy_dropped,
            )

    async def _on_commit(self, writes: list[Write]) -> None:
        """Ack every write of a committed group, then fan out what changed: the whole group's
        messages go to the connection in one call (`Outbox`), acks first."""
        outbox = Outbox(self.nc)
        fanout: dict[tuple[str, str], list[Point]] = {}
        for write in writes:
            if write.error is not None:
                self._count_error(write.node, write.error)
                if write.reply:
                    outbox.add(write.reply, encode({"error": str(write.error)}))
                continue
            if write.reply:
                outbox.add(write.reply, OK_REPLY)
            if write.changed:
                self.accepted_points += len(write.changed)
                fanout.setdefault((write.node, write.parent), []).extend(write.changed)
        tree = self.store.tree
        for (node, parent), points in fanout.items():
            targets = {node, ROOT_PARENT} | tree.ancestors(node)
            if parent:
                targets.add(parent)
                targets |= tree.ancestors(parent)
            payload = encode([p.to_wire() for p in points])
            outbox.fan_out([subjects.up(ancestor, node, parent or None) for ancestor in targets], payload)
        await outbox.send()

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
            await self.nc.publish(msg.reply, encode({"ok": True, **reply}))

    async def _read_fairly(self, msg: Msg, node: str, handler: Any) -> None:
        """Queue a read request under its requester (siot/fair.py) instead of serving it in the
        subscription's callback, where it would wait behind every request queued before it."""
        if not msg.reply:  # nobody waits for the answer (e.g. published over MQTT): not served
            self._count_error(node, InvalidInput(f"{msg.subject}: a read request needs a reply subject"))
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

    async def _nodes(self, parent: str, node: str, request: dict[str, Any]) -> dict[str, Any]:
        """The nodes asked for, in id order, as many as fit in one reply; `next` (an id, passed
        back as `after`) continues the listing when they did not all fit."""
        tree = self.store.tree
        want_type = request.get("type") or None
        include_deleted = bool(request.get("deleted", False))
        after = request.get("after")
        if after is not None and not isinstance(after, str):
            raise InvalidInput("nodes field 'after' must be the 'next' id of the previous page")
        if parent == ROOT_PARENT and node == subjects.ALL:
            node = self.store.root_id
        if node == subjects.ALL:
            if parent != ROOT_PARENT and not tree.has_node(parent):
                raise UnknownNode(parent)
            pairs = [(parent, child) for child in sorted(tree.children.get(parent, ()))]
        elif parent == subjects.ALL:
            if not tree.has_node(node):
                raise UnknownNode(node)
            pairs = [(p, node) for p in sorted(tree.parents.get(node, ()))]
        else:
            if tree.edge(parent, node) is None:
                raise UnknownNode(node, f"no edge from '{parent}'")
            pairs = [(parent, node)]
        page = ReplyPage(self._page_budget())
        for edge_parent, child in pairs:
            page_key = edge_parent if parent == subjects.ALL else child
            if after is not None and page_key <= after:
                continue
            state = tree.edge(edge_parent, child)
            assert state is not None
            if state.deleted and not include_deleted:
                continue
            if want_type and state.node_type != want_type:
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

    async def _history(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
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
        rows = await self.store.history_page(
            node,
            type=request.get("type"),
            key=request.get("key"),
            start=fields["start"] or 0,
            end=fields["end"] or time.time_ns() + 86_400 * 10**9,
            limit=limit,
            after=None if after is None else (after[0], after[1]),
        )
        page = ReplyPage(self._page_budget())
        for seq, point in rows:
            if not page.add(point.to_wire(), [point.time, seq], "one history point", "narrow it by type"):
                break
        return page.reply("points")

    async def _on_stats(self, msg: Msg) -> None:
        async def stats(_: dict[str, Any]) -> dict[str, Any]:
            return {
                "instance": self.store.instance_id,
                "ready": self.ready,
                "lastSeq": self.store.last_seq,
                "commits": self.store.commits,
                "committedWrites": self.store.committed_writes,
                "acceptedPoints": self.accepted_points,
                "busyRefused": self.busy_refused,
                "busyDropped": self.busy_dropped,
                "errors": dict(self.errors),
                "nodes": len(self.store.tree.parents),
                **{name: source() for name, source in self._stats.items()},
            }

        await self._respond(msg, "", stats)


class LogBudget:
    """Allows `burst` log lines per `interval_s`; `take()` returns None when over budget, else
    how many lines were held back since the last one allowed."""

    def __init__(self, burst: int, interval_s: float) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._window_start = -interval_s
        self._used = 0
        self._held_back = 0

    def take(self) -> int | None:
        now = time.monotonic()
        if now - self._window_start >= self.interval_s:
            self._window_start, self._used = now, 0
        if self._used >= self.burst:
            self._held_back += 1
            return None
        self._used += 1
        held_back, self._held_back = self._held_back, 0
        return held_back


class ReplyPage:
    """Items of one reply, up to a byte budget. When an item does not fit, the page is cut and
    its reply carries `next`: the key of the last item taken, which the requester passes back as
    `after` to continue."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.items: list[Any] = []
        self.size = 0
        self.last_key: Any = None
        self.cut = False

    def add(self, item: Any, key: Any, what: str, hint: str) -> bool:
        """Take `item` if it fits; False when the page is full. An item that fits no page at all
        is refused with an error that says what to do instead."""
        size = len(encode(item))
        if self.size + size > self.budget:
            if not self.items:
                raise InvalidInput(
                    f"{what} is {size:,} bytes, over the {self.budget:,}-byte reply limit: {hint}"
                )
            self.cut = True
            return False
        self.items.append(item)
        self.size += size
        self.last_key = key
        return True

    def reply(self, name: str) -> dict[str, Any]:
        return {name: self.items, "next": self.last_key} if self.cut else {name: self.items}


async def wait_closed(nc: NATS) -> None:
    """Drain a connection, ignoring one that is already closed."""
    if not nc.is_closed:
        try:
            await asyncio.wait_for(nc.drain(), timeout=5)
        except Exception:
            logger.debug("drain failed; closing", exc_info=True)
            await nc.close()
