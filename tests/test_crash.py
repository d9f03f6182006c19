"""Crash safety: every acknowledged point survives a SIGKILL of `siot serve` (issue #3).

Each round, a few concurrent senders write acked batches to a fresh node; after a random number
of acks the daemon is SIGKILLed mid-stream (with batches in flight), restarted on the same data
dir, and every point whose ack arrived must be there. Twenty rounds, short bursts each.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

from support import SiotProcess

from siot.client import Client
from siot.points import Point

ROUNDS = 20
SENDERS = 4
BATCH_POINTS = 50
ROUND_TIMEOUT_S = 30.0


async def connect(proc: SiotProcess) -> Client:
    client = await Client.connect(proc.url, reconnect_forever=False, allow_reconnect=False, timeout_s=5)
    await client.load_root()
    return client


async def send_until_killed(
    client: Client, node: str, sender: int, acked: set[str], enough: asyncio.Event, kill_after: int
) -> None:
    """Send batches of distinct points; record a point only once its batch is acknowledged."""
    batch_no = 0
    while True:
        keys = [f"s{sender}b{batch_no}p{i}" for i in range(BATCH_POINTS)]
        await client.send_points(node, [Point("v", i, key=k) for i, k in enumerate(keys)])
        acked.update(keys)
        batch_no += 1
        if len(acked) >= kill_after * BATCH_POINTS:
            enough.set()


async def crash_round(proc: SiotProcess, round_no: int, rng: random.Random) -> tuple[str, set[str]]:
    client = await connect(proc)
    node = await client.create_node(client.root_id, "device", [Point("description", f"round {round_no}")])
    acked: set[str] = set()
    enough = asyncio.Event()
    kill_after = rng.randint(5, 40)  # acked batches before the kill
    senders = [
        asyncio.create_task(send_until_killed(client, node, s, acked, enough, kill_after))
        for s in range(SENDERS)
    ]
    async with asyncio.timeout(ROUND_TIMEOUT_S):
        await enough.wait()
    proc.kill()  # SIGKILL while the other senders' batches are in flight
    for task in senders:
        task.cancel()
    for task in senders:
        with contextlib.suppress(BaseException):
            await task
    with contextlib.suppress(Exception):
        await client.nc.close()
    return node, acked


async def stored_keys(client: Client, node: str) -> set[str]:
    return {p.key for p in (await client.get_node(node)).points if p.type == "v"}


async def test_acked_points_survive_sigkill_20_times(tmp_path: Path) -> None:
    rng = random.Random(3)
    proc = SiotProcess(data_dir=tmp_path / "data")
    await asyncio.to_thread(proc.start)
    rounds: list[tuple[str, set[str]]] = []
    try:
        for round_no in range(ROUNDS):
            node, acked = await crash_round(proc, round_no, rng)
            assert acked, "the round sent nothing before the kill"
            rounds.append((node, acked))
            await asyncio.to_thread(proc.start)
            client = await connect(proc)
            try:
                missing = acked - await stored_keys(client, node)
                assert not missing, (
                    f"round {round_no}: {len(missing)} acked points lost, e.g. {sorted(missing)[:3]}"
                )
            finally:
                await client.close()
        client = await connect(proc)
        try:
            for node, acked in rounds:  # nothing of an earlier round was lost by a later crash
                assert acked <= await stored_keys(client, node)
        finally:
            await client.close()
    finally:
        proc.stop()
