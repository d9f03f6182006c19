"""Floods against a real daemon: the store's queue is bounded (busy, not unbounded memory), and a
flood of bad input is counted without growing the counter or the log without limit."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
from support import SiotProcess
from sync_support import until

from siot.api import READS_PER_REQUESTER
from siot.client import Client
from siot.codec import encode
from siot.errors import RequestFailed
from siot.points import Point
from siot.write_path import ERROR_LOG_BURST, MAX_ERROR_KEYS, OTHER_ERRORS_KEY

FLOOD = 100_000
RSS_BUDGET_MB = 256


def rss_mb(proc: SiotProcess) -> float:
    assert proc.proc is not None
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


T0 = 1_700_000_000_000_000_000
BAD_INPUTS = MAX_ERROR_KEYS + 2_000


async def test_a_fire_and_forget_flood_is_dropped_and_counted_not_queued(tmp_path: Path) -> None:
    proc = await asyncio.to_thread(
        # a queue shorter than the API's turn (siot.api.YIELD_EVERY_MESSAGES writes between two
        # turns of the commit loop), so a flood overflows it however fast this machine commits
        SiotProcess(data_dir=tmp_path / "d", extra_args=["--max-queued-points", "20"]).start
    )
    try:
        # The probe's request waits behind the flood in the API's subscription: it must get an
        # answer (busy or ok), however long a loaded machine takes to reach it.
        async with await Client.connect(proc.url, reconnect_forever=False, timeout_s=60) as client:
            await client.load_root()
            node = await client.create_node(client.root_id, "device")
            flooder = await nats.connect(proc.url)
            batch = encode([{"type": "v", "value": 1}])
            for _ in range(FLOOD):  # as fast as one connection publishes
                await flooder.publish(f"p.{node}", batch)
            await flooder.flush()
            assert rss_mb(proc) < RSS_BUDGET_MB
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
            assert rss_mb(proc) < RSS_BUDGET_MB
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


async def test_a_flood_of_unread_history_requests_does_not_hold_up_another_client(
    siot_process: SiotProcess, siot: Client
) -> None:
    """50,000 history requests whose replies nobody reads used to delay a real one ~10 s: they
    were served one by one in arrival order. Now each requester takes its turn."""
    node = await siot.create_node(siot.root_id, "device")
    await siot.send_points(node, [Point("temp", float(i), time=T0 + i) for i in range(100)])
    flooder = await nats.connect(siot_process.url)
    try:
        request = encode({"type": "temp"})
        for i in range(50_000):
            await flooder.publish(f"history.{node}", request, reply=f"unread.flood.{i}")
        await flooder.flush()
        async with asyncio.timeout(5):  # served in its turn, not after the whole flood
            history = await siot.history(node, "temp")
        assert len(history) == 100
    finally:
        await flooder.close()
    stats = await siot.stats()
    assert stats["busyRefused"] >= READS_PER_REQUESTER  # past its queue, the flooder was told
