"""The store: one SQLite file, one writer, group commit, the merge rule, and the point log.

Writes are submitted (never awaited one by one on the hot path) and applied by a single commit
task in arrival order: it takes everything queued, checks it against the in-memory tree, applies
it in one transaction on the writer thread, then resolves each write's future and tells the
commit listeners (the API acks and fans out from there). A future resolving means committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from siot.errors import (
    CycleRefused,
    InvalidInput,
    InvalidPoint,
    InvalidSubject,
    RootProtected,
    SiotError,
    StoreBusy,
    StoreError,
    UnknownNode,
)
from siot.points import Point
from siot.store.checkpoint import DEFAULT_CHECKPOINT_INTERVAL_S, DEFAULT_RESTART_WAL_FRAMES, Checkpointer
from siot.store.connection import WriteConnection
from siot.store.files import check_database_file
from siot.store.schema import migrate
from siot.store.tree import NODE_TYPE, ROOT_PARENT, TOMBSTONE, EdgeState, Tree
from siot.store.writer import Bookkeeping, LogIds, WriteRows, apply_writes, is_busy, unpack_value

logger = logging.getLogger(__name__)

DEFAULT_MAX_COMMIT_POINTS = 5_000
DEFAULT_RETENTION_DAYS = 365.0
DEFAULT_RETENTION_MAX_ROWS = 20_000_000
DEFAULT_RETENTION_CHECK_S = 300.0
PRUNE_CHUNK_ROWS = 50_000
# A commit group up to this many points runs on the event loop thread: its transaction takes
# less time (~0.1–0.5 ms) than the hop to the writer thread and back, which costs CPU and latency
# on every commit (the GIL hand-over twice, a thread wake-up, a loop wake-up; ~100 µs, STACK.md).
# Larger groups go to the writer thread so the loop keeps decoding the next batch meanwhile.
INLINE_COMMIT_MAX_POINTS = 64
# How long a commit waits, on the writer thread, for an outside connection that holds SQLite's
# write lock before the group fails with "database is locked".
DEFAULT_BUSY_WAIT_S = 5.0
# Points waiting for the commit task, at most. Past it, `submit` refuses with `StoreBusy`: a flood
# of fire-and-forget publishes once grew the queue to 1.65M writes (1.4 GB) while acked writes of
# other clients timed out behind it. 50,000 points are ~2 s of work at full ingest speed and a
# few tens of MB.
DEFAULT_MAX_QUEUED_POINTS = 50_000
# A point stamped further ahead than this is refused: a device whose clock is years ahead would
# otherwise own the point's current value until then (every later reading loses the merge).
DEFAULT_MAX_FUTURE_S = 86_400.0
# Node ids the API uses as words in its subjects (`nodes.<parent>.all`, the virtual `root`).
RESERVED_NODE_IDS = frozenset((ROOT_PARENT, "all"))
# Rows of the meta table.
INSTANCE_ID = "instance_id"
LAST_STAMP = "last_stamp"
STAMP_FLOOR_AHEAD_NS = 1_000_000_000
SAVE_META = (
    "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


@dataclass(slots=True)
class Write:
    """A write waiting for the commit task. `future` resolves to the points that won the merge."""

    rows: WriteRows
    reply: str | None
    future: asyncio.Future[list[Point]]
    internal: bool = False
    # Why it was not stored: the tree refused it (`InvalidInput`) or its group's commit failed
    # (`StoreError`). Commit listeners reply with it.
    error: SiotError | None = None

    @property
    def node(self) -> str:
        return self.rows.node

    @property
    def parent(self) -> str:
        return self.rows.parent

    @property
    def changed(self) -> list[Point]:
        return self.rows.changed


CommitListener = Callable[[list[Write]], Awaitable[None]]
# A node type's own check of every write to its nodes (`Store.add_node_check`), called at commit
# time, when the tree knows the node's type whoever wrote it and however (a node created and
# written in one burst, rows from a sync peer): `(node, parent, points)` with times stamped,
# `parent` "" for node points. It raises `InvalidInput` to refuse the write, or returns None to
# store the points as they are, or a blocking function returning the points to store instead,
# which the store runs on a worker thread before the transaction (a password is hashed there:
# it never reaches the disk, and the hash does not hold the event loop).
Rewrite = Callable[[], list[Point]]
NodeCheck = Callable[[str, str, list[Point]], Rewrite | None]


@dataclass(slots=True)
class StoreConfig:
    path: str
    instance_id: str | None = None
    synchronous: str = "NORMAL"
    max_commit_points: int = DEFAULT_MAX_COMMIT_POINTS
    retention_days: float = DEFAULT_RETENTION_DAYS
    retention_max_rows: int = DEFAULT_RETENTION_MAX_ROWS
    retention_check_s: float = DEFAULT_RETENTION_CHECK_S
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    restart_wal_frames: int = DEFAULT_RESTART_WAL_FRAMES
    busy_wait_s: float = DEFAULT_BUSY_WAIT_S
    max_queued_points: int = DEFAULT_MAX_QUEUED_POINTS
    max_future_s: float = DEFAULT_MAX_FUTURE_S
    description: str = field(default_factory=socket.gethostname)


class Store:
    """Owns the SQLite file. Use as `async with Store(config) as store:`; closing commits what is
    queued before it returns. `instance_id` and `root_id` are the same id (DESIGN §2)."""

    def __init__(self, config: StoreConfig) -> None:
        if config.synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {config.synchronous!r}")
        self.config = config
        self.tree = Tree()
        self.instance_id = ""
        self._writer = WriteConnection()
        self._log_ids = LogIds()  # used on the write connection only
        self._reader: aiosqlite.Connection | None = None
        # A deque and a wake-up event rather than asyncio.Queue: put/get on the hot path cost a
        # fraction, and the commit loop takes everything queued at once anyway.
        self._queue: deque[Write | None] = deque()
        self._queued_points = 0
        self._bookkeeping: list[tuple[Bookkeeping, asyncio.Future[None]]] = []
        self._queued = asyncio.Event()
        self._listeners: list[CommitListener] = []
        self._node_checks: dict[str, NodeCheck] = {}
        self._next_seq = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._checkpointer: Checkpointer | None = None
        self._closing = False
        # Reads of whole subtrees (sync digests and repairs) run one at a time (store/log.py).
        self.bulk_reads = asyncio.Semaphore(1)
        self._last_stamp = 0  # the newest time given to a time-0 point (see `_stamp_base`)
        self._stamp_unsaved = False  # a time-0 point was stamped in the group being committed
        self._stamp_floor = 0  # meta.last_stamp: no stamp given so far is above it
        # Transactions and the writes they carried: their ratio is the group size, which decides
        # what a commit costs per write (siot.stats; `siot bench` reports it).
        self.commits = 0
        self.committed_writes = 0

    @property
    def root_id(self) -> str:
        return self.instance_id

    @property
    def checkpointer(self) -> Checkpointer | None:
        return self._checkpointer

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest committed log entry (0 when the log is empty)."""
        return self._next_seq - 1

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.config.path)), exist_ok=True)
        try:
            check_database_file(self.config.path)
            await self._writer.open(self.config.path, self.config.synchronous.upper())
            applied = await self._writer.run(migrate)
            if applied:
                logger.info("store %s: applied migrations %s", self.config.path, ", ".join(applied))
            self._reader = await aiosqlite.connect(self.config.path)
            await self._reader.execute("PRAGMA query_only=1")
            await self._load()
            self._checkpointer = Checkpointer(
                self.config.path,
                lambda: self.last_seq,
                self._writer.held,
                interval_s=self.config.checkpoint_interval_s,
                restart_wal_frames=self.config.restart_wal_frames,
            )
            await self._checkpointer.__aenter__()
        except Exception as exc:
            await self._close_connections()
            if isinstance(exc, SiotError):
                raise
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                raise StoreError(
                    f"the database file {self.config.path} is damaged ({exc}). siot will not start "
                    "on it and has not changed it: restore it from a backup, or move it away to "
                    "start an empty database"
                ) from exc
            raise StoreError(f"cannot open store {self.config.path}: {exc}") from exc
        self._spawn(self._commit_loop(), "commit loop")
        self._spawn(self._retention_loop(), "retention")
        await self._ensure_root()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"store {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self) -> None:
        assert self._reader is not None
        meta = dict(
            await self.fetch("SELECT name, value FROM meta WHERE name IN (?, ?)", (INSTANCE_ID, LAST_STAMP))
        )
        stored_id = meta.get(INSTANCE_ID)
        self._stamp_floor = max(self._stamp_floor, int(meta.get(LAST_STAMP, 0)))
        self._last_stamp = max(self._last_stamp, self._stamp_floor)
        wanted = self.config.instance_id
        if stored_id and wanted and stored_id != wanted:
            raise SiotError(
                f"this database belongs to instance '{stored_id}', not '{wanted}'; "
                "drop --id or use another data directory"
            )
        self.instance_id = stored_id or wanted or str(uuid.uuid4())
        if not stored_id:
            await self._writer.run(_execute, SAVE_META, (INSTANCE_ID, self.instance_id))
        edges: dict[tuple[str, str], EdgeState] = {}
        query = (
            "SELECT parent, node, type, time, origin, value, tombstone FROM edge_points "
            "WHERE type IN (?, ?) AND key = '0'"
        )
        for parent, node, ptype, t, origin, blob, tombstone in await self.fetch(
            query, (NODE_TYPE, TOMBSTONE)
        ):
            state = edges.setdefault((parent, node), EdgeState())
            point = Point(ptype, unpack_value(blob), "0", t, tombstone, origin)
            edges[(parent, node)] = state.merged([point])
        tree = Tree()
        for (parent, node), state in edges.items():
            tree.set_edge(parent, node, state)
        self.tree = tree  # swapped whole: a reload never shows readers a half-built tree
        ((last,),) = await self.fetch("SELECT COALESCE(MAX(seq), 0) FROM log_entries")
        self._next_seq = last + 1
        logger.info(
            "store %s: instance %s, %d edges, log at seq %d",
            self.config.path,
            self.instance_id,
            len(edges),
            last,
        )

    async def _ensure_root(self) -> None:
        if self.tree.edge(ROOT_PARENT, self.instance_id):
            return
        await self.submit(
            self.instance_id,
            [Point(type=NODE_TYPE, value="device")],
            parent=ROOT_PARENT,
            internal=True,
        )
        await self.submit(self.instance_id, [Point(type="description", value=self.config.description)])
        logger.info("store: created root device node %s", self.instance_id)

    def add_commit_listener(self, listener: CommitListener) -> Callable[[], None]:
        """Call `listener` after every commit with all writes of the group (errors included).
        Returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add_node_check(self, node_type: str, check: NodeCheck) -> Callable[[], None]:
        """Check (and possibly rewrite) every write to nodes of `node_type` and to their edges
        before it is stored; see `NodeCheck`. Returns the function that removes it."""
        if node_type in self._node_checks:
            raise ValueError(f"nodes of type {node_type!r} have a check already")
        self._node_checks[node_type] = check
        return lambda: self._node_checks.pop(node_type, None)

    def submit(
        self,
        node: str,
        points: list[Point],
        *,
        parent: str = "",
        reply: str | None = None,
        via: str = "",
        provenance: list[tuple[str, int]] | None = None,
        internal: bool = False,
    ) -> asyncio.Future[list[Point]]:
        """Queue a write; the future resolves to the points that changed the current value, after
        commit, or raises `InvalidInput` if the tree refuses it or `StoreError` if the commit
        failed. `parent` set means edge points of parent -> node. Every distinct point is logged
        (history), winner or not."""
        if self._closing:
            raise StoreError("store is closing")
        if self.full and not internal:
            raise self.busy_error()
        future: asyncio.Future[list[Point]] = asyncio.get_running_loop().create_future()
        rows = WriteRows(node=node, parent=parent, points=points, via=via, provenance=provenance)
        self._queue.append(Write(rows=rows, reply=reply, future=future, internal=internal))
        self._queued_points += len(points)
        self._queued.set()
        return future

    @property
    def queued_points(self) -> int:
        """Points submitted and not yet committed (the commit queue's depth)."""
        return self._queued_points

    @property
    def full(self) -> bool:
        """Whether `submit` refuses writes now (`max_queued_points` are waiting)."""
        return self._queued_points >= self.config.max_queued_points

    def busy_error(self) -> StoreBusy:
        return StoreBusy(f"busy: {self._queued_points} points are waiting to be stored; retry in a moment")

    def stage(self, sql: str, rows: list[tuple[Any, ...]]) -> asyncio.Future[None]:
        """Run `sql` for each of `rows` in the next group commit's transaction (the store's own
        bookkeeping, e.g. sync cursors): no second transaction on the write connection, and no
        extra commit when writes are flowing. Resolves after commit; raises `StoreError` if the
        commit failed."""
        if self._closing:
            raise StoreError("store is closing")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._bookkeeping.append((Bookkeeping(sql, rows), future))
        self._queued.set()
        return future

    def _stamp_base(self, count: int) -> int:
        """The first of `count` consecutive stamps for time-0 points: the wall clock, but never
        at or below a stamp already given, so stamped points keep increasing even when the clock
        steps back (NTP, an RTC-less gateway at boot) and a later write still wins the merge."""
        base = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = base + count - 1
        return base

    def _stamp_bookkeeping(self) -> tuple[int, list[Bookkeeping]]:
        """A floor above every stamp given, saved with the commit that first passes the old one
        (meta.last_stamp), so stamps keep increasing across a restart too: a gateway whose clock
        is behind after a reboot must not stamp its next writes below the ones it acknowledged
        before. The floor is set STAMP_FLOOR_AHEAD_NS ahead so it is written about once a second
        under steady writes, not in every commit (a row write costs the WAL a page per commit);
        after a restart stamps start at most that far ahead of the last one."""
        if not self._stamp_unsaved or self._last_stamp < self._stamp_floor:
            return self._stamp_floor, []
        floor = self._last_stamp + STAMP_FLOOR_AHEAD_NS
        return floor, [Bookkeeping(SAVE_META, [(LAST_STAMP, str(floor))])]

    def _check(self, write: Write, now_ns: int) -> Rewrite | None:
        """Check one write against the tree as it stands after the writes before it, stamp its
        times, run its node type's check (`add_node_check`), and only then apply its edge changes
        to the tree: a write refused here leaves the tree as the file has it. Returns the node
        check's rewrite, if any. Raises `InvalidInput`."""
        rows = write.rows
        points = rows.points
        if any(p.time == 0 for p in points):
            points = rows.points = [p.stamped(now_ns) for p in points]
            self._stamp_unsaved = True
        latest = max(p.time for p in points) if points else 0
        if latest > now_ns + self.config.max_future_s * 1e9:
            _refuse_future(points, now_ns, self.config.max_future_s)
        if not rows.parent:
            if not self.tree.has_node(rows.node):
                raise UnknownNode(rows.node, "create it first with an edge write that has a nodeType")
            return self._node_check(rows, self.tree.node_type(rows.node))
        parent, node = rows.parent, rows.node
        for index, p in enumerate(points):
            if p.type == NODE_TYPE and not (isinstance(p.value, str) and p.value):
                raise InvalidPoint("nodeType must be a non-empty string", index=index, field="value")
        current = self.tree.edge(parent, node)
        after = (current or EdgeState()).merged(points)
        if current is None and not after.exists:
            raise UnknownNode(node, f"an edge from '{parent}' needs a nodeType point to be created")
        if current is None and not self.tree.has_node(node) and node in RESERVED_NODE_IDS:
            raise InvalidSubject(f"'{node}' is a word of the API and cannot be a node id")
        if parent == ROOT_PARENT and not write.internal and current is None:
            raise InvalidSubject("only the instance root may hang under the virtual parent 'root'")
        if parent != ROOT_PARENT and not self.tree.has_node(parent):
            raise UnknownNode(parent, "the parent does not exist")
        if node == self.instance_id and parent == ROOT_PARENT:
            if after.deleted:
                raise RootProtected(f"the root node '{node}' of this instance cannot be deleted")
            if current is not None and after.node_type != current.node_type:
                raise RootProtected(f"the root node '{node}' of this instance stays a '{current.node_type}'")
        becomes_live = not after.deleted and (current is None or current.deleted)
        if becomes_live and self.tree.would_cycle(parent, node):
            raise CycleRefused(f"edge '{parent}' -> '{node}' would make a cycle")
        rewrite = self._node_check(rows, after.node_type)
        if current is None or after != current:
            self.tree.set_edge(parent, node, after)
        return rewrite

    def _node_check(self, rows: WriteRows, node_type: str | None) -> Rewrite | None:
        """The check of the written node's type, if it has one: the type the tree gives the node
        after the writes before this one (or, for an edge write, after this one)."""
        check = self._node_checks.get(node_type) if self._node_checks and node_type else None
        return None if check is None else check(rows.node, rows.parent, rows.points)

    async def _commit_loop(self) -> None:
        queue = self._queue
        max_points = self.config.max_commit_points
        while True:
            if not queue and not self._bookkeeping:
                self._queued.clear()
                await self._queued.wait()
            writes: list[Write] = []
            count = 0
            while queue and count < max_points:
                write = queue.popleft()
                if write is None:
                    await self._commit(writes)
                    return
                writes.append(write)
                count += len(write.rows.points)
            self._queued_points -= count
            await self._commit(writes)

    async def _commit(self, writes: list[Write]) -> None:
        """Commit one group: check each write against the tree, apply the accepted ones and the
        staged bookkeeping in one transaction, then resolve every future and tell the listeners.
        A failed transaction fails every accepted write of the group with a `StoreError` (the
        listeners reply with it) and reloads the tree from disk, so memory matches the file."""
        staged, self._bookkeeping = self._bookkeeping, []
        if not writes and not staged:
            return
        now_ns = self._stamp_base(len(writes))
        accepted: list[Write] = []
        rewrites: list[tuple[Write, Rewrite]] = []
        for offset, write in enumerate(writes):
            try:
                # One stamp per write, in arrival order: two time-0 writes of the same point in
                # one group would otherwise tie on (time, origin) and only the value would decide.
                rewrite = self._check(write, now_ns + offset)
            except InvalidInput as exc:
                write.error = exc
            else:
                accepted.append(write)
                if rewrite is not None:
                    rewrites.append((write, rewrite))
        if rewrites:
            await _run_rewrites(rewrites)
            accepted = [w for w in accepted if w.error is None]
        failure: StoreError | None = None
        if accepted or staged:
            try:
                floor, stamp_rows = self._stamp_bookkeeping()
                bookkeeping = [b for b, _ in staged] + stamp_rows
                self._next_seq = await self._apply([w.rows for w in accepted], bookkeeping)
                self._stamp_unsaved = False
                self._stamp_floor = floor
                if accepted:  # a commit of bookkeeping alone carries no writes: not counted
                    self.commits += 1
                    self.committed_writes += len(accepted)
            except Exception as exc:
                failure = _commit_error(exc, self.config.busy_wait_s)
                logger.error("store: commit of %d writes failed: %s", len(accepted), failure)
                for write in accepted:
                    write.error = failure
                await self._load()  # the tree took the group's edge changes; the file did not
        for _, future in staged:
            if failure is None:
                future.set_result(None)
            else:
                future.set_exception(failure)
        for write in writes:
            if write.error is not None:
                write.future.set_exception(write.error)
                write.future.exception()  # a failed write nobody awaits must not warn at exit
            else:
                write.future.set_result(write.rows.changed)
        for listener in list(self._listeners):
            try:
                await listener(writes)
            except Exception:
                logger.exception("store: commit listener %r failed", listener)

    async def _apply(self, rows: list[WriteRows], bookkeeping: list[Bookkeeping]) -> int:
        """Run one group's transaction on the write connection. A small group runs inline (see
        INLINE_COMMIT_MAX_POINTS) without waiting for SQLite's lock, so an outside connection
        holding it can never block the event loop; then, and for large groups, it runs on the
        writer thread, which waits up to `busy_wait_s` for the lock."""
        args = (rows, self.instance_id, self._log_ids, self._next_seq, bookkeeping)
        if sum(len(r.points) for r in rows) <= INLINE_COMMIT_MAX_POINTS:
            try:
                return await self._writer.run(apply_writes, *args, 0.0, inline=True)
            except Exception as exc:
                if not is_busy(exc):
                    raise
        return await self._writer.run(apply_writes, *args, self.config.busy_wait_s)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_check_s)
            try:
                await self.prune_log()
            except Exception:
                logger.exception("store: log retention failed")

    async def prune_log(self, now_ns: int | None = None) -> int:
        """Drop the log's oldest entries, in arrival order, up to the first one that is both
        newer than the retention age and within the row limit; return how many were removed.

        Arrival order rather than point time keeps this an index-free range delete on the
        primary key (a time index would cost every insert ~40%, docs/benchmarks.md); a late,
        old-stamped entry is kept until entries before it expire or the row limit reaches it.
        """
        cutoff_ns = (now_ns or time.time_ns()) - int(self.config.retention_days * 86400e9)
        min_seq = self._next_seq - self.config.retention_max_rows

        def prune(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT seq FROM log_entries WHERE time >= ? AND seq >= ? ORDER BY seq LIMIT 1",
                (cutoff_ns, min_seq),
            ).fetchone()
            keep_from = row[0] if row else self._next_seq
            removed = 0
            while True:
                cur = db.execute(
                    "DELETE FROM log_entries WHERE seq IN "
                    "(SELECT seq FROM log_entries WHERE seq < ? ORDER BY seq LIMIT ?)",
                    (keep_from, PRUNE_CHUNK_ROWS),
                )
                removed += cur.rowcount
                if cur.rowcount < PRUNE_CHUNK_ROWS:
                    return removed

        removed = await self._writer.run(prune)
        if removed:
            logger.info("store: retention removed %d log entries", removed)
        return removed

    # ---- reads (reader connection; never blocks the writer) ----

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the reader connection, statement and fetch in one call on its
        thread. Reads share the connection, and a statement left open between two calls (execute,
        then fetch) holds the connection's read transaction: a read interleaved in between saw
        the snapshot of the first read's start, older than a commit it had been told of (92 of
        100 such reads in tests/test_store_reliability.py before this)."""
        assert self._reader is not None
        return list(await self._reader.execute_fetchall(sql, params))

    async def node_points(self, node: str) -> list[Point]:
        rows = await self.fetch(
            "SELECT type, key, time, value, tombstone, origin FROM points WHERE node = ? ORDER BY type, key",
            (node,),
        )
        return [_row_point(r) for r in rows]

    async def edge_points(self, parent: str, node: str) -> list[Point]:
        rows = await self.fetch(
            "SELECT type, key, time, value, tombstone, origin FROM edge_points "
            "WHERE parent = ? AND node = ? ORDER BY type, key",
            (parent, node),
        )
        return [_row_point(r) for r in rows]

    async def history(
        self, node: str, *, type: str | None, key: str | None, start: int, end: int, limit: int
    ) -> list[Point]:
        """Logged values of `node`'s points with start <= time < end, oldest first."""
        rows = await self.history_page(node, type=type, key=key, start=start, end=end, limit=limit)
        return [point for _, point in rows]

    async def history_page(
        self,
        node: str,
        *,
        type: str | None,
        key: str | None,
        start: int,
        end: int,
        limit: int,
        after: tuple[int, int] | None = None,
    ) -> list[tuple[int, Point]]:
        """Like `history`, with each point's log seq, in (time, seq) order; `after` (time, seq)
        continues a page: only entries ordered after it."""
        sql = [
            "SELECT seq, type, key, time, value, tombstone, origin FROM point_log",
            "WHERE node = ? AND parent = '' AND time >= ? AND time < ?",
        ]
        params: list[Any] = [node, start, end]
        if after is not None:
            sql.append("AND (time, seq) > (?, ?)")
            params.extend(after)
        if type:
            sql.append("AND type = ?")
            params.append(type)
        if key:
            sql.append("AND key = ?")
            params.append(key)
        sql.append("ORDER BY time, seq LIMIT ?")
        params.append(limit)
        return [(r[0], _row_point(r[1:])) for r in await self.fetch(" ".join(sql), tuple(params))]

    async def close(self) -> None:
        """Stop taking writes, commit what is queued, stop the tasks and close SQLite."""
        if self._closing:
            return
        self._closing = True
        self._queue.append(None)  # the commit loop finishes what is ahead of this, then exits
        self._queued.set()
        for task in list(self._tasks):
            if task.get_name() != "store commit loop":
                task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.__aexit__(None, None, None)
            self._checkpointer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self._writer.close()


