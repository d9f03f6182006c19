"""The one decoder from a node's points to its typed config (siot/nodes/config.py), which every
node type uses: map fields from keyed points, key "0" for the rest, tombstones restore defaults,
and every refusal is a `ConfigError` naming the field."""

from __future__ import annotations

import pytest
from pydantic import Field

from siot.nodes.config import (
    ConfigError,
    Duration,
    NodeConfig,
    decode_config,
    keyed_points,
    point_fields,
    try_decode_config,
)
from siot.nodes.ingest.config import IngestConfig
from siot.nodes.manager import ManagedConfig
from siot.nodes.notify.config import MsgServiceConfig
from siot.nodes.rules.config import ConditionConfig, RuleConfig
from siot.points import Point
from siot.sync.service import SyncNodeConfig


class Pump(NodeConfig):
    speed: float = 1.0
    hold_s: Duration(0, 60) = Field(0.0, alias="hold")  # type: ignore[valid-type]
    tags: dict[str, str] = Field(default_factory=dict, alias="tag")


def test_keyed_points_are_maps_and_the_rest_take_key_0() -> None:
    points = [
        Point("speed", 2.5),
        Point("speed", 9.0, key="1"),  # not key "0" of a scalar field: not this field's value
        Point("tag", "x", key="color"),
        Point("tag", "y", key="size"),
        Point("hold", 5, tombstone=1),  # deleted: the default comes back
        Point("other", "ignored"),
    ]
    config = decode_config(Pump, points)
    assert (config.speed, config.hold_s, config.tags) == (2.5, 0.0, {"color": "x", "size": "y"})
    assert point_fields(points, keyed=("tag",)) == {
        "speed": 2.5,
        "tag": {"color": "x", "size": "y"},
        "other": "ignored",
    }


def test_map_fields_are_found_by_alias_and_name_on_every_node_type() -> None:
    assert keyed_points(Pump) == {"tags", "tag"}
    assert {"weekday", "date"} <= keyed_points(ConditionConfig)
    assert {"to", "header"} <= keyed_points(MsgServiceConfig)
    assert {"field", "tag"} <= keyed_points(IngestConfig)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([Point("speed", "fast")], "speed: Input should be a valid number"),
        ([Point("hold", 61)], "hold: 61 s is out of range"),  # an int, as JSON sends it
        ([Point("hold", 61.5)], "hold: 61.5 s is out of range"),
        ([Point("speed", 1e308 * 10)], "speed: "),  # infinity: no NaN or inf in any float field
    ],
)
def test_refusals_name_the_field(points: list[Point], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        decode_config(Pump, points)
    config, error = try_decode_config(Pump, points)
    assert config is None and error.startswith(message)


def test_what_the_tree_knows_comes_first_and_points_may_override_it() -> None:
    config = decode_config(SyncNodeConfig, [Point("uri", "nats://cloud:4222")], id="n1", parent="root1")
    assert (config.id, config.parent, config.uri, config.disabled) == (
        "n1",
        "root1",
        "nats://cloud:4222",
        False,
    )
    moved = decode_config(SyncNodeConfig, [Point("parent", "group7")], id="n1", parent="root1")
    assert moved.parent == "group7"
    assert issubclass(SyncNodeConfig, ManagedConfig) and issubclass(RuleConfig, NodeConfig)


def test_configs_are_immutable() -> None:
    config = decode_config(Pump, [])
    with pytest.raises(ValueError, match="frozen"):
        config.speed = 3.0  # type: ignore[misc]
