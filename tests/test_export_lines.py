"""Line protocol encoding and the `db` node's config, without a database (the real InfluxDB reads
these lines back in tests/test_export_influx.py)."""

from __future__ import annotations

import pytest

from siot.nodes.config import ConfigError, decode_config
from siot.nodes.export import DbConfig, WriteApi
from siot.nodes.export.config import redact_url
from siot.nodes.export.lines import field, series_key
from siot.nodes.export.tags import SeriesKeys
from siot.points import Point
from siot.store import Store


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (21.5, "value=21.5"),
        (3.0, "value=3.0"),
        (1e20, "value=1e+20"),
        (21, "valueInt=21i"),
        (-(2**63), f"valueInt={-(2**63)}i"),
        (True, "valueBool=true"),
        (False, "valueBool=false"),
        ('say "hi" \\ bye\nnext', 'valueText="say \\"hi\\" \\\\ bye\nnext"'),
        ([1, {"b": 2, "a": b"\x01"}], 'valueText="[1,{\\"a\\":\\"01\\",\\"b\\":2}]"'),
        (None, None),
        (b"\x00", None),
    ],
)
def test_each_value_kind_has_its_own_field(value: object, expected: str | None) -> None:
    assert field(value) == expected


def test_series_key_escapes_and_sorts_tags() -> None:
    key = series_key("flow rate,x", {"z": "last", "a b": "c=d", "empty": "", "nl": "one\ntwo", "end": "c:\\"})
    assert key == "flow\\ rate\\,x,a\\ b=c\\=d,end=c:/,nl=one\\ two,z=last"
    assert series_key("p", {"path": "c:\\data"}) == "p,path=c:\\data"  # a plain backslash is kept


def test_config_picks_the_api_and_refuses_ambiguity() -> None:
    v1 = decode_config(DbConfig, [Point("url", "http://h:8086/"), Point("database", "d")], id="n", parent="p")
    assert v1.api is WriteApi.V1 and v1.url == "http://h:8086"
    v2 = decode_config(
        DbConfig,
        [Point("url", "http://h:8428"), Point("bucket", "b"), Point("org", "o"), Point("token", "secret")],
        id="n",
        parent="p",
    )
    assert v2.api is WriteApi.V2
    assert "secret" not in repr(v2) and "secret" not in str(v2)
    with pytest.raises(ConfigError, match="either 'database'"):
        decode_config(
            DbConfig,
            [Point("url", "http://h"), Point("database", "d"), Point("bucket", "b")],
            id="n",
            parent="p",
        )
    with pytest.raises(ConfigError, match="not an http"):
        decode_config(DbConfig, [Point("url", "influx:8086"), Point("database", "d")], id="n", parent="p")
    filtered = decode_config(
        DbConfig,
        [Point("nodeTypes", "device, sensor"), Point("pointTypes", "pressure viscosity")],
        id="n",
        parent="p",
    )
    assert filtered.node_types == {"device", "sensor"} and filtered.point_types == {"pressure", "viscosity"}


def test_redact_url_drops_credentials() -> None:
    assert redact_url("http://user:pw@influx:8086/x") == "http://influx:8086/x"
    assert redact_url("http://influx:8086") == "http://influx:8086"


async def test_nearest_metadata_wins(store: Store) -> None:
    root = store.root_id
    for parent, node, node_type in (
        (root, "site", "group"),
        ("site", "line", "group"),
        ("line", "dev", "device"),
    ):
        await store.submit(node, [Point("nodeType", node_type)], parent=parent)
    await store.submit("site", [Point("tag", "Acme", key="manufacturer"), Point("tag", "PV", key="family")])
    await store.submit("line", [Point("tag", "PV-2", key="family"), Point("tag", "x", key="id")])
    await store.submit("dev", [Point("description", "tank 2"), Point("tag", "C-7", key="component_id")])
    await store.submit("dev", [Point("tag", "gone", key="old", tombstone=1)])
    keys = SeriesKeys(store)
    tags = await keys.node_tags("dev")
    assert tags == {
        "manufacturer": "Acme",
        "family": "PV-2",  # the line's overrides the site's
        "component_id": "C-7",
        "id": "dev",  # built-in tags override a `tag` point of the same name
        "nodeType": "device",
        "description": "tank 2",
    }
    assert await keys.key("dev", "pressure", "0") == (
        "pressure,component_id=C-7,description=tank\\ 2,family=PV-2,id=dev,key=0,"
        "manufacturer=Acme,nodeType=device"
    )
