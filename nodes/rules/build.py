"""Assemble a `RuleRuntime` from the points of a rule node and its children, state included.

Kept apart from the manager so that loading, and restoring state after a restart, is tested
without a daemon: the input is plain points, the output the runtime plus per-node config errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from siot.nodes.config import point_fields, try_decode_config
from siot.nodes.rules.conditions import Watch, make_evaluator
from siot.nodes.rules.config import ActionConfig, ConditionConfig, RuleConfig
from siot.nodes.rules.rule import (
    ACTIVE,
    ACTIVE_CHANGED,
    HOLD_UNTIL,
    LAST_RUN,
    ActionRuntime,
    ConditionRuntime,
    RuleRuntime,
)
from siot.points import Point

RULE = "rule"
CONDITION = "condition"
ACTION = "action"
ACTION_INACTIVE = "actionInactive"
CHILD_TYPES = frozenset((CONDITION, ACTION, ACTION_INACTIVE))


@dataclass(slots=True, frozen=True)
class NodePoints:
    id: str
    type: str
    points: list[Point]


# State times beyond this (the year 2116) are not believed: one more nanosecond on top of a
# forged `activeChanged` of 2**63-1 would not fit in the int64 of the next state write.
MAX_STATE_NS = 2**62


def _int(fields: dict[str, object], name: str) -> int:
    value = fields.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STATE_NS:
        return value
    return 0


def build_rule(
    rule: NodePoints, parent: str, children: list[NodePoints], now_ns: int
) -> tuple[RuleRuntime, dict[str, str]]:
    """Build the runtime. Returns it with `errors`: node id -> message ("" = that node is fine),
    covering the rule and every child, so the manager can set or clear each `error` point.

    A condition with a bad config is kept but never active (so the rule cannot fire on half a
    config); an action with a bad config is dropped.
    """
    errors: dict[str, str] = {}
    rule_config, errors[rule.id] = try_decode_config(RuleConfig, rule.points)
    state = point_fields(rule.points, keyed=(LAST_RUN,))
    last_runs = state.get(LAST_RUN, {})
    conditions: list[ConditionRuntime] = []
    actions: list[ActionRuntime] = []
    for child in sorted(children, key=lambda c: c.id):
        fields = point_fields(child.points)
        if child.type == CONDITION:
            config, errors[child.id] = try_decode_config(ConditionConfig, child.points)
            evaluator = watch = None
            if config is not None:
                try:
                    evaluator, watch = make_evaluator(config, rule_parent=parent, now_ns=now_ns)
                except ValueError as exc:
                    errors[child.id] = str(exc)
            conditions.append(
                ConditionRuntime(
                    id=child.id,
                    config=config or ConditionConfig.model_construct(),  # defaults, never evaluated
                    evaluator=evaluator,
                    watch=watch or Watch(),
                    active=fields.get(ACTIVE) is True,
                    hold_until_ns=_int(fields, HOLD_UNTIL),
                )
            )
        elif child.type in (ACTION, ACTION_INACTIVE):
            action_config, errors[child.id] = try_decode_config(ActionConfig, child.points)
            if action_config is not None:
                actions.append(
                    ActionRuntime(
                        id=child.id,
                        config=action_config,
                        inactive=child.type == ACTION_INACTIVE,
                        last_run_ns=_int(last_runs, child.id),
                    )
                )
    runtime = RuleRuntime(
        id=rule.id,
        parent=parent,
        config=rule_config or RuleConfig(disabled=True),
        conditions=conditions,
        actions=actions,
        active=state.get(ACTIVE) is True,
        changed_ns=_int(state, ACTIVE_CHANGED),
    )
    return runtime, errors