def _refuse_future(points: list[Point], now_ns: int, max_future_s: float) -> None:
    limit_ns = now_ns + max_future_s * 1e9
    for index, p in enumerate(points):
        if p.time > limit_ns:
            ahead_s = (p.time - now_ns) / 1e9
            raise InvalidPoint(
                f"'{p.type}' is stamped {ahead_s:,.0f} s ahead of this instance's clock (the limit "
                f"is {max_future_s:g} s): check the sending device's clock",
                index=index,
                field="time",
            )


async def _run_rewrites(rewrites: list[tuple[Write, Rewrite]]) -> None:
    """Run the node checks' rewrites on one worker thread (one hop for the group) and put their
    points in place of the written ones; a rewrite that raises refuses its write alone. The
    commit waits meanwhile, as it waits for a transaction, and the event loop keeps running."""

    def run_all() -> list[list[Point] | Exception]:
        results: list[list[Point] | Exception] = []
        for _, rewrite in rewrites:
            try:
                results.append(rewrite())
            except Exception as exc:
                results.append(exc)
        return results

    for (write, _), result in zip(rewrites, await asyncio.to_thread(run_all), strict=True):
        if isinstance(result, InvalidInput):
            write.error = result
        elif isinstance(result, Exception):
            logger.error("store: rewriting a write to %s failed: %r", write.node, result)
            write.error = StoreError(f"internal error while checking the write: {result}")
        else:
            write.rows.points = result


def _execute(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> None:
    db.execute(sql, params)


def _commit_error(exc: Exception, busy_wait_s: float) -> StoreError:
    """What a sender is told when its group's transaction failed: the cause in plain words."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return StoreError("commit failed: the disk is full; nothing of this write was stored")
    if code == sqlite3.SQLITE_READONLY:
        return StoreError("commit failed: the database file is read-only; nothing of this write was stored")
    if is_busy(exc):
        return StoreError(
            f"commit failed: another process held the database lock for over {busy_wait_s:g} s; "
            "nothing of this write was stored"
        )
    return StoreError(f"commit failed: {exc}; nothing of this write was stored")


def _row_point(row: tuple[Any, ...]) -> Point:
    ptype, key, t, blob, tombstone, origin = row
    return Point(type=ptype, key=key, time=t, value=unpack_value(blob), tombstone=tombstone, origin=origin)
