"""Raw archive: day files per subject, their contents, rotation and retention."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
from ingest_support import wait_listening, wait_point
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
        await wait_listening(client, archive)
        await client.nc.publish("sensors.soil3", b'{"humidity": 29}')
        await client.delete_node(archive, client.root_id)
        # `stopped` is written after the runner has handled what arrived and flushed its files
        await wait_point(client, archive, "state", "stopped")
        [day_file] = (tmp_path / "data" / "archive" / "sensors.soil3").glob("*.jsonl")
        [first] = lines(day_file)
        assert first["subject"] == "sensors.soil3" and first["payload"] == {"humidity": 29}
