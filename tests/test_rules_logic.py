"""The rules engine's pure logic, driven with explicit times: operators, schedules across DST and
midnight, the streaming z-score, hold times, and restoring state after a restart."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from siot.nodes.config import try_decode_config
from siot.nodes.notify import MsgServiceConfig, Notification
from siot.nodes.rules import (
    ConditionConfig,
    NodePoints,
    RollingStats,
    RuleRuntime,
    Schedule,
    build_rule,
    compare,
)
from siot.nodes.rules.conditions import Anomaly, make_evaluator
from siot.nodes.rules.config import ValueType
from siot.points import Point

S = 1_000_000_000
PARENT = "farm"
SENSOR = "sensor-1"


def local_ns(text: str, tz: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()) * S


def condition(**fields: object) -> ConditionConfig:
    config, error = try_decode_config(ConditionConfig, [Point(k, v) for k, v in fields.items()])
    assert config is not None, error
    return config


# ---- operators ----


@pytest.mark.parametrize(
    ("value_type", "operator", "actual", "expected", "result"),
    [
        (ValueType.NUMBER, ">", 36, 35, True),
        (ValueType.NUMBER, ">", 35, 35, False),
        (ValueType.NUMBER, ">=", 35, 35.0, True),
        (ValueType.NUMBER, "<", 34.9, 35, True),
        (ValueType.NUMBER, "<=", 35, 35, True),
        (ValueType.NUMBER, "<=", 35.1, 35, False),
        (ValueType.NUMBER, "=", 2, 2.0, True),
        (ValueType.NUMBER, "!=", 2, 3, True),
        (ValueType.NUMBER, ">", "40", 35, False),  # text never matches a number
        (ValueType.NUMBER, "<", math.nan, 35, False),
        (ValueType.ON_OFF, "on", 1, None, True),
        (ValueType.ON_OFF, "on", "off", None, False),
        (ValueType.ON_OFF, "off", False, None, True),
        (ValueType.ON_OFF, "=", True, 1, True),
        (ValueType.ON_OFF, "!=", 0, True, True),
        (ValueType.TEXT, "=", "open", "open", True),
        (ValueType.TEXT, "!=", "open", "closed", True),
        (ValueType.TEXT, "contains", "pump fault E42", "fault", True),
        (ValueType.TEXT, "contains", "ok", "fault", False),
        (ValueType.TEXT, "=", None, "", True),
    ],
)
def test_compare(
    value_type: ValueType, operator: str, actual: object, expected: object, result: bool
) -> None:
    assert compare(value_type, operator, actual, expected) is result


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ({"pointType": "t", "operator": "~"}, "operator '~' is not valid for valueType number"),
        (
            {"pointType": "t", "valueType": "text", "operator": ">"},
            "operator '>' is not valid for valueType text",
        ),
        ({"pointType": "t", "value": "high"}, "value 'high' is not a number"),
        ({"conditionType": "schedule", "tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"conditionType": "schedule", "start": "25:00"}, "'25:00' is not a clock time"),
        ({"conditionType": "schedule", "weekday": {"9": True}}, "weekday key '9'"),
        ({"conditionType": "pointValue"}, "needs a pointType"),
        ({"conditionType": "sometimes"}, "conditionType"),
    ],
)
def test_bad_condition_config_is_a_message_not_an_exception(points: dict[str, object], message: str) -> None:
    flat = []
    for name, value in points.items():
        if isinstance(value, dict):
            flat += [Point(name, v, key=k) for k, v in value.items()]
        else:
            flat.append(Point(name, value))
    config, error = try_decode_config(ConditionConfig, flat)
    assert config is None
    assert message in error


# ---- schedules ----


def test_schedule_follows_local_time_across_spring_forward() -> None:
    """22:00-06:00 Europe/Berlin: the window edges stay at local 22:00 on both sides of the
    2024-03-31 change, so the UTC instants move by one hour."""
    tz = "Europe/Berlin"
    sched = Schedule.from_config(condition(conditionType="schedule", start="22:00", end="06:00", tz=tz))
    before = local_ns("2024-03-30T21:59:59", tz)
    assert not sched.active(before)
    start_sat = sched.next_change_ns(before)
    assert start_sat == local_ns("2024-03-30T22:00:00", tz) == 1711832400 * S  # 21:00 UTC (CET)
    end_sun = sched.next_change_ns(start_sat)
    # The night contains the skipped hour, so it lasts 7 h instead of 8.
    assert end_sun == local_ns("2024-03-31T06:00:00", tz) == start_sat + 7 * 3600 * S
    assert sched.active(end_sun - 1) and not sched.active(end_sun)
    start_sun = sched.next_change_ns(end_sun)
    assert start_sun == local_ns("2024-03-31T22:00:00", tz) == 1711915200 * S  # 20:00 UTC (CEST)


def test_schedule_fall_back_night_is_nine_hours() -> None:
    tz = "America/New_York"
    sched = Schedule.from_config(condition(conditionType="schedule", start="22:00", end="06:00", tz=tz))
    start = local_ns("2024-11-02T22:00:00", tz)
    assert sched.next_change_ns(start) == start + 9 * 3600 * S


def test_midnight_spanning_window_belongs_to_its_start_day() -> None:
    """Friday only, 22:00-02:00: active Friday night until Saturday 02:00, not Thursday night."""
    config, _ = try_decode_config(
        ConditionConfig,
        [
            Point("conditionType", "schedule"),
            Point("start", "22:00"),
            Point("end", "02:00"),
            Point("weekday", True, key="5"),  # Friday (0 = Sunday)
        ],
    )
    assert config is not None
    sched = Schedule.from_config(config)
    friday_2330 = local_ns("2024-05-10T23:30:00", "UTC")  # a Friday
    assert sched.active(friday_2330)
    assert sched.active(local_ns("2024-05-11T01:59:00", "UTC"))  # Saturday, window still open
    assert not sched.active(local_ns("2024-05-11T02:00:00", "UTC"))
    assert not sched.active(local_ns("2024-05-10T01:00:00", "UTC"))  # Thursday's night: not allowed
    assert sched.next_change_ns(local_ns("2024-05-11T03:00:00", "UTC")) == local_ns(
        "2024-05-17T22:00:00", "UTC"
    )


def test_schedule_dates_and_whole_day() -> None:
    config, _ = try_decode_config(
        ConditionConfig,
        [
            Point("conditionType", "schedule"),
            Point("date", "2024-12-24", key="a"),
            Point("tz", "Europe/Paris"),
        ],
    )
    assert config is not None
    sched = Schedule.from_config(config)
    assert sched.active(local_ns("2024-12-24T00:00:00", "Europe/Paris"))
    assert sched.active(local_ns("2024-12-24T23:59:59", "Europe/Paris"))
    assert not sched.active(local_ns("2024-12-25T00:00:00", "Europe/Paris"))
    assert sched.next_change_ns(local_ns("2024-12-26T00:00:00", "Europe/Paris")) is None


# ---- anomaly ----


def test_rolling_z_score_is_stable_for_large_values_and_forgets_old_samples() -> None:
    stats = RollingStats(window_ns=10 * S)
    for i in range(10):
        stats.add(i * S, 101_325.0 + (i % 2))  # mean 101325.5, sd 0.5
    assert stats.z_score(101_325.5) == pytest.approx(0.0)
    assert stats.z_score(101_327.5) == pytest.approx(4.0)
    stats.add(15 * S, 5.0)  # evicts everything older than 5 s
    assert [t for t, _ in stats.samples] == [6 * S, 7 * S, 8 * S, 9 * S, 15 * S]


def test_anomaly_counts_a_point_seen_twice_once() -> None:
    """The seed's history read can overlap the live feed; a repeated point is not a new sample."""
    config = condition(conditionType="anomaly", nodeID=SENSOR, pointType="p", minSamples=3, threshold=2)
    evaluator, _ = make_evaluator(config, rule_parent=PARENT, now_ns=0)
    assert isinstance(evaluator, Anomaly)
    series = [Point("p", v, time=(i + 1) * S) for i, v in enumerate([10.0, 11.0, 10.0, 11.0])]
    for point in series + series[1:]:
        evaluator.on_point(SENSOR, point, 0)
    assert [v for _, v in evaluator.stats[SENSOR].samples] == [10.0, 11.0, 10.0, 11.0]
    assert evaluator.on_point(SENSOR, Point("p", 50.0, time=5 * S), 0) and evaluator.raw(0)


