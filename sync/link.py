"""The edge side of sync: one link from this instance to an upstream instance.

The link owns a client connection to the upstream's NATS server that reconnects forever with
capped, jittered backoff. While connected it runs rounds: say hello (attach), push our log up in
pipelined windows (our cursor advances only on the upstream's ack, after its commit), pull the
upstream's changes to our subtree down (each pull acknowledges the previous window), and after
catching up compare digests and repair from full state on mismatch (`siot.sync.verify`). Between
rounds it sleeps until a local commit, an upstream notify, or the poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from siot import subjects
from siot.client import Client
from siot.codec import decode_reply, encode
from siot.credfile import Credential, client_tls
from siot.errors import RequestFailed, SiotError
from siot.nats_client import TolerantClient
from siot.store import ROOT_PARENT, Store, Write
from siot.store.log import log_backlog, log_window
from siot.sync import protocol
from siot.sync.apply import apply_rows
from siot.sync.cursors import IN, OUT, CursorBook
from siot.sync.status import LinkState, PeerStatus, Role
from siot.sync.verify import verify

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0

DEFAULT_IN_FLIGHT = 4
DEFAULT_POLL_S = 5.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_DIGEST_INTERVAL_S = 600.0
# A digest check that could not settle (changes kept arriving during it) runs again this soon.
UNSETTLED_RETRY_S = 2.0
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 5.0
BACKOFF_JITTER = 0.2
DETACHED_RETRY_S = 5.0


class Backoff:
    """Capped exponential backoff with jitter (nats.py's own pattern), used both for our retry
    loop and, through `nc.options`, for nats-py's reconnect wait (which is otherwise fixed)."""

    def __init__(self, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.current_s = base_s

    def next_s(self) -> float:
        wait = self.current_s * (1 + random.random() * BACKOFF_JITTER)
        self.current_s = min(self.current_s * 2, self.cap_s)
        return wait

    def reset(self) -> None:
        self.current_s = self.base_s


@dataclass(slots=True, frozen=True)
class LinkConfig:
    """Where and how to sync; built from a `sync` node's points."""

    node: str  # the sync node's id
    uri: str
    token: str = ""
    credential: Credential | None = None  # an edge credential (user, secret; its node = our id)
    tls_ca: str = ""  # CA (or certificate) to trust for a tls:// upstream
    parent: str = ""  # the upstream node to attach under; "" = the upstream's root
    window_rows: int = protocol.DEFAULT_WINDOW_ROWS
    window_bytes: int = protocol.DEFAULT_WINDOW_BYTES
    in_flight: int = DEFAULT_IN_FLIGHT
    poll_s: float = DEFAULT_POLL_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    digest_interval_s: float = DEFAULT_DIGEST_INTERVAL_S
    session: str = ""  # this data directory's sync session token; "" = a random one per link


class LinkDown(SiotError):
    """The connection to the upstream dropped while a request was in flight."""


class UpstreamLink:
    """One edge -> upstream link. `await start()` returns at once (connecting happens in the
    background, for ever); `await stop()` closes the connection and leaves cursors to the book."""

    def __init__(self, store: Store, book: CursorBook, config: LinkConfig) -> None:
        self.store = store
        self.book = book
        self.config = config
        self.status = PeerStatus(peer="", role=Role.UPSTREAM, uri=config.uri, node=config.node)
        self.upstream_id = ""
        self.out_cursor = 0
        self._down_ack: int | None = None
        self._nc: NATS | None = None
        self._client: Client | None = None
        self._backoff = Backoff()
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._counter = itertools.count()
        self._inbox = ""
        self._task: asyncio.Task[None] | None = None
        self._need_hello = True
        self._next_digest = 0.0
        self._remove_listener: Any = None
        # Sent with every request: the upstream serves one session per edge id (docs/sync.md).
        self.session = config.session or secrets.token_hex(8)

    @property
    def edge_id(self) -> str:
        return self.store.instance_id

    @property
    def window(self) -> tuple[int, int]:
        """Window limits (rows, bytes) for everything this link sends."""
        return self.config.window_rows, self.config.window_bytes

    async def start(self) -> None:
        self._remove_listener = self.store.add_commit_listener(self._on_local_commit)
        self._task = asyncio.create_task(self._run(), name=f"sync link {self.config.uri}")

    async def stop(self) -> None:
        if self._remove_listener:
            self._remove_listener()
        if self._task:
            self._task.cancel()
            # Bounded: a link stuck in a library call must not hold up the node manager (which
            # serialises every sync-node change behind this stop).
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if not done:
                logger.error("sync: link to %s did not stop in %.0f s", self.config.uri, STOP_TIMEOUT_S)
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                if self._nc.is_connected and self.upstream_id:  # free our id there at once
                    await self._nc.publish(
                        protocol.bye(self.edge_id), encode({protocol.SESSION: self.session})
                    )
                await asyncio.wait_for(self._nc.close(), timeout=5)
        logger.info("sync: link to %s stopped", self.config.uri)

    async def backlog(self) -> int:
        if not self.upstream_id:
            return await log_backlog(self.store, 0, skip_parent=ROOT_PARENT)
        return await log_backlog(
            self.store, self.out_cursor, exclude_via=self.upstream_id, skip_parent=ROOT_PARENT
        )

    # ---- connection ----

    async def _connect(self) -> NATS:
        async def on_error(exc: Exception) -> None:
            self.status.error(f"{type(exc).__name__}: {exc}")
            wait = self._backoff.next_s()
            if self._nc is not None:
                self._nc.options["reconnect_time_wait"] = wait
            logger.warning("sync: upstream %s: %s (next try in %.1f s)", self.config.uri, exc, wait)

        async def on_disconnected() -> None:
            self._connected.clear()
            if self.status.state == LinkState.CONNECTED:
                self.status.state = LinkState.DISCONNECTED
            self._fail_replies(LinkDown(f"disconnected from {self.config.uri}"))
            logger.warning("sync: disconnected from upstream %s", self.config.uri)

        async def on_reconnected() -> None:
            self._backoff.reset()
            if self._nc is not None:
                self._nc.options["reconnect_time_wait"] = self._backoff.base_s
            self._need_hello = True
            self._connected.set()
            self._wake.set()
            logger.info("sync: reconnected to upstream %s", self.config.uri)

        options: dict[str, Any] = {}
        credential = self.config.credential
        if credential is not None:
            # Replies on the credential's own inbox prefix: the only one the upstream lets it read.
            options.update(
                user=credential.user,
                password=credential.secret,
                inbox_prefix=subjects.inbox_prefix(credential.user),
            )
        if self.config.tls_ca or self.config.uri.startswith("tls://"):
            options["tls"] = client_tls(self.config.tls_ca or None)
        self._nc = TolerantClient()
        await self._nc.connect(
            self.config.uri,
            **options,
            name=f"siot-sync-{self.edge_id}",
            token=self.config.token or None,
            max_reconnect_attempts=-1,  # for ever: nats-py's default gives up after 60 tries
            reconnect_time_wait=self._backoff.base_s,
            connect_timeout=5,
            allow_reconnect=True,
            pending_size=8 * 1024 * 1024,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
        self._backoff.reset()
        self._nc.options["reconnect_time_wait"] = self._backoff.base_s
        self._connected.set()
        return self._nc

    def _fail_replies(self, exc: Exception) -> None:
        for future in self._replies.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()
        self._replies.clear()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._replies.pop(msg.subject.rsplit(".", 1)[1], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(RequestFailed(f"no siot instance answers sync at {self.config.uri}"))
        else:
            try:
                future.set_result(decode_reply(msg.data))
            except SiotError as exc:
                future.set_exception(exc)

    async def _send(self, subject: str, payload: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Publish a request now (so requests leave in call order) and return its reply future."""
        assert self._nc is not None
        token = str(next(self._counter))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[token] = future
        payload = {**payload, protocol.SESSION: self.session}
        await self._nc.publish(subject, encode(payload), reply=f"{self._inbox}.{token}")
        return future

    async def _result(self, future: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result of a future
        # that completes in the same loop iteration as a cancel and drops the cancellation, so
        # stop() sometimes waited its full 10 s for a link that never saw it.
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                reply = await future
        except TimeoutError as exc:
            raise RequestFailed(
                f"no reply from {self.config.uri} within {self.config.request_timeout_s} s"
            ) from exc
        if "error" in reply:
            raise RequestFailed(str(reply["error"]))
        return reply

    async def request(self, subject: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._result(await self._send(subject, payload))

    async def _on_local_commit(self, writes: list[Write]) -> None:
        upstream = self.upstream_id
        for write in writes:
            if write.changed and write.rows.via != upstream:
                self._wake.set()
                return

    # ---- the loop ----

    async def _run(self) -> None:
        credential = self.config.credential
        if credential is not None and credential.node and credential.node != self.edge_id:
            # The upstream would refuse every sync subject of ours as a permissions violation.
            message = (
                f"the upstream credential {credential.user} is for edge '{credential.node}', but this "
                f"instance is '{self.edge_id}': start it with --id {credential.node}"
            )
            self.status.error(message)
            logger.error("sync: %s", message)
            return
        logger.info("sync: connecting to upstream %s", self.config.uri)
        while True:
            try:
                nc = await self._connect()
                break
            except Exception as exc:  # e.g. a malformed URI: say so in the status, keep trying
                self.status.error(f"cannot connect to {self.config.uri}: {exc}")
                logger.error("sync: cannot connect to upstream %s: %s", self.config.uri, exc)
                await asyncio.sleep(self._backoff.next_s())
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

        async def on_notify(_: Msg) -> None:
            self._wake.set()

        await nc.subscribe(protocol.notify(self.edge_id), cb=on_notify)
        logger.info("sync: connected to upstream %s", self.config.uri)
        while True:
            try:
                await self._round()
            except (SiotError, NatsError, OSError) as exc:
                self._need_hello = True
                message = str(exc) or type(exc).__name__
                if message.startswith("detached"):
                    self._set_detached(message)
                    await asyncio.sleep(DETACHED_RETRY_S)
                    continue
                if message.startswith(protocol.CONFLICT):
                    self._set_conflict(message)
                    await asyncio.sleep(DETACHED_RETRY_S)
                    continue
                self.status.error(message)
                if self.status.state == LinkState.CONNECTED:
                    self.status.state = LinkState.DISCONNECTED
                logger.warning("sync: round with %s failed: %s", self.config.uri, message)
                await self._connected.wait()
                await asyncio.sleep(self._backoff.next_s())
            except Exception as exc:  # a bug must not end the link for good
                self._need_hello = True
                self.status.error(f"internal error: {exc}")
                logger.exception("sync: round with %s failed unexpectedly", self.config.uri)
                await asyncio.sleep(self._backoff.next_s())

    def _set_detached(self, message: str) -> None:
        if self.status.state != LinkState.DETACHED:
            logger.warning("sync: %s; syncing stops until the upstream re-adds this edge", message)
        self.status.state = LinkState.DETACHED
        self.status.error(message)

    def _set_conflict(self, message: str) -> None:
        if self.status.state != LinkState.CONFLICT:
            logger.warning("sync: refused by upstream %s: %s", self.config.uri, message)
        self.status.state = LinkState.CONFLICT
        self.status.error(message)

    async def _round(self) -> None:
        if self._need_hello:
            await self._hello()
            if self.status.state == LinkState.DETACHED:
                await asyncio.sleep(DETACHED_RETRY_S)
                return
        self._wake.clear()
        shipped = await self._ship_up()
        pulled = await self._pull_down()
        self.status.synced()
        self._backoff.reset()
        if shipped or pulled:
            return
        if time.monotonic() >= self._next_digest:
            wait_s = self.config.digest_interval_s
            if not await verify(self):
                wait_s = min(UNSETTLED_RETRY_S, wait_s)
            self._next_digest = time.monotonic() + wait_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.poll_s):
                await self._wake.wait()

    async def _hello(self) -> None:
        reply = await self.request(
            protocol.hello(self.edge_id),
            {
                "instance": self.edge_id,
                "parent": self.config.parent or None,
                "version": protocol.PROTOCOL_VERSION,
            },
        )
        upstream = reply.get("instance")
        if not isinstance(upstream, str) or not upstream:
            raise RequestFailed(f"{self.config.uri} answered hello without its instance id")
        self.upstream_id = self.status.peer = upstream
        if not reply.get("attached"):
            self._set_detached(f"detached: {upstream} has deleted this edge from its tree")
            return
        acked = self.book.get(upstream, OUT) or 0
        theirs = reply.get("inCursor") or 0
        if theirs < acked:
            logger.warning(
                "sync: upstream %s has applied our log only up to %d (we had %d acknowledged); resending",
                upstream,
                theirs,
                acked,
            )
            acked = theirs
        self.out_cursor = self.status.out_cursor = acked
        self.status.in_cursor = self.book.get(upstream, IN) or 0
        self._down_ack = None
        self._need_hello = False
        self._next_digest = 0.0
        self.status.digest_ok = None  # unknown until verified on this connection
        if self.status.state != LinkState.CONNECTED:
            logger.info(
                "sync: attached to upstream %s (%s), resuming at our seq %d", upstream, self.config.uri, acked
            )
        self.status.state = LinkState.CONNECTED

    # ---- up ----

    async def _ship_up(self) -> int:
        """Send our log after the cursor in windows, up to `in_flight` at once; return rows sent."""
        subject = protocol.up(self.edge_id)
        position = self.out_cursor
        in_flight: deque[tuple[int, int, asyncio.Future[dict[str, Any]]]] = deque()
        shipped = 0
        try:
            while True:
                while len(in_flight) < self.config.in_flight:
                    rows, scanned = await log_window(
                        self.store, position, self.config.window_rows, exclude_via=self.upstream_id
                    )
                    if scanned == position:
                        break
                    ours = [r for r in rows if r[2] != ROOT_PARENT]  # our own root's edge stays here
                    window = protocol.take_window(ours, self.config.window_rows, self.config.window_bytes)
                    to = window[-1][0] if len(window) < len(ours) else scanned
                    payload = {"from": position, "to": to, "rows": protocol.encode_rows(window)}
                    in_flight.append((to, len(window), await self._send(subject, payload)))
                    position = to
                if not in_flight:
                    return shipped
                to, count, future = in_flight[0]
                reply = await self._result(future)
                in_flight.popleft()
                self._acked(to, count, reply)
                shipped += count
        finally:
            for _, _, future in in_flight:
                future.cancel()

    def _acked(self, to: int, count: int, reply: dict[str, Any]) -> None:
        self.out_cursor = self.status.out_cursor = to
        self.book.set(self.upstream_id, OUT, to)
        self.status.shipped += count
        self.status.synced()
        if reply.get("errors"):
            message = "upstream refused rows: " + "; ".join(map(str, reply["errors"]))
            self.status.error(message)
            logger.warning("sync: %s", message)

    # ---- down ----

    async def _pull_down(self) -> int:
        """Pull the upstream's changes to our subtree until it has nothing more; return rows."""
        subject = protocol.pull(self.edge_id)
        total = 0
        ack = self._down_ack
        while True:
            reply = await self.request(subject, {"ack": ack, "limit": self.config.window_rows})
            rows = protocol.decode_rows(reply.get("rows", []))
            to = reply.get("to")
            if not isinstance(to, int):
                raise RequestFailed("pull reply without 'to'")
            if rows:
                await self.apply(rows)
                total += len(rows)
            self.status.in_cursor = to
            self.book.set(self.upstream_id, IN, to)
            if not rows and to == ack:
                break
            ack = to
        self._down_ack = ack
        return total

    async def apply(self, rows: list[protocol.SyncRow]) -> None:
        applied = await apply_rows(self.store, rows, via=self.upstream_id, fallback_instance=self.upstream_id)
        self.status.received += len(rows)
        if applied.errors:
            message = "rows from upstream refused here: " + "; ".join(applied.errors)
            self.status.error(message)
            logger.warning("sync: %s", message)

    async def catch_up(self) -> int:
        """Ship up and pull down once more; return rows moved."""
        return await self._ship_up() + await self._pull_down()
