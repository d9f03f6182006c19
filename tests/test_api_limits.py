"""Floods against a real daemon: the store's queue is bounded (busy, not unbounded memory), and a
flood of bad input is counted without growing the counter or the log without limit."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
from support import SiotProcess
from sync_support import until

from siot.api import ERROR_LOG_BURST, MAX_ERROR_KEYS, OTHER_ERRORS_KEY
from siot.client import Client
from siot.codec import encode
from siot.errors import RequestFailed
from siot.points import Point

FLOOD = 20_000
BAD_INPUTS = MAX_ERROR_KEYS + 2_000


async def test_a_fire_and_forget_flood_is_dropped_and_counted_not_queued(tmp_path: Path) -> None:
    proc = await asyncio.to_thread(
        SiotProcess(data_dir=tmp_path / "d", extra_args=["--max-queued-points", "200"]).start
    )
    try:
        async with await Client.connect(proc.url, reconnect_forever=False) as client:
            await client.load_root()
            node = await client.create_node(client.root_id, "device")
            flooder = await nats.connect(proc.url)
            batch = encode([{"type": "v", "value": i} for i in range(50)])
            for _ in range(FLOOD // 50):  # one million points if all were taken
                await flooder.publish(f"p.{node}", batch)
            await flooder.flush()
            # A writer that gets "busy" retries and gets through; nobody waits without an answer.
            for attempt in range(200):
                try:
                    await client.send_points(node, [Point("probe", attempt)])
                    break
                except RequestFailed as exc:
                    assert "busy" in str(exc) and "retry in a moment" in str(exc)
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the probe write never got through")
            await flooder.close()
            stats = await client.stats()
            assert stats["busyDropped"] > 0
            assert stats["errors"] == {}  # busy is not bad input
            assert "busy:" in proc.log()
    finally:
        proc.stop()


async def test_a_flood_of_bad_input_keeps_counters_and_log_bounded(
    siot_process: SiotProcess, siot: Client
) -> None:
    sender = await nats.connect(siot_process.url)
    try:
        for _ in range(BAD_INPUTS):
            await sender.publish(f"p.{uuid.uuid4()}", b"\xc1")  # garbage, each to a new node id
        await sender.flush()
    finally:
        await sender.close()

    async def all_counted() -> bool:
        return sum((await siot.stats())["errors"].values()) >= BAD_INPUTS

    await until(all_counted, timeout_s=30)
    errors = (await siot.stats())["errors"]
    assert sum(errors.values()) == BAD_INPUTS
    assert len(errors) == MAX_ERROR_KEYS + 1 and errors[OTHER_ERRORS_KEY] == BAD_INPUTS - MAX_ERROR_KEYS
    logged = [line for line in siot_process.log().splitlines() if "rejected input" in line]
    assert len(logged) == ERROR_LOG_BURST  # the rest of the flood is counted, not logged
