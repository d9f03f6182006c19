"""`GET /v1/stream`: committed changes at and under a node as Server-Sent Events (DESIGN §9).

Each event is one change: `data: {"node", "parent", "points"}` (`parent` null for node points,
the edge's parent for edge points), as the `up.*` fan-out carries it. Its `id:` is a point-log
sequence number: after a commit's last change, the commit's last seq (changes of one commit go
out together; the ones before the last carry no id, so a browser that drops mid-commit resumes
from the commit before and gets the whole commit again: a duplicate, never a gap).

Resume: a reconnecting EventSource sends `Last-Event-ID`; the stream then replays from the
point log every entry after that seq under the node (every reading, as history has them) before
the live changes, so nothing committed in between is missed. When the log no longer has them
(retention pruned them, or the id is from another database) the stream sends `event: reset`
first: the client should reload what it shows.

Live changes come from the in-process ChangeBus (`ctx.client.watch`, no NATS): the watch is
made before the log is read, so nothing falls between the replay and the live part. Each stream
has a bounded queue; a client that does not keep up (MAX_QUEUED_CHANGES behind, or a write
blocked WRITE_TIMEOUT_S) is disconnected with a warning naming it, and resumes from the log
when it reconnects; the daemon and the other streams go on. A stream also ends when its token
expires or is revoked, or the user loses the node from its scope (checked with every batch and
every KEEPALIVE_S).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from aiohttp import web

from siot.bus import Change, Scope
from siot.http.access import HIDDEN_POINT_TYPES, Access
from siot.http.auth import AUTH, bearer_token
from siot.http.context import HTTP, HttpContext
from siot.http.errors import HttpError, bad_request, to_json
from siot.http.nodes import access_of
from siot.points import Point
from siot.store import ROOT_PARENT
from siot.store.writer import unpack_value

logger = logging.getLogger(__name__)

MAX_QUEUED_CHANGES = 10_000
WRITE_TIMEOUT_S = 30.0
KEEPALIVE_S = 15.0
RECONNECT_MS = 1000
REPLAY_CHUNK_ROWS = 2_000
# A resume further back than this is not replayed (it would hold the store's reader for long):
# the client gets `event: reset` and reloads.
MAX_REPLAY_ROWS = 1_000_000
REPLAY_SQL = (
    "SELECT seq, node, parent, type, key, time, value, tombstone, origin FROM point_log "
    "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
)
STREAMS = web.AppKey("siot_streams", set)


class Dropped(Exception):
    """The client fell behind; the message says how."""


class Stream:
    """One client's stream: the watch's queue and the writer."""

    def __init__(self, request: web.Request, access: Access, node: str) -> None:
        self.request = request
        self.http = request.app[HTTP]
        self.access = access
        self.node = node
        self.queue: deque[tuple[int, Change]] = deque()
        self.wake = asyncio.Event()
        self.overflow = False
        self.closing = False

    def on_change(self, _ancestor: str, change: Change) -> None:
        """Bus callback, in the commit listener: queue it with its commit's last seq."""
        if self.overflow:
            return
        if len(self.queue) >= MAX_QUEUED_CHANGES:
            self.overflow = True
        else:
            self.queue.append((self.http.app.store.last_seq, change))
        self.wake.set()

    def close(self) -> None:
        self.closing = True
        self.wake.set()

    def still_allowed(self) -> None:
        """Raise HttpError when the token no longer holds or the node left the user's scope."""
        token = bearer_token(self.request)
        user = self.request.app[AUTH].authenticate(token or "")
        self.access = Access(self.http.app.store, user)
        self.access.check_read(self.node)

    def under(self, node: str, parent: str) -> bool:
        """Whether a log row of node (edge points when parent) is fanned out under the stream's
        node, as siot/fanout.py would target it."""
        tree = self.http.app.store.tree
        targets = [node, parent] if parent else [node]
        return any(t == self.node or self.node in tree.ancestors(t) for t in targets)


def event(data: dict[str, Any], seq: int | None, name: str | None = None) -> str:
    lines = [f"event: {name}"] if name else []
    lines.append(f"data: {to_json(data)}")
    if seq is not None:
        lines.append(f"id: {seq}")
    return "\n".join(lines) + "\n\n"


def change_data(node: str, parent: str | None, points: list[Point]) -> dict[str, Any] | None:
    shown = [p.to_wire() for p in points if p.type not in HIDDEN_POINT_TYPES]
    if not shown:
        return None
    return {"node": node, "parent": parent, "points": shown}


def last_event_id(request: web.Request) -> int | None:
    text = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    if not text:
        return None
    if not text.isdigit():
        raise bad_request(f"Last-Event-ID must be a point-log seq (an integer), not {text!r}")
    return int(text)


