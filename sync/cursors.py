"""Per-peer cursors, kept in memory and written to SQLite in the background.

A cursor only moves on a peer's acknowledgement. Writing it at most every `flush_s` (and on
close) is safe: after a crash a peer resends a little, and re-applying is a no-op by the merge
rule, so nothing is lost and nothing is logged twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from siot.store import Store
from siot.store.log import Cursors, load_cursors, save_cursors

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_S = 0.5
OUT = "out"  # seq of our log the peer has acknowledged
IN = "in"  # seq of the peer's log we have applied


class CursorBook:
    """`async with CursorBook(store) as book:` loads every cursor; leaving writes the dirty ones."""

    def __init__(self, store: Store, *, flush_s: float = DEFAULT_FLUSH_S) -> None:
        self.store = store
        self.flush_s = flush_s
        self._cursors: Cursors = {}
        self._dirty: Cursors = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CursorBook:
        self._cursors = await load_cursors(self.store)
        self._task = asyncio.create_task(self._flush_loop(), name="sync cursor flush")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def peers(self) -> set[str]:
        """Every peer with a cursor: the upstream (if any) and every edge that ever attached."""
        return {peer for peer, _ in self._cursors}

    def get(self, peer: str, direction: str) -> int | None:
        return self._cursors.get((peer, direction))

    def set(self, peer: str, direction: str, seq: int) -> None:
        if self._cursors.get((peer, direction)) == seq:
            return
        self._cursors[(peer, direction)] = seq
        self._dirty[(peer, direction)] = seq
        self._wake.set()

    async def flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        try:
            await save_cursors(self.store, dirty, time.time_ns())
        except Exception:
            for key, seq in dirty.items():
                self._dirty.setdefault(key, seq)
            raise

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                logger.exception("sync: saving cursors failed; will retry")
                self._wake.set()
            await asyncio.sleep(self.flush_s)
