"""WAL checkpoints off the write path.

SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold, on the writer
thread, so every ~1,000 pages one commit (and every write queued behind it) also copies the WAL
into the database file. Here the writer has `wal_autocheckpoint=0` and this checkpointer runs
PASSIVE checkpoints from its own connection and thread, which SQLite allows concurrently with the
writer; the copying then overlaps with ingest on the second core.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

# Often, so each checkpoint is small. Its closing fsync holds up the writer's WAL appends in
# the kernel (ext4 journal commit) for as long as the flush takes: every 0.5 s that was a 7–12 ms
# stall, the rules benchmark's p99; every 0.1 s the stalls stay under the queueing noise
# (docs/benchmarks.md). The cost is more writes of hot pages into the database file.
DEFAULT_CHECKPOINT_INTERVAL_S = 0.1
# A WAL this long is started over from its beginning (see `_restart_wal`): 30,000 frames of 4 KB
# pages are ~124 MB, under the 128 MB the writer truncates a longer WAL to when it starts over,
# so a restart never truncates (truncating a 256 MB WAL stalled commits for ~200 ms). Each
# restart pauses commits; at 14,000 frames the pauses came twice as often and the rules
# benchmark's p99 in 30 s runs was 19–28 ms instead of 9–18 ms (docs/benchmarks.md).
DEFAULT_RESTART_WAL_FRAMES = 30_000
# Unheld passes before the held one: each copies what arrived during the one before, so the held
# pass (and the pause of commits) shrinks to about the fsync floor: mostly 5–7 ms here instead
# of 11–25 ms.
CATCH_UP_PASSES = 2


class Checkpointer:
    """Checkpoints the WAL whenever the store has committed since the last checkpoint.
    `async with Checkpointer(...)` runs it; leaving stops it (the writer's final close
    checkpoints what is left). `hold_writes` is the store's write lock: while it is held, the
    store starts no transaction."""

    def __init__(
        self,
        path: str,
        last_seq: Callable[[], int],
        hold_writes: asyncio.Lock,
        interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S,
        restart_wal_frames: int = DEFAULT_RESTART_WAL_FRAMES,
    ) -> None:
        self._path = path
        self._last_seq = last_seq
        self._hold_writes = hold_writes
        self.interval_s = interval_s
        self.restart_wal_frames = restart_wal_frames
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siot-store-checkpoint")
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_result: tuple[int, int, int] | None = None
        self.checkpointed = asyncio.Event()  # set after each checkpoint; cleared by whoever waits

    async def __aenter__(self) -> Checkpointer:
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._executor, self._connect)
        self._task = asyncio.create_task(self._run(), name="store checkpointer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=True)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def checkpoint(self) -> tuple[int, int, int]:
        """(busy, wal pages, pages checkpointed), as SQLite reports; runs on the caller's thread."""
        assert self._db is not None
        return self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    async def _restart_wal(self) -> tuple[int, int, int]:
        """Copy every frame with commits held, so the next transaction starts the WAL over.

        SQLite starts the WAL over only when a transaction begins with every frame copied. Under
        steady writes no checkpoint ends that way (frames arrive while it copies; its counts are
        those of its start), so the WAL grew without bound (1.2 GB in a 30 s rules benchmark,
        until the disk is full) and page lookups through its index slowed down. The held pass
        pauses commits for 5–7 ms on this machine (rarely up to ~20 ms); it only happens under
        writes steady enough to fill the WAL, since any pause in them lets it start over by itself.
        """
        loop = asyncio.get_running_loop()
        for _ in range(CATCH_UP_PASSES):
            await loop.run_in_executor(self._executor, self.checkpoint)
        async with self._hold_writes:
            return await loop.run_in_executor(self._executor, self.checkpoint)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        done_seq = -1
        failing = False
        while True:
            await asyncio.sleep(self.interval_s)
            seq = self._last_seq()
            if seq == done_seq:
                continue
            try:
                self.last_result = await loop.run_in_executor(self._executor, self.checkpoint)
                if self.last_result[1] >= self.restart_wal_frames:
                    self.last_result = await self._restart_wal()
                done_seq = seq
                self.checkpointed.set()
                if failing:
                    logger.info("store: WAL checkpoints work again")
                    failing = False
            except sqlite3.Error as exc:
                # Once per failure streak (disk full, read-only file): retried every interval.
                if not failing:
                    logger.warning("store: WAL checkpoint failed (%s); will retry", exc)
                    failing = True
