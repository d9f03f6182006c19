"""Condition evaluators: each turns the points it is shown (and the clock) into a raw true/false.

Every evaluator has the same three calls, so the hold-time logic in `rule.py` is written once:
`on_point` (a committed point from the condition's scope; returns True if it was relevant),
`raw(now_ns)`, and `next_change_ns(now_ns)` (when time alone may flip `raw`, else None).
The manager decides which points reach an evaluator (see `Watch`); evaluators only filter by
point type and key.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from siot.nodes.rules.config import MAX_ANOMALY_SAMPLES, ConditionConfig, ConditionType, ValueType
from siot.nodes.rules.schedule import NS_PER_S, Schedule
from siot.points import Point

TRUE_WORDS = frozenset(("1", "on", "true", "yes"))
# Larger values (and infinity) are not taken into anomaly statistics: their squares overflow to
# infinity, and one such sample would leave the window's sums NaN for good.
MAX_ANOMALY_VALUE = 1e150


@dataclass(slots=True, frozen=True)
class Watch:
    """Which committed points a condition needs: those of `node`, or of `node` and everything
    below it when `subtree` is set. An empty watch (node "") needs none (schedules)."""

    node: str = ""
    subtree: bool = False


@dataclass(slots=True, frozen=True)
class Trigger:
    """The point that last made a condition true, for messages ("humidity 31 on Soil sensor 3")."""

    node: str
    point: Point


class Evaluator(Protocol):
    trigger: Trigger | None

    def on_point(self, node: str, point: Point, now_ns: int) -> bool: ...

    def raw(self, now_ns: int) -> bool: ...

    def next_change_ns(self, now_ns: int) -> int | None: ...


def to_number(value: Any) -> float | None:
    """A point value as a float, or None if it is not numeric (text, maps, NaN)."""
    if isinstance(value, bool | int | float):
        number = float(value)
        return None if math.isnan(number) else number
    return None


def truthy(value: Any) -> bool:
    """On/off reading of a value: non-zero numbers, True, and 'on'/'true'/'yes'/'1' are on."""
    if isinstance(value, str):
        return value.strip().lower() in TRUE_WORDS
    number = to_number(value)
    return bool(number) if number is not None else False


def compare(value_type: ValueType, operator: str, actual: Any, expected: Any) -> bool:
    """Apply a validated operator. A value of the wrong kind (text for a number) never matches."""
    if value_type is ValueType.NUMBER:
        a, e = to_number(actual), to_number(expected)
        if a is None or e is None:
            return False
        return {
            ">": a > e,
            ">=": a >= e,
            "<": a < e,
            "<=": a <= e,
            "=": a == e,
            "!=": a != e,
        }[operator]
    if value_type is ValueType.ON_OFF:
        on = truthy(actual)
        return {"on": on, "off": not on, "=": on == truthy(expected), "!=": on != truthy(expected)}[operator]
    text = actual if isinstance(actual, str) else "" if actual is None else str(actual)
    want = expected if isinstance(expected, str) else "" if expected is None else str(expected)
    return {"=": text == want, "!=": text != want, "contains": want in text}[operator]


@dataclass(slots=True)
class PointValue:
    """True while any watched node's latest matching point satisfies the comparison. With a blank
    nodeID the watch is a whole subtree, so each node's latest result is kept separately."""

    config: ConditionConfig
    expected: Any
    matches: dict[str, bool] = field(default_factory=dict)
    trigger: Trigger | None = None

    def on_point(self, node: str, point: Point, now_ns: int) -> bool:
        if point.type != self.config.point_type or point.key != self.config.point_key:
            return False
        if point.deleted:
            self.matches.pop(node, None)
            return True
        hit = compare(self.config.value_type, self.config.operator, point.value, self.expected)
        self.matches[node] = hit
        if hit:
            self.trigger = Trigger(node, point)
        return True

    def raw(self, now_ns: int) -> bool:
        return any(self.matches.values())

    def next_change_ns(self, now_ns: int) -> int | None:
        return None


@dataclass(slots=True)
class ScheduleWindow:
    schedule: Schedule
    trigger: Trigger | None = None

    def on_point(self, node: str, point: Point, now_ns: int) -> bool:
        return False

    def raw(self, now_ns: int) -> bool:
        return self.schedule.active(now_ns)

    def next_change_ns(self, now_ns: int) -> int | None:
        return self.schedule.next_change_ns(now_ns)


@dataclass(slots=True)
class Offline:
    """True when no point has arrived from the watched subtree for `timeout` seconds. Arrival is
    judged by the local clock, not by point times, so a device with a wrong clock (or history
    replayed by sync) still counts as having just spoken."""

    timeout_ns: int
    last_seen_ns: int
    trigger: Trigger | None = None

    def on_point(self, node: str, point: Point, now_ns: int) -> bool:
        self.last_seen_ns = max(self.last_seen_ns, now_ns)
        self.trigger = Trigger(node, point)
        return True

    def raw(self, now_ns: int) -> bool:
        return now_ns - self.last_seen_ns >= self.timeout_ns

    def next_change_ns(self, now_ns: int) -> int | None:
        deadline = self.last_seen_ns + self.timeout_ns
        return deadline if deadline > now_ns else None


