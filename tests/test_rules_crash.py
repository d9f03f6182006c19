"""Rules across a real crash: SIGKILL of `siot serve` (built-in rules manager, system clock) in the
middle of a hold and while a rule is active with a reminder pending, then a restart on the same
data. The engine's state must come back from what was committed: the hold keeps its deadline,
nothing re-fires, and the reminder still comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from rules_support import make_rule, wait_point
from support import SiotProcess, connected

from siot.client import Client
from siot.points import Point

S = 1_000_000_000
HOLD_S = 1
REPEAT_S = 3


@asynccontextmanager
async def running(proc: SiotProcess) -> AsyncIterator[Client]:
    """Start the daemon (in a thread: `start()` runs its own event loop) and connect to it."""
    await asyncio.to_thread(proc.start)
    async with connected(proc) as client:
        yield client


async def test_sigkill_mid_hold_and_while_active_neither_refires_nor_loses_a_reminder(
    tmp_path: Path,
) -> None:
    proc = SiotProcess(data_dir=tmp_path / "siot-data")
    try:
        async with running(proc) as client:
            sensor = await client.create_node(client.root_id, "device", [Point("description", "sump")])
            siren = await client.create_node(client.root_id, "device", [Point("description", "siren")])
            rule, (cond,), (action,) = await make_rule(
                client,
                client.root_id,
                "flooding",
                [{"nodeID": sensor, "pointType": "water", "operator": ">", "value": 5, "minActive": HOLD_S}],
                [
                    {
                        "action": "setValue",
                        "nodeID": siren,
                        "pointType": "beep",
                        "value": 1,
                        "repeatInterval": REPEAT_S,
                    }
                ],
            )
            await client.send_points(sensor, [Point("water", 9)])
            hold_until = await wait_point(client, cond, "holdUntil", lambda v: v > 0)
        proc.kill()  # in the middle of the hold

        async with running(proc) as client:
            first_run = await wait_point(client, rule, "lastRun", lambda v: v > 0, key=action)
            assert first_run >= hold_until  # the hold kept its deadline: not cut short, not lost
            assert await wait_point(client, rule, "active", lambda v: v is True)
        proc.kill()  # active, first run committed, reminder pending

        async with running(proc) as client:
            reminder = await wait_point(client, rule, "lastRun", lambda v: v > first_run, key=action)
            assert reminder >= first_run + REPEAT_S * S  # a reminder on time, not a re-fire at restart
            beeps = await client.history(siren, "beep")
            before_reminder = [b for b in beeps if b.time < first_run + REPEAT_S * S]
            assert len(before_reminder) == 1  # the first run only: neither restart fired again
            assert len(beeps) >= 2
    finally:
        proc.stop()
