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
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from siot.errors import (
    CycleRefused,
    InvalidInput,
    InvalidSubject,
    RootProtected,
    SiotError,
    StoreError,
    UnknownNode,
)
from siot.points import Point
from siot.store.checkpoint import DEFAULT_CHECKPOINT_INTERVAL_S, DEFAULT_RESTART_WAL_FRAMES, Checkpointer
from siot.store.schema import migrate
from siot.store.tree import NODE_TYPE, ROOT_PARENT, TOMBSTONE, EdgeState, Tree
from siot.store.writer import WriteRows, apply_writes, connect, unpack_value

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


@dataclass(slots=True)
class Write:
    """A write waiting for the commit task. `future` resolves to the points that won the merge."""

    rows: WriteRows
    reply: str | None
    future: asyncio.Future[list[Point]]
    internal: bool = False
    error: InvalidInput | None = None

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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siot-store-writer")
        self._db: Any = None
        self._reader: aiosqlite.Connection | None = None
        # A deque and a wake-up event rather than asyncio.Queue: put/get on the hot path cost a
        # fraction, and the commit loop takes everything queued at once anyway.
        self._queue: deque[Write | None] = deque()
        self._queued = asyncio.Event()
        self._listeners: list[CommitListener] = []
        self._next_seq = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._checkpointer: Checkpointer | None = None
        self._closing = False
        self._write_lock = asyncio.Lock()
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

    async def _in_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.config.path)), exist_ok=True)
        try:
            self._db = await self._in_writer(connect, self.config.path, self.config.synchronous.upper())
            applied = await self._in_writer(migrate, self._db)
            if applied:
                logger.info("store %s: applied migrations %s", self.config.path, ", ".join(applied))
            self._reader = await aiosqlite.connect(self.config.path)
            await self._reader.execute("PRAGMA query_only=1")
            await self._load()
            self._checkpointer = Checkpointer(
                self.config.path,
                lambda: self.last_seq,
                self._write_lock,
                interval_s=self.config.checkpoint_interval_s,
                restart_wal_frames=self.config.restart_wal_frames,
            )
            await self._checkpointer.__aenter__()
        except Exception as exc:
            await self._close_connections()
            if isinstance(exc, SiotError):
                raise
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
        async with self._reader.execute("SELECT value FROM meta WHERE name='instance_id'") as cur:
            row = await cur.fetchone()
        stored_id = row[0] if row else None
        wanted = self.config.instance_id
        if stored_id and wanted and stored_id != wanted:
            raise SiotError(
                f"this database belongs to instance '{stored_id}', not '{wanted}'; "
                "drop --id or use another data directory"
            )
        self.instance_id = stored_id or wanted or str(uuid.uuid4())
        if not stored_id:
            await self._in_writer(
                self._db.execute, "INSERT INTO meta VALUES ('instance_id', ?)", (self.instance_id,)
            )
        edges: dict[tuple[str, str], EdgeState] = {}
        query = (
            "SELECT parent, node, type, time, origin, value FROM edge_points "
            "WHERE type IN (?, ?) AND key = '0'"
        )
        async with self._reader.execute(query, (NODE_TYPE, TOMBSTONE)) as cur:
            async for parent, node, ptype, t, origin, blob in cur:
                state = edges.setdefault((parent, node), EdgeState())
                edges[(parent, node)] = state.merged(
                    [Point(type=ptype, key="0", time=t, origin=origin, value=unpack_value(blob))]
                )
        for (parent, node), state in edges.items():
            self.tree.set_edge(parent, node, state)
        async with self._reader.execute("SELECT COALESCE(MAX(seq), 0) FROM point_log") as cur:
            (last,) = await cur.fetchone()  # type: ignore[misc]
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
        history: bool = False,
    ) -> asyncio.Future[list[Point]]:
        """Queue a write; the future resolves to the points that changed, after commit, or raises
        `InvalidInput` if the tree refuses it. `parent` set means edge points of parent -> node.
        `history` (sync): also log, once, points that lose the merge (a peer's older values)."""
        if self._closing:
            raise StoreError("store is closing")
        future: asyncio.Future[list[Point]] = asyncio.get_running_loop().create_future()
        rows = WriteRows(
            node=node, parent=parent, points=points, via=via, provenance=provenance, history=history
        )
        self._queue.append(Write(rows=rows, reply=reply, future=future, internal=internal))
        self._queued.set()
        return future

    def _check(self, write: Write, now_ns: int) -> None:
        """Check one write against the tree as it stands after the writes before it, stamp its
        times, and apply its edge changes to the tree. Raises `InvalidInput`."""
        rows = write.rows
        if any(p.time == 0 for p in rows.points):
            rows.points = [p.stamped(now_ns) for p in rows.points]
        if not rows.parent:
            if not self.tree.has_node(rows.node):
                raise UnknownNode(rows.node, "create it first with an edge write that has a nodeType")
            return
        parent, node = rows.parent, rows.node
        current = self.tree.edge(parent, node)
        after = (current or EdgeState()).merged(rows.points)
        if current is None and not after.exists:
            raise UnknownNode(node, f"an edge from '{parent}' needs a nodeType point to be created")
        if parent == ROOT_PARENT and not write.internal and current is None:
            raise InvalidSubject("only the instance root may hang under the virtual parent 'root'")
        if parent != ROOT_PARENT and not self.tree.has_node(parent):
            raise UnknownNode(parent, "the parent does not exist")
        if node == self.instance_id and parent == ROOT_PARENT and after.deleted:
            raise RootProtected(f"the root node '{node}' of this instance cannot be deleted")
        becomes_live = not after.deleted and (current is None or current.deleted)
        if becomes_live and self.tree.would_cycle(parent, node):
            raise CycleRefused(f"edge '{parent}' -> '{node}' would make a cycle")
        if current is None or after != current:
            self.tree.set_edge(parent, node, after)

    async def _commit_loop(self) -> None:
        queue = self._queue
        max_points = self.config.max_commit_points
        while True:
            if not queue:
                self._queued.clear()
                await self._queued.wait()
            writes: list[Write] = []
            count = 0
            while queue and count < max_points:
                write = queue.popleft()
                if write is None:
                    if writes:
                        await self._commit(writes)
                    return
                writes.append(write)
                count += len(write.rows.points)
            await self._commit(writes)

    async def _commit(self, writes: list[Write]) -> None:
        now_ns = time.time_ns()
        accepted: list[Write] = []
        for offset, write in enumerate(writes):
            try:
                # One stamp per write, in arrival order: two time-0 writes of the same point in
                # one group would otherwise tie, and a tie is a no-op under the merge rule, so the
                # later value would be dropped.
                self._check(write, now_ns + offset)
            except InvalidInput as exc:
                write.error = exc
            else:
                accepted.append(write)
        if accepted:
            try:
                self._next_seq = await self._apply([w.rows for w in accepted])
                self.commits += 1
                self.committed_writes += len(accepted)
            except Exception as exc:
                logger.exception("store: commit of %d writes failed; reloading the tree", len(accepted))
                error = StoreError(f"commit failed: {exc}")
                for write in accepted:
                    if not write.future.done():
                        write.future.set_exception(error)
                self.tree = Tree()
                await self._load()
                return
        for write in writes:
            if write.future.done():
                continue
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

    async def _apply(self, rows: list[WriteRows]) -> int:
        """Run one group's transaction (inline when small, see INLINE_COMMIT_MAX_POINTS); the lock
        keeps it from interleaving with other work on the write connection (retention)."""
        async with self._write_lock:
            if sum(len(r.points) for r in rows) <= INLINE_COMMIT_MAX_POINTS:
                return apply_writes(self._db, rows, self.instance_id, self._next_seq)
            return await self._in_writer(apply_writes, self._db, rows, self.instance_id, self._next_seq)

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

        def prune() -> int:
            row = self._db.execute(
                "SELECT seq FROM point_log WHERE time >= ? AND seq >= ? ORDER BY seq LIMIT 1",
                (cutoff_ns, min_seq),
            ).fetchone()
            keep_from = row[0] if row else self._next_seq
            removed = 0
            while True:
                cur = self._db.execute(
                    "DELETE FROM point_log WHERE seq IN "
                    "(SELECT seq FROM point_log WHERE seq < ? ORDER BY seq LIMIT ?)",
                    (keep_from, PRUNE_CHUNK_ROWS),
                )
                removed += cur.rowcount
                if cur.rowcount < PRUNE_CHUNK_ROWS:
                    return removed

        async with self._write_lock:
            removed = await self._in_writer(prune)
        if removed:
            logger.info("store: retention removed %d log entries", removed)
        return removed

    # ---- reads (reader connection; never blocks the writer) ----

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the reader connection."""
        assert self._reader is not None
        async with self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

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
        sql = [
            "SELECT type, key, time, value, tombstone, origin FROM point_log",
            "WHERE node = ? AND parent = '' AND time >= ? AND time < ?",
        ]
        params: list[Any] = [node, start, end]
        if type:
            sql.append("AND type = ?")
            params.append(type)
        if key:
            sql.append("AND key = ?")
            params.append(key)
        sql.append("ORDER BY time, seq LIMIT ?")
        params.append(limit)
        return [_row_point(r) for r in await self.fetch(" ".join(sql), tuple(params))]

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
        if self._db is not None:
            await self._in_writer(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)


def _row_point(row: tuple[Any, ...]) -> Point:
    ptype, key, t, blob, tombstone, origin = row
    return Point(type=ptype, key=key, time=t, value=unpack_value(blob), tombstone=tombstone, origin=origin)