@dataclass(slots=True)
class RollingStats:
    """Mean and standard deviation of the samples of the last `window_ns` (at most the newest
    `max_samples` of them, so a long window on a fast point has bounded memory), in O(1) per sample.

    Sums are kept relative to the first sample seen (`shift`), which keeps the variance accurate
    for large values with small spread (e.g. pressures around 101325 Pa).
    """

    window_ns: int
    max_samples: int = MAX_ANOMALY_SAMPLES
    samples: deque[tuple[int, float]] = field(default_factory=deque)
    shift: float | None = None
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, time_ns: int, value: float) -> None:
        if self.shift is None:
            self.shift = value
        self.samples.append((time_ns, value))
        d = value - self.shift
        self.total += d
        self.total_sq += d * d
        self.evict(time_ns)
        while len(self.samples) > self.max_samples:
            self._pop()

    def evict(self, now_ns: int) -> None:
        assert self.shift is not None or not self.samples
        while self.samples and self.samples[0][0] <= now_ns - self.window_ns:
            self._pop()

    def _pop(self) -> None:
        _, old = self.samples.popleft()
        d = old - self.shift  # type: ignore[operator]
        self.total -= d
        self.total_sq -= d * d

    def __len__(self) -> int:
        return len(self.samples)

    def z_score(self, value: float) -> float:
        """How many standard deviations `value` is from the mean (inf if the window is constant
        and value differs from it). Call with at least one sample."""
        n = len(self.samples)
        assert n and self.shift is not None
        mean_d = self.total / n
        variance = max(self.total_sq / n - mean_d * mean_d, 0.0)
        delta = abs(value - self.shift - mean_d)
        if variance == 0.0:
            return 0.0 if delta == 0.0 else math.inf
        return delta / math.sqrt(variance)


@dataclass(slots=True)
class Anomaly:
    """True while the latest value of a watched node is more than `threshold` standard deviations
    from the rolling mean of the values before it (a streaming z-score, one window per node)."""

    config: ConditionConfig
    stats: dict[str, RollingStats] = field(default_factory=dict)
    anomalous: dict[str, bool] = field(default_factory=dict)
    trigger: Trigger | None = None
    # Per node, the (time, origin) of the newest sample taken. The store fans out only points
    # that won the merge, so each point of a series is newer than the last: one that is not is
    # the same point seen twice (the seed's history read overlapping the live feed, or two
    # subscriptions while the manager swaps one for another) and must not count twice.
    newest: dict[str, tuple[int, str]] = field(default_factory=dict)

    def on_point(self, node: str, point: Point, now_ns: int) -> bool:
        if point.type != self.config.point_type or point.key != self.config.point_key or point.deleted:
            return False
        value = to_number(point.value)
        if value is None or not abs(value) <= MAX_ANOMALY_VALUE:
            return False
        time_ns = point.time or now_ns
        seen = self.newest.get(node)
        if seen is not None and (time_ns, point.origin) <= seen:
            return False
        self.newest[node] = (time_ns, point.origin)
        stats = self.stats.get(node)
        if stats is None:
            stats = self.stats[node] = RollingStats(int(self.config.window_s * NS_PER_S))
        stats.evict(time_ns)
        judged = len(stats) >= self.config.min_samples
        hit = judged and stats.z_score(value) > self.config.threshold
        self.anomalous[node] = hit
        if hit:
            self.trigger = Trigger(node, point)
        stats.add(time_ns, value)
        return True

    def raw(self, now_ns: int) -> bool:
        return any(self.anomalous.values())

    def next_change_ns(self, now_ns: int) -> int | None:
        return None


def make_evaluator(config: ConditionConfig, *, rule_parent: str, now_ns: int) -> tuple[Evaluator, Watch]:
    """Build the evaluator for a validated condition and say what it must be shown.

    A blank nodeID means the rule's parent: its whole subtree for pointValue, anomaly and offline.
    An offline condition starts as "just seen" at `now_ns` unless the manager knows better.
    """
    node = config.node_id or rule_parent
    subtree = not config.node_id or config.condition_type is ConditionType.OFFLINE
    match config.condition_type:
        case ConditionType.POINT_VALUE:
            expected = config.number_value() if config.value_type is ValueType.NUMBER else config.value
            return PointValue(config, expected), Watch(node, subtree)
        case ConditionType.SCHEDULE:
            return ScheduleWindow(Schedule.from_config(config)), Watch()
        case ConditionType.OFFLINE:
            return Offline(int(config.timeout_s * NS_PER_S), now_ns), Watch(node, True)
        case ConditionType.ANOMALY:
            return Anomaly(config), Watch(node, subtree)
    raise AssertionError(f"unhandled condition type {config.condition_type}")
