"""One rule's state machine: conditions with hold times, the rule's active state, due actions.

Pure logic: no I/O, no clock of its own (every call takes `now_ns`), so tests drive it through
DST changes and long holds instantly. Each call returns an `Outcome`: state points to persist and
actions to run; the manager does the writing and running, then reports back with `action_done`.

Why restarts neither re-fire nor forget: the rule persists `active`, `activeChanged` (the time
of its last transition) and, keyed by action id, each action's `lastRun`; all on the rule node, so
an evaluation writes one message. An action is due when the rule is in the action's state and
`lastRun < activeChanged` (not yet run for this transition) or a reminder is due
(`now >= lastRun + repeatInterval`). A restart reloads those points and asks the same question.
A crash between running an action and persisting `lastRun` re-runs it (at-least-once).

Only what a restart needs is persisted: a condition's `active`/`holdUntil` only when it has a hold
time (without one, its state is recomputed from the watched points the manager seeds it with).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from siot.nodes.rules.conditions import Evaluator, Trigger, Watch
from siot.nodes.rules.config import ActionConfig, ConditionConfig, RuleConfig
from siot.nodes.rules.schedule import NS_PER_S
from siot.points import Point

logger = logging.getLogger(__name__)

# State point types written by the engine (documented in docs/rules.md).
ACTIVE = "active"
ACTIVE_CHANGED = "activeChanged"
HOLD_UNTIL = "holdUntil"
LAST_RUN = "lastRun"
ERROR = "error"


@dataclass(slots=True)
class ConditionRuntime:
    """A condition's evaluator plus its held state. `active` only follows the raw state after it
    has differed for minActive (turning on) or minInactive (turning off) seconds; `hold_until_ns`
    is that pending deadline (0 = none) and is persisted so a restart keeps the hold's progress."""

    id: str
    config: ConditionConfig
    evaluator: Evaluator | None  # None when the config is invalid: never active
    watch: Watch = field(default_factory=Watch)
    active: bool = False
    hold_until_ns: int = 0

    @property
    def held(self) -> bool:
        """True if the condition has a hold time, so its state must survive a restart."""
        return self.config.min_active_s > 0 or self.config.min_inactive_s > 0

    def update(self, now_ns: int) -> bool:
        """Advance the held state to `now`; True if `active` or the hold deadline changed."""
        raw = self.evaluator is not None and self.evaluator.raw(now_ns)
        if raw == self.active:
            if self.hold_until_ns:
                self.hold_until_ns = 0
                return True
            return False
        hold_s = self.config.min_active_s if raw else self.config.min_inactive_s
        if hold_s <= 0 or (self.hold_until_ns and now_ns >= self.hold_until_ns):
            self.active = raw
            self.hold_until_ns = 0
            return True
        if not self.hold_until_ns:
            self.hold_until_ns = now_ns + int(hold_s * NS_PER_S)
            return True
        return False

    def next_deadline_ns(self, now_ns: int) -> int | None:
        times = [self.hold_until_ns] if self.hold_until_ns else []
        if self.evaluator is not None:
            change = self.evaluator.next_change_ns(now_ns)
            if change is not None:
                times.append(change)
        return min(times, default=None)

    def state_points(self) -> list[Point]:
        return [
            Point(ACTIVE, self.active, origin=self.id),
            Point(HOLD_UNTIL, self.hold_until_ns, origin=self.id),
        ]


@dataclass(slots=True)
class ActionRuntime:
    id: str
    config: ActionConfig
    inactive: bool  # an actionInactive node: runs while the rule is inactive
    last_run_ns: int = 0
    running: bool = False

    def due(self, rule_changed_ns: int, now_ns: int) -> bool:
        if self.running:
            return False
        if self.last_run_ns < rule_changed_ns:
            return True
        repeat_ns = int(self.config.repeat_interval_s * NS_PER_S)
        return repeat_ns > 0 and now_ns >= self.last_run_ns + repeat_ns

    def next_deadline_ns(self) -> int | None:
        repeat_ns = int(self.config.repeat_interval_s * NS_PER_S)
        if self.running or repeat_ns <= 0:
            return None
        return self.last_run_ns + repeat_ns


@dataclass(slots=True, frozen=True)
class ActionRun:
    """An action the manager must run now. `run_ns` becomes the action's `lastRun` when done."""

    rule: RuleRuntime
    action: ActionRuntime
    run_ns: int
    trigger: Trigger | None
    reminder: bool


@dataclass(slots=True)
class Outcome:
    writes: list[tuple[str, list[Point]]] = field(default_factory=list)
    runs: list[ActionRun] = field(default_factory=list)
    transitions: int = 0  # changes of the rule's `active` (what the loop guard counts, with runs)


