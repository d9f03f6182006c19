"""`siot sim` against a real `siot serve`: every acknowledged point ends up in the store."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from ingest_support import wait_listening
from support import SIOT_BIN, SiotProcess, free_port

from siot.client import Client
from siot.points import Point


def run_sim(*args: str) -> dict:
    done = subprocess.run([SIOT_BIN, "sim", "--json", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def total_points(url: str, devices: list[str], ptype: str) -> int:
    async with await Client.connect(url, reconnect_forever=False) as client:
        return sum([len(await client.history(d, ptype)) for d in devices])


def test_sim_points_over_nats_every_ack_is_stored(siot_process: SiotProcess) -> None:
    summary = run_sim("--url", siot_process.url, "-n", "5", "--count", "4", "--rate", "0", "--seed", "7")
    assert summary["messages_sent"] == 20 and summary["acked"] == 20 and summary["errors"] == 0
    stored = asyncio.run(total_points(siot_process.url, summary["device_ids"], "temperature"))
    assert stored == summary["points_acked"] == 20


def test_sim_raw_soil_over_mqtt_through_ingest(tmp_path: Path) -> None:
    mqtt_port = free_port()
    proc = SiotProcess(data_dir=tmp_path / "d", env={"SIOT_MQTT_PORT": str(mqtt_port)}).start()
    args = ["--transport", "mqtt", "--mqtt-port", str(mqtt_port), "--mode", "raw", "--preset", "soil"]

    async def scenario() -> tuple[dict, int]:
        async with await Client.connect(proc.url, reconnect_forever=False) as client:
            await client.load_root()
            fields = [
                Point("topic", "sensors/+"),
                Point("deviceField", "name"),
                Point("timeField", "timeStampEpoch"),
            ]
            ingest = await client.create_node(client.root_id, "ingest", fields)
            await wait_listening(client, ingest)
            async with client.changes(ingest) as changes:
                sim = asyncio.create_task(
                    asyncio.to_thread(
                        run_sim, *args, "-n", "3", "--count", "5", "--rate", "20", "--seed", "3"
                    )
                )
                committed = 0
                async with asyncio.timeout(30):
                    while committed < 15:  # every humidity point committed under the ingest node
                        change = await changes.get()
                        committed += sum(p.type == "humidity" for p in change.points)
                summary = await sim
            kids = await client.children(ingest)
            assert sorted(k.description for k in kids) == sorted(summary["device_ids"])
            stored = sum([len(await client.history(k.id, "humidity")) for k in kids])
            return summary, stored

    try:
        summary, stored = asyncio.run(scenario())
        assert summary["acked"] == 15 and summary["errors"] == 0
        assert stored == summary["points_acked"] == 15
    finally:
        proc.stop()


def test_bench_mqtt_counts_every_message_committed() -> None:
    """A small `siot bench mqtt` (its own instance): both paths commit every message they sent."""
    args = [SIOT_BIN, "bench", "mqtt", "--devices", "5", "--messages", "100", "--json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["raw_publish_msgs_s"] > 0 and report["log_errors"] == 0
    for run in report["runs"]:
        assert run["sent"] == run["committed"] == 100 and run["errors"] == 0
