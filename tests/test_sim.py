"""`siot sim` against a real `siot serve`: every acknowledged point ends up in the store."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

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
    try:

        async def setup() -> str:
            async with await Client.connect(proc.url, reconnect_forever=False) as client:
                await client.load_root()
                fields = [
                    Point("topic", "sensors/+"),
                    Point("deviceField", "name"),
                    Point("timeField", "timeStampEpoch"),
                ]
                return await client.create_node(client.root_id, "ingest", fields)

        ingest = asyncio.run(setup())
        args = ["--transport", "mqtt", "--mqtt-port", str(mqtt_port), "--mode", "raw", "--preset", "soil"]
        summary = run_sim(*args, "-n", "3", "--count", "5", "--rate", "20", "--seed", "3")
        assert summary["acked"] == 15 and summary["errors"] == 0

        async def stored() -> int:
            async with await Client.connect(proc.url, reconnect_forever=False) as client:
                async with asyncio.timeout(20):
                    while True:
                        kids = await client.children(ingest)
                        count = sum([len(await client.history(k.id, "humidity")) for k in kids])
                        if count >= 15:
                            assert sorted(k.description for k in kids) == sorted(summary["device_ids"])
                            return count
                        await asyncio.sleep(0.05)

        assert asyncio.run(stored()) == summary["points_acked"] == 15
    finally:
        proc.stop()