@dataclass(slots=True, eq=False)
class RuleRuntime:
    """A loaded rule. `parent` is the node the rule hangs under (the scope of blank nodeIDs)."""

    id: str
    parent: str
    config: RuleConfig
    conditions: list[ConditionRuntime]
    actions: list[ActionRuntime]
    active: bool = False
    changed_ns: int = 0

    def on_point(self, condition: ConditionRuntime, node: str, point: Point, now_ns: int) -> Outcome:
        """A committed point from `condition`'s watch; re-evaluates only if it was relevant."""
        if condition.evaluator is None or not condition.evaluator.on_point(node, point, now_ns):
            return Outcome()
        return self.evaluate(now_ns)

    def evaluate(self, now_ns: int) -> Outcome:
        """Settle every condition at `now`, then the rule, then collect due actions. Used for
        points, timers and the first evaluation after loading (which resumes interrupted work)."""
        out = Outcome()
        if self.config.disabled:
            return out
        for cond in self.conditions:
            if not cond.config.disabled and cond.update(now_ns) and cond.held:
                out.writes.append((cond.id, cond.state_points()))
        enabled = [c for c in self.conditions if not c.config.disabled]
        active = bool(enabled) and all(c.active for c in enabled)
        if active != self.active:
            # DEBUG, not INFO: a busy rule flips many times a second, and each transition is
            # already recorded as an `active` point (`siot history <rule> active`).
            logger.debug(
                "rule %s (%s): %s", self.id, self.config.description, "active" if active else "inactive"
            )
            self.active = active
            out.transitions += 1
            # Strictly increasing: one committed batch may flip a rule several times at the same
            # `now`, and each transition must still be newer than the last run of its actions.
            self.changed_ns = max(now_ns, self.changed_ns + 1)
            out.writes.append(
                (
                    self.id,
                    [
                        Point(ACTIVE, active, origin=self.id),
                        Point(ACTIVE_CHANGED, self.changed_ns, origin=self.id),
                    ],
                )
            )
        for action in self.actions:
            if action.inactive != self.active and action.due(self.changed_ns, now_ns):
                reminder = action.last_run_ns >= self.changed_ns
                action.running = True
                out.runs.append(
                    ActionRun(self, action, max(now_ns, self.changed_ns), self.trigger(), reminder)
                )
        return out

    def trigger(self) -> Trigger | None:
        """The newest point that made one of the conditions true (None for pure schedules)."""
        triggers = [c.evaluator.trigger for c in self.conditions if c.evaluator and c.evaluator.trigger]
        return max(triggers, key=lambda t: t.point.time, default=None)

    def action_done(self, action_id: str, run_ns: int) -> Point | None:
        """Record that a run finished (delivered or given up); returns the rule's `lastRun` point
        (key = action id) to persist, or None if the action has been removed meanwhile."""
        for action in self.actions:
            if action.id == action_id:
                action.running = False
                action.last_run_ns = max(action.last_run_ns, run_ns)
                return Point(LAST_RUN, action.last_run_ns, key=action.id, origin=self.id)
        return None

    def adopt(self, old: RuleRuntime) -> list[ConditionRuntime]:
        """Take over the live state of the runtime this one replaces after a config change.

        In-memory state wins over the reloaded points because writes of the old runtime may not
        be committed yet. A condition whose config (and scope) is unchanged keeps its evaluator
        with what it has seen; the others are returned: the manager must seed them.
        """
        self.active, self.changed_ns = old.active, old.changed_ns
        previous = {c.id: c for c in old.conditions}
        fresh = []
        for cond in self.conditions:
            before = previous.get(cond.id)
            if before is None:
                fresh.append(cond)
                continue
            cond.active, cond.hold_until_ns = before.active, before.hold_until_ns
            if before.config == cond.config and old.parent == self.parent and cond.evaluator is not None:
                cond.evaluator = before.evaluator
            else:
                fresh.append(cond)
        runs = {a.id: a for a in old.actions}
        for action in self.actions:
            if action.id in runs:
                action.last_run_ns, action.running = runs[action.id].last_run_ns, runs[action.id].running
        return fresh

    def next_deadline_ns(self, now_ns: int) -> int | None:
        """When time alone may change something: a schedule edge, a hold expiry, a reminder."""
        if self.config.disabled:
            return None
        times = [
            t
            for c in self.conditions
            if not c.config.disabled and (t := c.next_deadline_ns(now_ns)) is not None
        ]
        times += [
            t for a in self.actions if a.inactive != self.active and (t := a.next_deadline_ns()) is not None
        ]
        return min(times, default=None)
