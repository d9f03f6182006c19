"""How the rules engine writes: state points, setValue actions and `error` points, submitted to
the in-process write path without waiting (nodes/rules/manager.py's module doc says why the
order still holds), each with `origin` = the writing rule, condition or action."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from siot.errors import SiotError
from siot.local import LocalClient
from siot.nodes.rules.rule import ERROR, ActionRun
from siot.points import Point

logger = logging.getLogger(__name__)

# Where a node's error belongs, for its WARNING: "rule R: child C", "rule R", "node N".
Describe = Callable[[str], str]
# (action id, error or ""): a setValue's outcome changed the action's error state.
ActionOutcome = Callable[[str, str], None]


class RuleWriter:
    """The engine's writes, and the `error` point of every node it has written one on."""

    def __init__(self, client: LocalClient, describe: Describe, on_action_outcome: ActionOutcome) -> None:
        self.client = client
        self.describe = describe
        self.on_action_outcome = on_action_outcome
        self.errors: dict[str, str] = {}  # node -> its current error ("" = none)
        self._warned: dict[str, str] = {}  # node -> the error last logged for it

    def write(self, node: str, points: list[Point]) -> None:
        """Submit a write without waiting. One refused before it is queued (the store's queue is
        full, or it is closing) is logged; the API counts one that fails at commit."""
        try:
            future = self.client.submit(node, points)
        except SiotError as exc:
            logger.warning("rules: could not write %s to %s: %s", [p.type for p in points], node, exc)
            return
        future.add_done_callback(_retrieve)

    def set_value(self, run: ActionRun) -> None:
        """Submit a setValue action's point; nobody waits for it. Its outcome only sets or clears
        the action's `error` point, reported (`on_action_outcome`) only when that changes, so the
        usual success costs no write."""
        config = run.action.config
        target = config.node_id or run.rule.parent
        action = run.action.id
        point = Point(config.point_type, config.value, key=config.point_key, origin=action)
        try:
            future = self.client.submit(target, [point])
        except SiotError as exc:
            self.set_error(action, str(exc))
            return

        def done(future: asyncio.Future[list[Point]]) -> None:
            error = "" if future.cancelled() or future.exception() is None else str(future.exception())
            if self.errors.get(action, "") != error:
                self.on_action_outcome(action, error)

        future.add_done_callback(done)

    def know_error(self, node: str, message: str) -> None:
        """The error a node holds already (read from the store when its rule loads)."""
        self.errors.setdefault(node, message)

    def set_error(self, node: str, message: str, *, log: bool = True) -> None:
        """Write (or clear, with a tombstone) a node's `error` point, only when it changes; a new
        error is logged as a WARNING naming the node."""
        if self.errors.get(node, "") == message:
            return
        self.errors[node] = message
        if log:
            self.warn(node, message)
        self.write(node, [Point(ERROR, message, origin=node, tombstone=0 if message else 1)])

    def warn(self, node: str, message: str) -> None:
        """Log a node's new error as a WARNING naming it: once per error and process, so a
        restart says it again but reloads do not repeat it."""
        if self._warned.get(node, "") == message:
            return
        self._warned[node] = message
        if message:
            logger.warning("rules: %s: %s", self.describe(node), message)


def _retrieve(future: asyncio.Future[list[Point]]) -> None:
    """A write nobody waits for: its error (counted by the API) must not warn at exit."""
    if not future.cancelled():
        future.exception()
