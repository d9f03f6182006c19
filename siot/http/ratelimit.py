"""Login rate limits (POST /v1/auth): failed attempts per client address and per account, in a
sliding window. Past a limit the next attempt is refused with 429 and `Retry-After` before any
password is checked, so guessing costs the attacker time and the daemon no argon2 work.

Only failures count: a user who types the password right is never held up by its own successes.
The account limit is looser than the address limit would be for one guesser; an attacker who
spreads over many addresses still meets the account limit, and one who tries many accounts from
one address meets the address limit. An account under attack is locked for at most one window.
Memory is bounded: past `max_keys` tracked keys, the stalest are forgotten.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_WINDOW_S = 300.0
DEFAULT_PER_ADDRESS = 20
DEFAULT_PER_ACCOUNT = 10
DEFAULT_MAX_KEYS = 100_000


class FailureWindow:
    """Failure times per key within the last `window_s`, at most `limit` before refusing."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again; 0 when it may now."""
        times = self._failures.get(key)
        if times is None:
            return 0
        now = self._clock()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[0] + self.window_s - now))

    def fail(self, key: str) -> None:
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(self._clock())


class LoginLimiter:
    """The two windows of POST /v1/auth."""

    def __init__(
        self,
        per_address: int = DEFAULT_PER_ADDRESS,
        per_account: int = DEFAULT_PER_ACCOUNT,
        window_s: float = DEFAULT_WINDOW_S,
    ) -> None:
        self.by_address = FailureWindow(per_address, window_s)
        self.by_account = FailureWindow(per_account, window_s)

    def retry_after(self, address: str, account: str) -> int:
        return max(self.by_address.retry_after(address), self.by_account.retry_after(account))

    def fail(self, address: str, account: str) -> None:
        self.by_address.fail(address)
        self.by_account.fail(account)
