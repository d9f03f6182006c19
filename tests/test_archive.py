"""Raw archive: day files per subject, their contents, rotation and retention."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgpack
from support import free_port

from siot.app import App, ServeConfig
from siot.client import Client
from siot.nodes.archive import ArchiveWriter
from siot.points import Point

DAY_NS = 86_400 * 10**9
T0 = 1_598_536_072 * 10**9  # 2020-08-27T13:47:52Z


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writer_rotates_by_day_and_prunes(tmp_path: Path) -> None:
    now = [T0]
    writer = ArchiveWriter(tmp_path, clock=lambda: now[0])
    first = writer.write("/.pressure.data", b'{"pressure": 812}')
    writer.write("/.pressure.data", msgpack.packb({"raw": b"\x01"}))
    now[0] += DAY_NS
    second = writer.write("/.pressure.data", b"\xc1not-decodable")
    writer.flush()
    assert first == tmp_path / "%2F.pressure.data" / "2020-08-27.jsonl"
    assert second.name == "2020-08-28.jsonl"
    a, b = lines(first)
    assert a == {
        "time": "2020-08-27T13:47:52Z",
        "timeNs": T0,
        "subject": "/.pressure.data",
        "encoding": "json",
        "payload": {"pressure": 812},
    }
    assert b["encoding"] == "msgpack" and b["payload"] == {"raw": "AQ=="}
    assert lines(second)[0]["encoding"] == "base64"
    now[0] += 2 * DAY_NS
    assert writer.prune(retention_days=2) == [first]
    assert second.exists()
    writer.close()


async def test_archive_node_writes_what_it_sees(tmp_path: Path) -> None:
    config = ServeConfig(data_dir=tmp_path / "data", nats_port=free_port(), monitor_port=0)
    async with App(config) as app, await Client.connect(app.context.broker_url) as client:
        await client.load_root()
        archive = await client.create_node(client.root_id, "archive", [Point("topic", "sensors/#")])
        folder = tmp_path / "data" / "archive" / "sensors.soil3"
        async with asyncio.timeout(10):
            while not folder.exists():  # retried until the runner has subscribed
                await client.nc.publish("sensors.soil3", b'{"humidity": 29}')
                await client.nc.flush()
                await asyncio.sleep(0.05)
        await client.delete_node(archive, client.root_id)  # stopping the runner flushes its files
        async with asyncio.timeout(10):
            while True:  # the manager stops the runner after it sees the deletion
                files = list(folder.glob("*.jsonl"))
                if files and files[0].read_text():
                    break
                await asyncio.sleep(0.05)
        first = lines(files[0])[0]
        assert first["subject"] == "sensors.soil3" and first["payload"] == {"humidity": 29}