# ---- rules: holds, transitions, reminders, restarts ----


def make_rule(
    cond_points: list[Point],
    *,
    rule_points: tuple[Point, ...] = (),
    action_points: tuple[Point, ...] = (
        Point("action", "setValue"),
        Point("pointType", "pump"),
        Point("value", 0),
    ),
    action_type: str = "action",
    now: int = 0,
) -> tuple[RuleRuntime, dict[str, str]]:
    return build_rule(
        NodePoints("rule-1", "rule", [Point("description", "dry soil"), *rule_points]),
        PARENT,
        [
            NodePoints("cond-1", "condition", cond_points),
            NodePoints("act-1", action_type, list(action_points)),
        ],
        now,
    )


HUMIDITY_BELOW_35 = [
    Point("conditionType", "pointValue"),
    Point("nodeID", SENSOR),
    Point("pointType", "humidity"),
    Point("operator", "<"),
    Point("value", 35),
]


def humidity(value: float, t: int) -> Point:
    return Point("humidity", value, time=t)


def test_transition_runs_action_once_and_writes_state() -> None:
    rule, errors = make_rule(HUMIDITY_BELOW_35)
    assert not any(errors.values())
    cond = rule.conditions[0]
    out = rule.on_point(cond, SENSOR, humidity(30, 10 * S), 10 * S)
    assert rule.active and [r.action.id for r in out.runs] == ["act-1"]
    assert out.runs[0].trigger is not None and out.runs[0].trigger.point.value == 30
    written = {node: {p.type: p.value for p in pts} for node, pts in out.writes}
    assert written["rule-1"] == {"active": True, "activeChanged": 10 * S}
    assert "cond-1" not in written  # no hold time: nothing a restart would need
    # Still dry, action still running: nothing new.
    assert rule.on_point(cond, SENSOR, humidity(29, 11 * S), 11 * S).runs == []
    # lastRun is the rule's, keyed by action, so one message carries all of a rule's state.
    assert rule.action_done("act-1", 10 * S) == Point("lastRun", 10 * S, key="act-1", origin="rule-1")
    assert rule.evaluate(12 * S).runs == []
    # Irrelevant points are ignored without evaluation.
    assert rule.on_point(cond, SENSOR, Point("temperature", 1), 13 * S).writes == []


