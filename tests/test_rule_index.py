"""The rules engine's dependency index (nodes/rules/index.py), without a daemon: a point reaches
exactly the conditions that depend on it, and the engine's own nodes are told from devices."""

from __future__ import annotations

from siot.nodes.rules import NodePoints, build_rule
from siot.nodes.rules.index import RuleIndex
from siot.nodes.rules.rule import RuleRuntime
from siot.points import Point

NOW = 1_700_000_000 * 10**9


def rule(rule_id: str, parent: str, *conditions: dict[str, object]) -> RuleRuntime:
    children = [
        NodePoints(f"{rule_id}-c{i}", "condition", [Point(k, v) for k, v in fields.items()])
        for i, fields in enumerate(conditions)
    ]
    runtime, errors = build_rule(NodePoints(rule_id, "rule", []), parent, children, NOW)
    assert not any(errors.values()), errors
    return runtime


def test_a_named_node_and_a_watched_subtree_each_reach_their_conditions() -> None:
    index = RuleIndex()
    named = rule("r1", "farm", {"nodeID": "sensor", "pointType": "t", "operator": ">", "value": 1})
    anywhere = rule("r2", "farm", {"pointType": "t", "operator": ">", "value": 1})  # blank nodeID
    index.add(named, ["r1-c0"])
    index.add(anywhere, ["r2-c0"])

    assert [(r.id, c.id) for r, c in index.naming("sensor")] == [("r1", "r1-c0")]
    assert index.naming("other") == []
    # a point of a device under the farm, delivered for the farm: the subtree condition only
    assert [r.id for r, _ in index.under("farm", "probe7")] == ["r2"]
    assert index.under("elsewhere", "probe7") == []
    assert index.watches_node("sensor") and index.watches_subtree("farm")
    assert [r.id for r, _ in index.depends_on("sensor", "sensor")] == ["r1"]


def test_the_engines_own_nodes_are_owned_and_never_a_device_under_a_watched_subtree() -> None:
    index = RuleIndex()
    anywhere = rule("r2", "farm", {"pointType": "t", "operator": ">", "value": 1})
    index.add(anywhere, ["r2-c0", "r2-a0"])
    assert index.owner("r2") == "r2" and index.owner("r2-a0") == "r2" and index.owner("probe") is None
    assert index.under("farm", "r2-c0") == []  # the rule's own children live under the farm too
    index.own("broken", "broken")  # a rule that failed to load still owns its error writes
    assert index.owned("broken")


def test_removing_a_rule_forgets_what_it_owned_and_watched_and_keeps_the_others() -> None:
    index = RuleIndex()
    first = rule("r1", "farm", {"nodeID": "sensor", "pointType": "t", "operator": ">", "value": 1})
    second = rule("r3", "farm", {"nodeID": "sensor", "pointType": "h", "operator": "<", "value": 9})
    index.add(first, ["r1-c0"])
    index.add(second, ["r3-c0"])
    index.remove("r1", first)
    assert [r.id for r, _ in index.naming("sensor")] == ["r3"]
    assert index.owner("r1") is None and index.owner("r1-c0") is None and index.owner("r3-c0") == "r3"
    index.remove("r3", second)
    assert not index.watches_node("sensor")
