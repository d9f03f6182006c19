"""Rules against a real `siot serve` (real nats-server, real SQLite): the built-in rules manager,
notifications to a real SMTP server and a real HTTP server, and bad config as error points."""

from __future__ import annotations

import pytest
from rules_support import make_rule, smtp_server, wait_cleared, wait_point, webhook_server

from siot.client import Client
from siot.points import Point


async def test_seed_scenario_dry_soil_sends_email_with_device_and_value(siot: Client) -> None:
    """A simulated soil sensor reports humidity; below 35 an email names the device and value."""
    with smtp_server() as (mailbox, port):
        root = siot.root_id
        await siot.create_node(
            root,
            "msgService",
            [
                Point("service", "smtp"),
                Point("host", "127.0.0.1"),
                Point("port", port),
                Point("tls", "none"),
                Point("from", "siot@farm.example"),
            ],
        )
        await siot.create_node(root, "user", [Point("firstName", "Ana"), Point("email", "ana@farm.example")])
        sensor = await siot.create_node(root, "device", [Point("description", "Soil sensor 3")])
        rule, _, (action,) = await make_rule(
            siot,
            root,
            "Dry soil",
            [{"nodeID": sensor, "pointType": "humidity", "operator": "<", "value": 35}],
            [{"action": "notify"}],
        )
        await siot.send_points(sensor, [Point("humidity", 41.0)])
        await siot.send_points(sensor, [Point("humidity", 31.5)])
        mail = await mailbox.get()
        assert mail["To"] == "ana@farm.example"
        body = mail.get_payload(decode=True).decode()  # undo quoted-printable line folding
        assert "Soil sensor 3" in body and "31.5" in body and "Dry soil" in body
        assert "Soil sensor 3" in mail["Subject"]
        await wait_point(siot, rule, "active", lambda v: v is True)
        await wait_point(siot, rule, "lastRun", lambda v: v > 0, key=action)
        log = await siot.history(rule, "notification")
        assert len(log) == 1
        assert log[0].value["ok"] is True and log[0].value["to"] == ["ana@farm.example"]
        assert log[0].value["value"] == 31.5 and log[0].origin == action


async def test_each_value_type_fires_set_value(siot: Client) -> None:
    root = siot.root_id
    device = await siot.create_node(root, "device", [Point("description", "tank")])
    target = await siot.create_node(root, "device", [Point("description", "alarms")])
    cases = [
        ("level", {"valueType": "number", "operator": ">=", "value": 90}, 90),
        ("pump", {"valueType": "onOff", "operator": "on"}, True),
        ("door", {"valueType": "onOff", "operator": "=", "value": False}, 0),
        ("state", {"valueType": "text", "operator": "contains", "value": "fault"}, "pump fault E42"),
        ("mode", {"valueType": "text", "operator": "!=", "value": "auto"}, "manual"),
    ]
    for ptype, cond, _ in cases:
        await make_rule(
            siot,
            root,
            f"{ptype} rule",
            [{"nodeID": device, "pointType": ptype, **cond}],
            [{"action": "setValue", "nodeID": target, "pointType": f"hit-{ptype}", "value": 1}],
        )
    await siot.send_points(device, [Point(ptype, value) for ptype, _, value in cases])
    for ptype, _, _ in cases:
        assert await wait_point(siot, target, f"hit-{ptype}", lambda v: v == 1) == 1


async def test_blank_node_id_watches_any_node_under_the_rule_parent(siot: Client) -> None:
    farm = await siot.create_node(siot.root_id, "group", [Point("description", "farm")])
    field_node = await siot.create_node(farm, "group", [Point("description", "north field")])
    sensor = await siot.create_node(field_node, "device", [Point("description", "probe 7")])
    alarms = await siot.create_node(siot.root_id, "device")
    await make_rule(
        siot,
        farm,
        "any dry probe",
        [{"pointType": "humidity", "operator": "<", "value": 35}],
        [{"action": "setValue", "nodeID": alarms, "pointType": "dry", "value": "probe"}],
    )
    await siot.send_points(sensor, [Point("humidity", 20)])
    assert await wait_point(siot, alarms, "dry", lambda v: v == "probe") == "probe"


async def test_set_value_chains_into_another_rule(siot: Client) -> None:
    root = siot.root_id
    sensor = await siot.create_node(root, "device")
    pump = await siot.create_node(root, "device", [Point("description", "pump")])
    panel = await siot.create_node(root, "device")
    await make_rule(
        siot,
        root,
        "pump when dry",
        [{"nodeID": sensor, "pointType": "humidity", "operator": "<", "value": 35}],
        [{"action": "setValue", "nodeID": pump, "pointType": "run", "value": True}],
        [{"action": "setValue", "nodeID": pump, "pointType": "run", "value": False}],
    )
    await make_rule(
        siot,
        root,
        "show pumping",
        [{"nodeID": pump, "pointType": "run", "valueType": "onOff", "operator": "on"}],
        [{"action": "setValue", "nodeID": panel, "pointType": "status", "value": "pumping"}],
        [{"action": "setValue", "nodeID": panel, "pointType": "status", "value": "idle"}],
    )
    await siot.send_points(sensor, [Point("humidity", 10)])
    await wait_point(siot, panel, "status", lambda v: v == "pumping")
    await siot.send_points(sensor, [Point("humidity", 60)])
    await wait_point(siot, panel, "status", lambda v: v == "idle")