def test_several_transitions_at_the_same_instant_each_run_their_action() -> None:
    """One committed batch can carry high, low, high for one sensor; all are seen at one `now`."""
    rule, _ = make_rule(HUMIDITY_BELOW_35)
    cond = rule.conditions[0]
    runs = []
    for value in (30, 50, 30):
        out = rule.on_point(cond, SENSOR, humidity(value, 5 * S), 5 * S)
        for run in out.runs:
            rule.action_done(run.action.id, run.run_ns)
        runs += out.runs
    assert len(runs) == 2 and rule.active  # act-1 on both activations (no actionInactive here)
    assert runs[1].run_ns > runs[0].run_ns and not runs[1].reminder


def test_min_active_hold_and_cancel() -> None:
    rule, _ = make_rule([*HUMIDITY_BELOW_35, Point("minActive", 60)])
    cond = rule.conditions[0]
    out = rule.on_point(cond, SENSOR, humidity(30, 0), 0)
    assert not rule.active and cond.hold_until_ns == 60 * S and out.runs == []
    assert out.writes == [
        ("cond-1", [Point("active", False, origin="cond-1"), Point("holdUntil", 60 * S, origin="cond-1")])
    ]
    assert rule.next_deadline_ns(0) == 60 * S
    rule.on_point(cond, SENSOR, humidity(40, S), S)  # back to normal: hold cancelled
    assert cond.hold_until_ns == 0 and rule.next_deadline_ns(S) is None
    rule.on_point(cond, SENSOR, humidity(30, 2 * S), 2 * S)
    assert rule.evaluate(61 * S).runs == [] and not rule.active
    out = rule.evaluate(62 * S)
    assert rule.active and len(out.runs) == 1


def test_min_inactive_delays_the_inactive_action() -> None:
    rule, _ = make_rule([*HUMIDITY_BELOW_35, Point("minInactive", 30)], action_type="actionInactive")
    cond = rule.conditions[0]
    rule.on_point(cond, SENSOR, humidity(30, S), S)
    assert rule.active
    out = rule.on_point(cond, SENSOR, humidity(50, 2 * S), 2 * S)
    assert rule.active and out.runs == []
    out = rule.evaluate(32 * S)
    assert not rule.active and [r.action.id for r in out.runs] == ["act-1"]


def test_repeat_interval_reminders_while_active() -> None:
    action = (Point("action", "notify"), Point("repeatInterval", 600))
    rule, _ = make_rule(HUMIDITY_BELOW_35, action_points=action)
    cond = rule.conditions[0]
    first = rule.on_point(cond, SENSOR, humidity(30, S), S).runs[0]
    assert not first.reminder
    rule.action_done("act-1", S)
    assert rule.next_deadline_ns(2 * S) == 601 * S
    assert rule.evaluate(600 * S).runs == []
    reminder = rule.evaluate(601 * S).runs
    assert len(reminder) == 1 and reminder[0].reminder


def test_blank_node_id_means_any_node_under_parent() -> None:
    points = [p for p in HUMIDITY_BELOW_35 if p.type != "nodeID"]
    rule, _ = make_rule(points)
    cond = rule.conditions[0]
    assert cond.watch.node == PARENT and cond.watch.subtree
    rule.on_point(cond, "sensor-a", humidity(30, 0), 0)
    rule.on_point(cond, "sensor-b", humidity(50, S), S)
    assert rule.active  # sensor-a is still dry
    rule.on_point(cond, "sensor-a", humidity(50, 2 * S), 2 * S)
    assert not rule.active