async def send(resp: web.StreamResponse, text: str) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await resp.write(text.encode())
    except TimeoutError:
        raise Dropped(f"a write was blocked for {WRITE_TIMEOUT_S:g} s") from None


async def replay(stream: Stream, resp: web.StreamResponse, after: int, upto: int) -> None:
    """Log entries after..upto under the stream's node, one event per run of one node's (or
    edge's) entries, with the seq of its last entry."""
    store = stream.http.app.store
    oldest = await store.fetch("SELECT MIN(seq) FROM log_entries")
    first_kept = oldest[0][0] or upto + 1
    if after > upto or after + 1 < first_kept or upto - after > MAX_REPLAY_ROWS:
        why = "the log no longer has everything after that id" if after <= upto else "unknown event id"
        await send(resp, event({"reason": f"{why}: reload"}, upto, "reset"))
        return
    cursor = after
    while cursor < upto:
        rows = await store.fetch(REPLAY_SQL, (cursor, upto, REPLAY_CHUNK_ROWS))
        out: list[str] = []
        runs: list[tuple[str, str, int, list[Point]]] = []  # node, parent, last seq, points
        for seq, node, parent, ptype, pkey, t, blob, tombstone, origin in rows:
            if not stream.under(node, parent):
                continue
            if not runs or runs[-1][:2] != (node, parent):
                runs.append((node, parent, seq, []))
            runs[-1] = (node, parent, seq, runs[-1][3])
            runs[-1][3].append(Point(ptype, unpack_value(blob), pkey, t, tombstone, origin))
        for node, parent, seq, points in runs:
            if data := change_data(node, parent or None, points):
                out.append(event(data, seq))
        if out:
            await send(resp, "".join(out))
        if len(rows) < REPLAY_CHUNK_ROWS:
            break
        cursor = rows[-1][0]


async def get_stream(request: web.Request) -> web.StreamResponse:
    http = request.app[HTTP]
    access = access_of(request)
    node = request.query.get("node") or access.default_stream_node()
    if node == ROOT_PARENT:
        node = http.app.store.root_id
    access.check_read(node)
    after = last_event_id(request)
    stream = Stream(request, access, node)
    watch = http.app.client.watch(node, Scope.SUBTREE, stream.on_change)
    live_from = http.app.store.last_seq  # no await since the watch: nothing committed between
    streams = request.app[STREAMS]
    streams.add(stream)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    try:
        await resp.prepare(request)
        await send(resp, f"retry: {RECONNECT_MS}\n\n")
        if after is not None:
            await replay(stream, resp, after, live_from)
        else:
            live_from = -1  # nothing replayed: every live change is new to the client
        await pump(stream, resp, live_from)
    except Dropped as exc:
        logger.warning(
            "http: stream of %s under %s from %s dropped: %s (it resumes from the log on reconnect)",
            access.user.email,
            node,
            request.remote,
            exc,
        )
    except HttpError as exc:
        logger.info("http: stream of %s under %s ended: %s", access.user.email, node, exc.message)
    except ConnectionResetError:
        pass  # the client went away
    finally:
        watch.cancel()
        streams.discard(stream)
    return resp


async def pump(stream: Stream, resp: web.StreamResponse, replayed_upto: int) -> None:
    """Live changes until the client goes, falls behind, loses access, or the server stops."""
    while not stream.closing:
        try:
            async with asyncio.timeout(KEEPALIVE_S):
                await stream.wake.wait()
        except TimeoutError:
            stream.still_allowed()
            await send(resp, ": keepalive\n\n")
            continue
        stream.wake.clear()
        if stream.overflow:
            raise Dropped(f"{MAX_QUEUED_CHANGES} changes were waiting for it")
        if not stream.queue:
            continue
        stream.still_allowed()
        items = list(stream.queue)
        stream.queue.clear()
        out = []
        for index, (seq, change) in enumerate(items):
            if seq <= replayed_upto:
                continue  # the replay had it
            group_ends = index + 1 == len(items) or items[index + 1][0] != seq
            data = change_data(change.node, change.parent, change.points)
            if data:
                out.append(event(data, seq if group_ends else None))
            elif group_ends:
                out.append(f"id: {seq}\n\n")
        if out:
            await send(resp, "".join(out))


def setup(app: web.Application, _http: HttpContext) -> None:
    app[STREAMS] = set()

    async def close_streams(app: web.Application) -> None:
        for stream in list(app[STREAMS]):
            stream.close()

    app.on_shutdown.append(close_streams)
    app.router.add_get("/v1/stream", get_stream)