async def test_anomaly_on_a_synthetic_series(siot: Client) -> None:
    root = siot.root_id
    sensor = await siot.create_node(root, "device")
    out = await siot.create_node(root, "device")
    await make_rule(
        siot,
        root,
        "odd pressure",
        [
            {
                "conditionType": "anomaly",
                "nodeID": sensor,
                "pointType": "pressure",
                "threshold": 4,
                "minSamples": 20,
            }
        ],
        [{"action": "setValue", "nodeID": out, "pointType": "anomaly", "value": 1}],
    )
    series = [1013.0 + 0.4 * ((i * 7) % 5 - 2) for i in range(40)]
    for value in series:
        await siot.send_points(sensor, [Point("pressure", value)])
    await siot.send_points(sensor, [Point("pressure", 1030.0)])
    await wait_point(siot, out, "anomaly", lambda v: v == 1)
    hits = await siot.history(out, "anomaly")
    assert len(hits) == 1


async def test_webhook_retries_then_delivers_json(siot: Client) -> None:
    with webhook_server(fail_first=2) as (hook, url):
        root = siot.root_id
        service = await siot.create_node(
            root,
            "msgService",
            [
                Point("service", "webhook"),
                Point("url", url),
                Point("header", "s3cret", key="X-Token"),
                Point("backoff", 0.01),
            ],
        )
        sensor = await siot.create_node(root, "device", [Point("description", "freezer")])
        rule, _, (action,) = await make_rule(
            siot,
            root,
            "Freezer warm",
            [{"nodeID": sensor, "pointType": "temp", "operator": ">", "value": -10}],
            [{"action": "notify", "nodeID": service}],
        )
        await siot.send_points(sensor, [Point("temp", -4.5)])
        headers, body = await hook.get()
        assert headers["X-Token"] == "s3cret"
        assert body["rule"] == rule and body["ruleDescription"] == "Freezer warm"
        assert body["node"] == sensor and body["nodeDescription"] == "freezer"
        assert body["point"] == "temp" and body["value"] == -4.5 and body["time"] > 0
        record = await wait_point(siot, rule, "notification", lambda v: v["ok"], key=service)
        assert record["attempts"] == 3 and record["kind"] == "webhook"
        await wait_point(siot, rule, "lastRun", lambda v: v > 0, key=action)


# the webhook answers 503 to every attempt: giving up on a notification is an error to report
@pytest.mark.expect_errors(
    r"ERROR siot\.nodes\.notify\.deliver: notify: giving up on \S+ after 2 attempt\(s\): "
    r"webhook http://127\.0\.0\.1:\d+/hook: HTTP 503$"
)
async def test_failed_delivery_is_recorded_and_becomes_an_error_point(siot: Client) -> None:
    with webhook_server(fail_first=100) as (_, url):
        root = siot.root_id
        await siot.create_node(
            root,
            "msgService",
            [Point("service", "webhook"), Point("url", url), Point("retries", 1), Point("backoff", 0.01)],
        )
        sensor = await siot.create_node(root, "device")
        rule, _, (action,) = await make_rule(
            siot,
            root,
            "r",
            [{"nodeID": sensor, "pointType": "t", "operator": ">", "value": 0}],
            [{"action": "notify"}],
        )
        await siot.send_points(sensor, [Point("t", 1)])
        message = await wait_point(siot, action, "error", lambda v: bool(v))
        assert "HTTP 503" in message
        (entry,) = await siot.history(rule, "notification")
        assert entry.value["ok"] is False and entry.value["attempts"] == 2


async def test_bad_config_becomes_an_error_point_and_clears_when_fixed(siot: Client) -> None:
    root = siot.root_id
    sensor = await siot.create_node(root, "device")
    out = await siot.create_node(root, "device")
    _, (cond,), _ = await make_rule(
        siot,
        root,
        "typo",
        [{"nodeID": sensor, "pointType": "t", "operator": "=>", "value": 5}],
        [{"action": "setValue", "nodeID": out, "pointType": "hit", "value": 1}],
    )
    message = await wait_point(siot, cond, "error", lambda v: bool(v))
    assert "operator '=>' is not valid" in message
    await siot.send_points(cond, [Point("operator", ">=")])
    await wait_cleared(siot, cond, "error")
    await siot.send_points(sensor, [Point("t", 5)])
    await wait_point(siot, out, "hit", lambda v: v == 1)
