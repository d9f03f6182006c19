"""The one owner of the SQLite write connection.

Every statement on the write connection — group commits, bookkeeping, retention, migrations —
runs through `WriteConnection.run`, under one lock, on one thread (or inline on the loop thread
for small commits). So no two transactions can interleave on the connection: before this, cursor
saves ran their own BEGIN … COMMIT on the writer thread while an inline commit had one open
(`cannot start a transaction within a transaction`, and half of one committed inside the other).
The checkpointer, which has a connection of its own, takes the same lock (`held`) when it must
pause commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from siot.store.writer import connect, rollback

T = TypeVar("T")


class WriteConnection:
    """`await WriteConnection.open(path, synchronous)`; `await conn.run(fn, *args)` runs
    `fn(db, *args)` with the connection to itself; `await conn.close()`."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siot-store-writer")
        self._db: sqlite3.Connection | None = None
        self.held = asyncio.Lock()  # while held, nothing else uses the write connection

    async def open(self, path: str, synchronous: str) -> None:
        self._db = await self._on_thread(connect, path, synchronous)

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """Run `fn(db, *args)` alone on the connection: on the writer thread, or on the caller's
        (the event loop's) when `inline` and it is quick. If `fn` raises with a transaction
        open, it is rolled back, so the next caller always starts clean."""
        if self._db is None:
            raise sqlite3.ProgrammingError("the write connection is closed")
        db = self._db
        async with self.held:
            if inline:
                return _clean_after(fn, db, *args)
            return await self._on_thread(_clean_after, fn, db, *args)

    async def close(self) -> None:
        async with self.held:
            if self._db is not None:
                await self._on_thread(self._db.close)
                self._db = None
        self._executor.shutdown(wait=True)


def _clean_after(fn: Callable[..., T], db: sqlite3.Connection, *args: Any) -> T:
    try:
        return fn(db, *args)
    except BaseException:
        rollback(db)
        raise
