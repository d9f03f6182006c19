"""A budget of log lines, so a flood of bad input does not become a flood of log lines."""

from __future__ import annotations

import time


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
