"""Fair, bounded work for read requests.

nats-py runs one subscription's callbacks one at a time, in arrival order: 50,000 `history`
requests from one client (even ones whose replies nobody reads) delayed every other client's
request by ~10 s. Here a callback only queues the request under its requester (the reply
subject's inbox) and returns; a few workers take the queues round-robin, so each requester gets
its turn whatever the others have queued, at most `concurrency` reads run at once, and a
requester's queue is bounded: past it its requests are refused ("busy").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


def requester_of(reply: str) -> str:
    """The requester behind a reply subject: its inbox without the per-request token
    (nats-py's `_INBOX.<nuid>.<token>`), so one connection's requests share one queue."""
    return reply.rsplit(".", 1)[0] if "." in reply else reply


class FairScheduler:
    """`async with FairScheduler(concurrency, per_requester) as fair:` runs its workers;
    `fair.submit(requester, job)` queues `job` (an async callable) or returns False when that
    requester already has `per_requester` jobs waiting."""

    def __init__(self, concurrency: int, per_requester: int) -> None:
        self.concurrency = concurrency
        self.per_requester = per_requester
        self._queues: dict[str, deque[Job]] = {}
        self._turns: deque[str] = deque()  # requesters with work, in round-robin order
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> FairScheduler:
        self._workers = [
            asyncio.create_task(self._work(), name=f"fair reads {i}") for i in range(self.concurrency)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._queues.clear()
        self._turns.clear()

    def submit(self, requester: str, job: Job) -> bool:
        queue = self._queues.get(requester)
        if queue is None:
            queue = self._queues[requester] = deque()
            self._turns.append(requester)
        elif len(queue) >= self.per_requester:
            return False
        queue.append(job)
        self._wake.set()
        return True

    def _next(self) -> Job | None:
        if not self._turns:
            return None
        requester = self._turns.popleft()
        queue = self._queues[requester]
        job = queue.popleft()
        if queue:
            self._turns.append(requester)  # its next job waits for everyone else's turn
        else:
            del self._queues[requester]
        return job

    async def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await job()
            except Exception:
                logger.exception("fair: a read request failed")
