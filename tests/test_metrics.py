"""/metrics (siot/metrics.py, siot/http/metrics.py): the text format parsed back with
prometheus-client's own parser, the figures equal to `siot stats`, names per Prometheus's
conventions, no secret in any label, and the optional bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from export_support import until
from prometheus_client.parser import text_string_to_metric_families
from rules_support import make_rule, wait_point
from support import free_port, serve_config

from siot import metrics
from siot.app import App
from siot.client import Client
from siot.points import Point

SECRET = "s3cret-token-value"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def _with_exporter(client: Client) -> dict[str, Any] | None:
    stats = await client.stats()
    return stats if stats["export"] else None


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    async with App(serve_config(tmp_path, http_port=free_port())) as running:
        yield running


async def test_collector_output_matches_siot_stats(app: App) -> None:
    assert app.context is not None
    async with await Client.connect(app.context.broker_url) as client:
        await client.load_root()
        device = await client.create_node(client.root_id, "device", [Point("description", "pv")])
        await client.send_points(device, [Point("pressure", 812.5), Point("secretish", SECRET)])
        with pytest.raises(Exception, match="unknown node"):
            await client.send_points("nope", [Point("pressure", 1.0)])
        await client.create_node(
            client.root_id,
            "db",
            [Point("url", "http://127.0.0.1:9"), Point("database", "d"), Point("password", SECRET)],
        )
        stats = await until(lambda: _with_exporter(client))
        text = metrics.render(metrics.registry(app.context)).decode()
    found = samples(text)
    assert value(found, "siot_points_accepted_total") == stats["acceptedPoints"] > 0
    assert value(found, "siot_rejected_requests_total", reason="unknown_node") == 1
    assert value(found, "siot_rejected_requests_total", reason="store_busy") == 0
    assert value(found, "siot_commits_total") == stats["commits"]
    assert value(found, "siot_log_last_seq") == stats["lastSeq"]
    assert value(found, "siot_wal_bytes") > 0
    assert value(found, "siot_nats_server_up") == 1
    assert value(found, "siot_nats_server_restarts_total") == 0
    assert value(found, "siot_rule_evaluations_total") == 0
    assert value(found, "siot_notifications_sent_total") == 0
    assert value(found, "process_resident_memory_bytes") > 0
    assert value(found, "process_cpu_seconds_total") > 0
    [db] = stats["export"]
    assert ("siot_export_lag_rows", (("node", db),)) in found
    assert SECRET not in text  # no value, no password, in any label
    for name, _ in found:
        assert name.startswith(("siot_", "process_")), name


async def test_http_metrics_public_or_behind_the_token(tmp_path: Path) -> None:
    port = free_port()
    async with App(serve_config(tmp_path, http_port=port, metrics_token=SECRET)):
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 401
            async with session.get(url, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
            async with session.get(url, headers={"Authorization": f"Bearer {SECRET}"}) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert "siot_points_accepted_total" in await response.text()


async def test_http_metrics_public_without_a_token(app: App) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{app.config.http_port}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    assert value(samples(text), "siot_ready") == 1


async def test_rule_and_notification_counters(app: App) -> None:
    """A rule that fires a setValue and a notify (no msgService above it: a failed notification)
    shows in siot_rule_* and siot_notifications_failed_total."""
    assert app.context is not None
    async with await Client.connect(app.context.broker_url) as client:
        root = await client.load_root()
        device = await client.create_node(root, "device", [Point("description", "pv")])
        target = await client.create_node(root, "device", [Point("description", "valve")])
        await make_rule(
            client,
            root,
            "high pressure",
            [{"nodeID": device, "pointType": "pressure", "operator": ">", "value": 900}],
            [{"action": "setValue", "nodeID": target, "pointType": "open", "value": 1}, {"action": "notify"}],
        )
        await client.send_points(device, [Point("pressure", 950.0)])
        await wait_point(client, target, "open", lambda v: v == 1)

        async def notified() -> dict[str, Any] | None:
            rules = (await client.stats())["rules"]
            return rules if rules["notificationsFailed"] else None

        stats = await until(notified)
    found = samples(metrics.render(metrics.registry(app.context)).decode())
    assert value(found, "siot_rules_loaded") == stats["loaded"] == 1
    assert value(found, "siot_rule_evaluations_total") >= stats["evaluations"] >= 1
    assert value(found, "siot_rule_actions_total") == stats["actionsRun"] == 2
    assert value(found, "siot_notifications_failed_total") == 1
    assert value(found, "siot_notifications_sent_total") == 0