def _restarted_active(last_run_ns: int, action_points: list[Point]) -> RuleRuntime:
    """A rule rebuilt at 200 s from the points of one that went active at 100 s, its condition
    seeing the still-dry sensor again."""
    last_run = Point("lastRun", last_run_ns, key="act-1")
    state = [Point("active", True), Point("activeChanged", 100 * S), last_run]
    rule, _ = build_rule(
        NodePoints("rule-1", "rule", state),
        PARENT,
        [
            NodePoints("cond-1", "condition", [*HUMIDITY_BELOW_35, Point("active", True)]),
            NodePoints("act-1", "action", action_points),
        ],
        200 * S,
    )
    rule.conditions[0].evaluator.on_point(SENSOR, humidity(30, 0), 200 * S)  # type: ignore[union-attr]
    return rule


def test_restart_while_active_neither_refires_nor_forgets() -> None:
    # The action ran for this transition: a restart does nothing...
    rule = _restarted_active(100 * S, [Point("action", "notify"), Point("repeatInterval", 600)])
    assert rule.evaluate(200 * S).runs == []
    # ...but the reminder that was pending still comes, at its original time.
    assert rule.next_deadline_ns(200 * S) == 700 * S
    assert len(rule.evaluate(700 * S).runs) == 1
    # An action that had not run yet when the daemon died runs on restart.
    runs = _restarted_active(50 * S, [Point("action", "notify")]).evaluate(200 * S).runs
    assert len(runs) == 1 and not runs[0].reminder


def test_restart_in_the_middle_of_a_hold_keeps_the_deadline() -> None:
    cond_points = [*HUMIDITY_BELOW_35, Point("minActive", 60), Point("holdUntil", 160 * S)]
    rule, _ = make_rule(cond_points, now=130 * S)
    cond = rule.conditions[0]
    rule.on_point(cond, SENSOR, humidity(30, 0), 130 * S)
    assert cond.hold_until_ns == 160 * S  # not restarted at 130 + 60
    assert not rule.active
    assert rule.evaluate(160 * S).runs and rule.active


def test_invalid_condition_is_reported_and_never_active() -> None:
    rule, errors = make_rule([Point("pointType", "humidity"), Point("operator", "≈")])
    assert "operator '≈'" in errors["cond-1"]
    assert errors["rule-1"] == "" and errors["act-1"] == ""
    assert rule.evaluate(0).runs == [] and not rule.active


def test_an_action_read_before_its_points_never_runs() -> None:
    """A node is created edge first, points after: an action read in between has no points. It
    must not run as some default (a notify) when its rule fires; its points will reload the rule."""
    rule, errors = make_rule(HUMIDITY_BELOW_35, action_points=())
    assert errors["act-1"] == "action: Field required" and rule.actions == []
    out = rule.on_point(rule.conditions[0], SENSOR, humidity(20, S), S)
    assert rule.active and out.runs == []


def test_disabled_rule_does_nothing() -> None:
    rule, _ = make_rule(HUMIDITY_BELOW_35, rule_points=(Point("disabled", True),))
    out = rule.on_point(rule.conditions[0], SENSOR, humidity(1, 0), 0)
    assert out.runs == [] and out.writes == [] and rule.next_deadline_ns(0) is None


# ---- notifications ----


def test_notification_text_names_device_and_value() -> None:
    note = Notification("r", "Dry soil", "n", "Soil sensor 3", "humidity", "0", 31.5, 0)
    assert note.text == "Dry soil is active: Soil sensor 3 humidity = 31.5 at 1970-01-01T00:00:00+00:00"
    templated = Notification(
        "r", "Dry", "n", "S3", "humidity", "0", 31.5, 0, template="{node}: {value}% {nope}"
    )
    assert templated.text == "S3: 31.5% {nope}"
    assert note.to_json()["nodeDescription"] == "Soil sensor 3"


def test_msg_service_config_errors() -> None:
    _, error = try_decode_config(MsgServiceConfig, [Point("service", "webhook"), Point("url", "ftp://x")])
    assert "must start with http://" in error
    _, error = try_decode_config(MsgServiceConfig, [Point("service", "smtp")])
    assert "needs host and from" in error
    smtp = [Point("service", "smtp"), Point("host", "h"), Point("from", "a@b")]
    config, _ = try_decode_config(MsgServiceConfig, smtp)
    assert config is not None and config.sender == "a@b"
