"""The one write path (DESIGN §1): validate → merge → store → fan out → node clients.

Every write enters here, whichever door it came through: the NATS API (siot/api.py, which also
serves MQTT publishes, as nats-server turns them into NATS messages) with decoded bytes, and the
daemon's node clients (siot/local.py) with `Point` objects. Both get the same checks and the same
errors; after `submit` the store merges and commits in arrival order (store/store.py), and its
commit listeners acknowledge (api.py) and fan out (siot/fanout.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence

from siot import subjects
from siot.codec import DEFAULT_MAX_BATCH_POINTS, check_batch_size
from siot.errors import InvalidInput, StoreBusy
from siot.logbudget import LogBudget
from siot.points import Point, checked_point
from siot.store import Store

logger = logging.getLogger(__name__)

# Refused writes are counted per node id; past this many distinct ids (a flood of p.<random>),
# the rest are counted together, so the counter and siot.stats stay bounded.
MAX_ERROR_KEYS = 10_000
OTHER_ERRORS_KEY = "(other)"
# Refused inputs are logged one line each, up to this many per interval: a flood of bad input
# must not become a flood of log lines (disk, journald).
ERROR_LOG_BURST = 50
ERROR_LOG_INTERVAL_S = 10.0
BUSY_LOG_INTERVAL_S = 10.0

# Checks a batch before it is stored: (node, parent, points); raises `InvalidInput` (usually
# `InvalidPoint`) to refuse the whole batch. Runs on the hot path: keep it cheap.
Validator = Callable[[str, str, list[Point]], None]


def reason_of(exc: Exception) -> str:
    """`InvalidPoint` -> `invalid_point`: a refusal's reason as a metrics label value."""
    return _CAMEL_WORD.sub("_", type(exc).__name__).lower()


_CAMEL_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


class WritePath:
    """The checks every write passes before the store takes it, and the count of what was
    refused (siot.stats `errors`, `busyRefused`, `busyDropped`), whichever door it came in by."""

    def __init__(self, store: Store, *, max_batch_points: int = DEFAULT_MAX_BATCH_POINTS) -> None:
        self.store = store
        self.max_batch_points = max_batch_points
        self._validators: list[Validator] = []
        self.errors: Counter[str] = Counter()
        # The same refusals by reason: the error's class in snake case (`invalid_point`,
        # `unknown_node`, ...), a handful of names whatever the input (siot.stats
        # `rejectedByReason`, /metrics `siot_rejected_requests_total{reason}`).
        self.reasons: Counter[str] = Counter()
        # Writes refused because the store's queue was full: told "busy" (a reply, or an
        # exception in process), or dropped without a word (a publish without a reply subject,
        # counted like nats-server's slow-consumer drops).
        self.busy_refused = 0
        self.busy_dropped = 0
        self._busy_logged_at = 0.0
        self._error_log = LogBudget(ERROR_LOG_BURST, ERROR_LOG_INTERVAL_S)

    def refused(self, node: str, exc: Exception) -> None:
        """Count (and, within the log budget, log) a write or request refused for `node`."""
        if node not in self.errors and len(self.errors) >= MAX_ERROR_KEYS:
            node = OTHER_ERRORS_KEY
        self.errors[node] += 1
        self.reasons[reason_of(exc)] += 1
        held_back = self._error_log.take()
        if held_back is not None:
            more = f" ({held_back} more rejected inputs not logged)" if held_back else ""
            logger.warning("api: rejected input for %s: %s%s", node or "?", exc, more)

    def busy(self, exc: StoreBusy, *, told: bool) -> None:
        """Count a write the full store refused; logged at most every BUSY_LOG_INTERVAL_S."""
        if told:
            self.busy_refused += 1
        else:
            self.busy_dropped += 1
        now = time.monotonic()
        if now - self._busy_logged_at >= BUSY_LOG_INTERVAL_S:
            self._busy_logged_at = now
            logger.warning(
                "api: %s (so far %d writes refused with a reply, %d dropped without one)",
                exc,
                self.busy_refused,
                self.busy_dropped,
            )

    def add_validator(self, validator: Validator) -> Callable[[], None]:
        """Check every batch before it is stored (e.g. data models); a refusal is the writer's
        error like any bad input. Returns the function that removes the validator."""
        self._validators.append(validator)
        return lambda: self._validators.remove(validator)

    @staticmethod
    def check_target(node: str, parent: str) -> None:
        """The node id (and edge parent) a write names must be legal subject tokens."""
        subjects.check_node_token(node)
        if parent:
            subjects.check_node_token(parent, what="parent id")

    def submit(
        self, node: str, points: list[Point], *, parent: str = "", reply: str | None = None
    ) -> asyncio.Future[list[Point]]:
        """Run the validators on a batch whose target and points are checked already (decoded
        from the wire after `check_target`), then queue it; the future resolves after commit to
        the points that changed. Raises `InvalidInput` for a bad write, `StoreBusy` when the
        store's queue is full, `SiotError` when it is closing."""
        for validate in self._validators:
            validate(node, parent, points)
        return self.store.submit(node, points, parent=parent, reply=reply)

    def submit_points(
        self, node: str, points: Sequence[Point], *, parent: str = ""
    ) -> asyncio.Future[list[Point]]:
        """`submit` for points built in process: each is checked as the wire decoder checks a
        point map (types, tokens, finite numbers, int64 times), so a node client's write is
        refused exactly where the same write over NATS would be."""
        try:
            self.check_target(node, parent)
            check_batch_size(len(points), self.max_batch_points)
            checked = [checked_point(p, index) for index, p in enumerate(points)]
            return self.submit(node, checked, parent=parent)
        except InvalidInput as exc:
            self.refused(node, exc)
            raise
        except StoreBusy as exc:
            self.busy(exc, told=True)
            raise
