"""The clock the rules engine reads and sleeps on, injectable so tests can jump across a DST change
or a ten-minute hold without waiting (STYLE: "rule timers use an injectable clock").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

NS_PER_S = 1_000_000_000
# Sleep at most this long at a time, so a wall-clock step (NTP, a device without RTC getting its
# time) is noticed within a minute instead of after a long sleep computed from the old time.
MAX_SLEEP_S = 60.0


class Clock(Protocol):
    def now_ns(self) -> int: ...

    async def wait_until(self, deadline_ns: int | None, wake: asyncio.Event) -> None:
        """Return when `deadline_ns` is reached (None = never), `wake` is set, or at the latest
        after a bounded sleep; the caller re-checks its deadlines either way."""
        ...


class SystemClock:
    """Wall-clock time (ns since the epoch): schedules and stored deadlines are wall-clock."""

    def now_ns(self) -> int:
        return time.time_ns()

    async def wait_until(self, deadline_ns: int | None, wake: asyncio.Event) -> None:
        delay_s = MAX_SLEEP_S
        if deadline_ns is not None:
            delay_s = min(max((deadline_ns - self.now_ns()) / NS_PER_S, 0.0), MAX_SLEEP_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await wake.wait()


class ManualClock:
    """A clock that moves only when told to. `advance`/`set` wake every waiter whose deadline has
    come, so `await clock.advance(600)` makes a ten-minute hold expire at once."""

    def __init__(self, start_ns: int) -> None:
        self._now_ns = start_ns
        self._moved = asyncio.Event()

    def now_ns(self) -> int:
        return self._now_ns

    def set(self, now_ns: int) -> None:
        self._now_ns = now_ns
        self._moved.set()
        self._moved = asyncio.Event()

    def advance(self, seconds: float) -> None:
        self.set(self._now_ns + int(seconds * NS_PER_S))

    async def wait_until(self, deadline_ns: int | None, wake: asyncio.Event) -> None:
        while deadline_ns is None or self._now_ns < deadline_ns:
            if wake.is_set():
                return
            moved = asyncio.ensure_future(self._moved.wait())
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait((moved, woken), return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()
                woken.cancel()
