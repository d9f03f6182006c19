"""Typed configs of the rule node types, decoded from their points (Simple IoT point names).

Why pydantic here and nowhere on the hot path: configs change rarely, and a validator is the one
place where a bad operator, time zone or clock time is turned into a clear message. The manager
writes that message as an `error` point on the node instead of crashing
(`siot.nodes.config.decode_config`).
"""

from __future__ import annotations

import math
from datetime import date, time
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from siot.nodes.config import MAX_DURATION_S, MIN_INTERVAL_S, Duration, NodeConfig
from siot.points import DEFAULT_KEY


class ConditionType(StrEnum):
    POINT_VALUE = "pointValue"
    SCHEDULE = "schedule"
    OFFLINE = "offline"
    ANOMALY = "anomaly"


class ValueType(StrEnum):
    NUMBER = "number"
    ON_OFF = "onOff"
    TEXT = "text"


class ActionType(StrEnum):
    SET_VALUE = "setValue"
    NOTIFY = "notify"


OPERATORS: dict[ValueType, frozenset[str]] = {
    ValueType.NUMBER: frozenset((">", ">=", "<", "<=", "=", "!=")),
    ValueType.ON_OFF: frozenset(("=", "!=", "on", "off")),
    ValueType.TEXT: frozenset(("=", "!=", "contains")),
}


# Bounds of the durations (seconds; docs/limits.md). A hold may be 0 (none); an offline timeout
# or an anomaly window shorter than a second is not one; a reminder is 0 (off) or at least 1 s.
Hold = Duration(0.0, MAX_DURATION_S)
Timeout = Duration(1.0, MAX_DURATION_S)
Window = Duration(1.0, MAX_DURATION_S)
RepeatInterval = Duration(MIN_INTERVAL_S, MAX_DURATION_S, zero_means_off=True)
LoopPause = Duration(1.0, 3600.0)

# The loop guard (manager.py): a rule may make at most `loopLimit` transitions and action runs per
# second that the rules engine's own writes caused; past that it is paused for `loopPause` s.
DEFAULT_LOOP_LIMIT = 20
MAX_LOOP_LIMIT = 1000
DEFAULT_LOOP_PAUSE_S = 10.0
# An anomaly condition keeps at most this many samples per node, whatever its window.
MAX_ANOMALY_SAMPLES = 10_000


class _NodeConfig(NodeConfig):
    """Fields every rule node type has. Unknown points (state, other clients' points) are ignored."""

    description: str = ""
    disabled: bool = False


class RuleConfig(_NodeConfig):
    loop_limit: int = Field(DEFAULT_LOOP_LIMIT, alias="loopLimit", ge=1, le=MAX_LOOP_LIMIT)
    loop_pause_s: LoopPause = Field(DEFAULT_LOOP_PAUSE_S, alias="loopPause")


def parse_clock_time(text: str) -> time:
    """'HH:MM' or 'HH:MM:SS' (24 h) -> time; raises ValueError with the bad text."""
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a clock time HH:MM[:SS]") from None


class ConditionConfig(_NodeConfig):
    """One condition. Which fields matter depends on `conditionType`; durations are seconds."""

    condition_type: ConditionType = Field(ConditionType.POINT_VALUE, alias="conditionType")
    # pointValue / anomaly: the watched point; offline: the watched node. Blank = rule's parent.
    node_id: str = Field("", alias="nodeID")
    point_type: str = Field("", alias="pointType")
    point_key: str = Field(DEFAULT_KEY, alias="pointKey")
    value_type: ValueType = Field(ValueType.NUMBER, alias="valueType")
    operator: str = "="
    value: Any = None
    min_active_s: Hold = Field(0.0, alias="minActive")
    min_inactive_s: Hold = Field(0.0, alias="minInactive")
    # schedule: a local window [start, end) in `tz`, on the given weekdays (0 = Sunday, as in
    # Simple IoT) and/or dates. start > end spans midnight; equal or blank means the whole day.
    start: str = ""
    end: str = ""
    weekday: dict[str, bool] = Field(default_factory=dict)
    date: dict[str, str] = Field(default_factory=dict)
    tz: str = "UTC"
    # offline: seconds without a point before the node counts as offline.
    timeout_s: Timeout = Field(300.0, alias="timeout")
    # anomaly: rolling window (seconds), threshold in standard deviations, samples before judging.
    window_s: Window = Field(3600.0, alias="window")
    threshold: float = Field(3.0, gt=0)
    min_samples: int = Field(10, alias="minSamples", ge=2, le=MAX_ANOMALY_SAMPLES)

    @field_validator("point_key", mode="before")
    @classmethod
    def _blank_key(cls, v: Any) -> Any:
        return v or DEFAULT_KEY

    @field_validator("tz")
    @classmethod
    def _valid_tz(cls, v: str) -> str:
        try:
            ZoneInfo(v or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{v}' (use an IANA name such as Europe/Berlin)") from None
        return v or "UTC"

    @model_validator(mode="after")
    def _consistent(self) -> ConditionConfig:
        kind = self.condition_type
        if kind in (ConditionType.POINT_VALUE, ConditionType.ANOMALY) and not self.point_type:
            raise ValueError(f"a {kind} condition needs a pointType")
        if kind is ConditionType.POINT_VALUE:
            allowed = OPERATORS[self.value_type]
            if self.operator not in allowed:
                raise ValueError(
                    f"operator '{self.operator}' is not valid for valueType {self.value_type} "
                    f"(use one of {', '.join(sorted(allowed))})"
                )
            if self.value_type is ValueType.NUMBER:
                self.number_value()
        if kind is ConditionType.SCHEDULE:
            for text in (self.start, self.end):
                if text:
                    parse_clock_time(text)
            for key in self.weekday:
                if key not in {str(d) for d in range(7)}:
                    raise ValueError(f"weekday key '{key}' must be 0 (Sunday) .. 6 (Saturday)")
            for text in self.date.values():
                if text:
                    try:
                        date.fromisoformat(text)
                    except ValueError:
                        raise ValueError(f"date '{text}' is not YYYY-MM-DD") from None
        return self

    def number_value(self) -> float:
        """The comparison value as a float; raises ValueError if it is not a number."""
        v = self.value
        if isinstance(v, bool):
            return float(v)
        try:
            result = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"value {v!r} is not a number") from None
        if math.isnan(result):
            raise ValueError("value is NaN")
        return result


class ActionConfig(_NodeConfig):
    """An `action` or `actionInactive` node. `repeatInterval` (s) re-runs it while the rule stays
    in the state that ran it; 0 = once per transition, else at least `MIN_INTERVAL_S`.

    `action` has no default: a node is created as its edge first and its points after, so an
    action read in between has no points, and a default would run it as a notify.
    """

    action: ActionType
    # setValue: the node to write (blank = the rule's parent); notify: the msgService node
    # (blank = every msgService found under the rule's ancestors).
    node_id: str = Field("", alias="nodeID")
    point_type: str = Field("", alias="pointType")
    point_key: str = Field(DEFAULT_KEY, alias="pointKey")
    # setValue: the value written; notify: an optional message template ({rule}, {node}, {point},
    # {key}, {value}, {time}).
    value: Any = None
    repeat_interval_s: RepeatInterval = Field(0.0, alias="repeatInterval")

    @field_validator("point_key", mode="before")
    @classmethod
    def _blank_key(cls, v: Any) -> Any:
        return v or DEFAULT_KEY

    @model_validator(mode="after")
    def _consistent(self) -> ActionConfig:
        if self.action is ActionType.SET_VALUE and not self.point_type:
            raise ValueError("a setValue action needs a pointType")
        return self
