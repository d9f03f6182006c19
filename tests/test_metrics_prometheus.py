"""A real Prometheus (Debian's `prometheus`) scrapes a real `siot serve`'s /metrics, behind its
`--metrics-token`, and PromQL returns the accepted-points counter `siot stats` shows; the alert
rules of docs/prometheus/siot-alerts.yml pass `promtool check rules` and `promtool test rules`."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from export_support import until
from support import SiotProcess, connected, free_port, running

from siot.cmd import debian_packages
from siot.cmd.tsdb_servers import PrometheusServer
from siot.points import Point

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "scrape-token-1"


def test_prometheus_scrapes_what_siot_stats_says(tmp_path: Path) -> None:
    with running(tmp_path / "siot", http_port=free_port(), extra_args=["--metrics-token", TOKEN]) as proc:
        accepted = asyncio.run(_write_points(proc))
        target = f"127.0.0.1:{proc.http_port}"
        with PrometheusServer(tmp_path / "prometheus", targets=[target], bearer_token=TOKEN) as prometheus:

            async def scraped() -> bool:
                result = await asyncio.to_thread(prometheus.query, 'siot_points_accepted_total{job="siot"}')
                return bool(result) and float(result[0]["value"][1]) == accepted

            asyncio.run(until(scraped))
            [up] = prometheus.query('up{job="siot"}')
            assert up["value"][1] == "1"
            [rss] = prometheus.query('process_resident_memory_bytes{job="siot"}')
            assert float(rss["value"][1]) > 0


async def _write_points(proc: SiotProcess) -> int:
    async with connected(proc) as client:
        device = await client.create_node(client.root_id, "device", [Point("description", "pv")])
        for i in range(20):
            await client.send_points(device, [Point("pressure", 800.0 + i)])
        return int((await client.stats())["acceptedPoints"])


def test_alert_rules_check_and_fire_as_documented() -> None:
    promtool = str(Path(debian_packages.require("prometheus")).with_name("promtool"))
    rules = ROOT / "docs" / "prometheus" / "siot-alerts.yml"
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = ROOT / "tests" / "prometheus"
    tested = subprocess.run(
        [promtool, "test", "rules", "siot-alerts.test.yml"], capture_output=True, text=True, cwd=tests
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
